"""Percentile bootstrap over examples (or over groups of rows that are not independent, such as one sequence's
positions): the resampled indices and the interval's bounds, shared by the faithfulness curves, causal scrubbing and
probe accuracies.

>>> gen = torch.Generator().manual_seed(0)
>>> picks = resample(4, 1000, gen)
>>> picks.shape, int(picks.min()) >= 0, int(picks.max()) <= 3
(torch.Size([1000, 4]), True, True)
>>> lo, hi = bounds(torch.arange(101.0), 0.9)
>>> round(lo.item(), 1), round(hi.item(), 1)
(5.0, 95.0)
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["bounds", "check_level", "resample"]


def check_level(level: float, n_bootstrap: int) -> None:
    """A clear error for an interval level outside (0, 1) or fewer than one resample."""
    if not 0 < level < 1 or n_bootstrap < 1:
        raise ValueError(f"need 0 < level < 1 and n_bootstrap >= 1, got {level} and {n_bootstrap}")


def resample(n: int, n_bootstrap: int, generator: torch.Generator) -> Int[Tensor, "n_bootstrap n"]:
    """``n_bootstrap`` resamples of ``n`` items with replacement, one row of indices each."""
    return torch.randint(0, n, (n_bootstrap, n), generator=generator)


def bounds(samples: Float[Tensor, "... n_bootstrap"], level: float) -> tuple[Tensor, Tensor]:
    """The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled statistics along the last dim."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype)
    return samples.quantile(q[0], dim=-1), samples.quantile(q[1], dim=-1)
