"""Is an SAE any good? Sparsity, reconstruction, dead features, downstream loss, and what its features read.

- :func:`evaluate_sae`: L0, MSE, explained variance and per-feature firing density (dead / ultra-low density).
- :func:`density_histogram`: the log10 feature-density histogram (the shape SAE papers plot).
- (the downstream loss with the SAE spliced in is :func:`mi_toolkit.interventions.ce_loss_recovered`.)
- :func:`max_activating`: the inputs (sequence, position) on which each feature fires most.
- :func:`decoder_spread`: how many basis dimensions (e.g. MLP neurons) each decoder direction spreads over.
"""

import dataclasses
import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mi_toolkit.core.activations import ActivationStream
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.core.types import Positions
from mi_toolkit.models.sae import SAE

__all__ = ["DecoderSpread", "DensityHistogram", "MaxActivating", "SAEMetrics", "decoder_spread", "density_histogram",
           "evaluate_sae", "max_activating"]


@dataclasses.dataclass(frozen=True)
class SAEMetrics:
    """Reconstruction and sparsity of an SAE on a set of activations."""

    l0: float
    """Mean number of active features per input."""
    mse: float
    """Mean squared reconstruction error per entry."""
    explained_variance: float
    """``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``."""
    density: Float[Tensor, " d_sae"]
    """Fraction of inputs on which each feature fires."""
    dead: Bool[Tensor, " d_sae"]
    """Features that never fire on these inputs."""
    ultra_low: Bool[Tensor, " d_sae"]
    """Features that fire, but on fewer than ``ultra_low_density`` of the inputs."""

    @property
    def n_dead(self) -> int:
        return int(self.dead.sum())

    @property
    def n_ultra_low(self) -> int:
        return int(self.ultra_low.sum())


def evaluate_sae(
    sae: SAE, activations: Float[Tensor, "n d_in"], *, ultra_low_density: float = 1e-5, batch_size: int = 8192
) -> SAEMetrics:
    """L0, MSE, explained variance and feature densities of ``sae`` on ``activations``.

    Args:
        sae: the SAE.
        activations: held-out activations, e.g. from :func:`mi_toolkit.core.activations.collect_activations`.
        ultra_low_density: density below which a live feature counts as ultra-low density.
        batch_size: rows encoded at once.

    Returns:
        An :class:`SAEMetrics`.
    """
    if activations.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"activations have size {activations.shape[-1]}, the SAE reads d_in = {sae.cfg.d_in}")
    x_all = activations.to(sae.W_dec.device, sae.W_dec.dtype)
    fired = torch.zeros(sae.cfg.d_sae, device=x_all.device)
    squared_error = 0.0
    with torch.no_grad():
        for x in x_all.split(batch_size):
            f = sae.encode(x)
            fired += (f > 0).sum(0)
            squared_error += (sae.decode(f) - x).pow(2).sum().item()
        total_variance = (x_all - x_all.mean(0)).pow(2).sum().item()
    n = len(x_all)
    density = (fired / n).cpu()
    return SAEMetrics(
        l0=density.sum().item(),  # sum over features of P(fires) = mean active features per input
        mse=squared_error / x_all.numel(),
        explained_variance=1 - squared_error / max(total_variance, 1e-30),
        density=density,
        dead=density == 0,
        ultra_low=(density > 0) & (density < ultra_low_density),
    )


@dataclasses.dataclass(frozen=True)
class DensityHistogram:
    """Histogram of log10 feature density over the live features."""

    log10_edges: Float[Tensor, " n_edges"]
    """Bin edges in log10(density)."""
    counts: Int[Tensor, " n_bins"]
    """Live features per bin."""
    n_dead: int
    """Features with density 0 (not in any bin)."""


def density_histogram(density: Float[Tensor, " d_sae"], *, n_bins: int = 40) -> DensityHistogram:
    """Bin the live features' densities on a log10 scale (e.g. ``evaluate_sae(...).density``)."""
    live = density[density > 0].log10().float()
    low = math.floor(live.min().item()) if len(live) else -6.0
    edges = torch.linspace(low, 0.0, n_bins + 1)
    counts = torch.histogram(live, bins=edges).hist.long() if len(live) else torch.zeros(n_bins, dtype=torch.long)
    return DensityHistogram(edges, counts, int((density == 0).sum()))


@dataclasses.dataclass(frozen=True)
class MaxActivating:
    """For every feature, the ``k`` inputs where it fires most (entries with value 0 are fillers)."""

    values: Float[Tensor, "d_sae k"]
    """Feature activations, descending."""
    sequence: Int[Tensor, "d_sae k"]
    """Row of ``tokens`` each comes from."""
    position: Int[Tensor, "d_sae k"]
    """Position in that row."""


def max_activating(
    model: HookedTransformer,
    sae: SAE,
    hook_name: str,
    tokens: Int[Tensor, "batch pos"],
    *,
    k: int = 10,
    positions: Positions | None = None,
    batch_size: int = 256,
) -> MaxActivating:
    """The top-``k`` activating (sequence, position) pairs of every feature, streamed over ``tokens``.

    Args:
        model: the model the SAE reads.
        sae: the SAE.
        hook_name: its hook point.
        tokens: the sequences to search.
        k: examples per feature.
        positions: positions to consider; None for all.
        batch_size: sequences per forward pass.

    Returns:
        A :class:`MaxActivating`; ``tokens[result.sequence[i], : result.position[i] + 1]`` are feature i's contexts.
    """
    stream = ActivationStream(model, hook_name, tokens, positions, batch_size)
    pos_index = torch.arange(tokens.shape[1])[slice(None) if positions is None else positions].reshape(-1)
    best = torch.zeros(sae.cfg.d_sae, 0)
    rows = torch.zeros(sae.cfg.d_sae, 0, dtype=torch.long)
    offset = 0
    with torch.no_grad():
        for acts in stream:
            f = sae.encode(acts.to(sae.W_dec.device, sae.W_dec.dtype)).T.cpu()  # (d_sae, n)
            candidates = torch.cat([best, f], dim=1)
            candidate_rows = torch.cat([rows, torch.arange(offset, offset + f.shape[1]).expand(len(f), -1)], dim=1)
            best, top = candidates.topk(min(k, candidates.shape[1]), dim=1)
            rows = candidate_rows.gather(1, top)
            offset += f.shape[1]
    return MaxActivating(best, rows // len(pos_index), pos_index[rows % len(pos_index)])


@dataclasses.dataclass(frozen=True)
class DecoderSpread:
    """How many basis dimensions each decoder direction uses."""

    participation_ratio: Float[Tensor, " d_sae"]
    """``(sum w^2)^2 / sum w^4``: 1 for a single neuron, ``d_in`` for an even spread."""
    n_for_fraction: Int[Tensor, " d_sae"]
    """Fewest dimensions holding ``fraction`` of the direction's squared norm."""


def decoder_spread(sae: SAE, *, fraction: float = 0.9) -> DecoderSpread:
    """How many neurons (basis dimensions of the hook) each decoder direction spreads over.

    Args:
        sae: the SAE; most meaningful at a privileged basis such as ``mlp.hook_post``.
        fraction: share of each direction's squared norm to account for in ``n_for_fraction``.

    Returns:
        A :class:`DecoderSpread`.
    """
    w2 = sae.W_dec.detach().float().cpu().pow(2)  # (d_sae, d_in)
    ratio = w2.sum(-1).pow(2) / w2.pow(2).sum(-1).clamp_min(1e-30)
    shares = w2.sort(dim=-1, descending=True).values.cumsum(-1) / w2.sum(-1, keepdim=True).clamp_min(1e-30)
    n_for_fraction = (shares < fraction - 1e-6).sum(-1) + 1
    return DecoderSpread(ratio, n_for_fraction)
