"""Progress measures of grokking (Nanda et al. 2023): restricted loss, excluded loss, Gini, weight norm, phases.

Restricted and excluded losses edit the last MLP's neuron activations N (last position, over all p^2 inputs) and
change the logits by the edit times ``W_L = W_out @ W_U``; everything else in the model is kept:

- restricted: ``N -> mean_ab(N) + sum_{k in K} P_k N``, loss on the test set;
- excluded: ``N -> N - sum_{k in K} P_k N``, loss on the train set,

where ``P_k`` projects onto the span of ``cos(w_k (a + b))`` and ``sin(w_k (a + b))`` over the input grid
(``components="sum"``, the paper's), or onto every 2-D Fourier component built only from frequencies in K
(``components="all"``; with K = every frequency this keeps N whole, so the restricted loss equals the full loss).
The TransformerLens demo instead rebuilds the logits from N alone plus a constant; keeping the rest of the model
makes the measure exact when nothing is removed. The original code projects the logits rather than the neurons.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from mi_toolkit.analysis.fourier import (
    embedding_fourier_norms,
    fourier_basis,
    sum_frequency_directions,
    unembedding_fourier_norms,
)
from mi_toolkit.core.forward import final_position_forward
from mi_toolkit.core.io import load_tensors
from mi_toolkit.core.losses import answer_loss
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.training.checkpoints import list_checkpoints

__all__ = [
    "Phases",
    "evaluate_checkpoints",
    "over_checkpoints",
    "evaluate_modular",
    "excluded_loss",
    "grokking_measures",
    "GROKKED_TEST_ACC",
    "CLEAN_RESTRICTED_LOSS",
    "excluded_loss_per_frequency",
    "estimate_phases",
    "gini",
    "restricted_loss",
    "restricted_loss_on",
    "excluded_loss_on",
    "sum_squared_weights",
]


GROKKED_TEST_ACC = 0.99
"""Test accuracy from which a run counts as generalising."""
CLEAN_RESTRICTED_LOSS = 0.1
"""Restricted loss below which the model computes with the Fourier algorithm alone (cleanup has ended)."""


def gini(values: Float[Tensor, " n"]) -> float:
    """Gini coefficient of non-negative values (Hurley & Rickard 2009): 0 when all equal, -> 1 when one dominates.

    >>> gini(torch.tensor([1.0, 1.0, 1.0])), round(gini(torch.tensor([0.0, 0.0, 0.0, 1.0])), 3)
    (0.0, 0.75)
    """
    c = values.detach().abs().flatten().double().sort().values
    n = c.numel()
    if n == 0 or c.sum() == 0:
        return 0.0
    k = torch.arange(1, n + 1, dtype=torch.float64, device=c.device)
    return float(1 - 2 * ((c / c.sum()) * ((n - k + 0.5) / n)).sum())


def sum_squared_weights(model: torch.nn.Module) -> float:
    """Total sum of squared trainable weights (falls during cleanup)."""
    return float(sum((p.detach().double() ** 2).sum() for p in model.parameters() if p.requires_grad))


def grokking_measures(model: HookedTransformer, task) -> dict[str, float]:
    """The progress measures that need no key frequencies: Gini of the Fourier norms of ``W_E`` and ``W_out W_U``,
    and the sum of squared weights. Recorded during training with ``train(..., measures=...)``."""
    with torch.no_grad():
        return {
            "gini_embed": gini(embedding_fourier_norms(model, task.p)),
            "gini_unembed": gini(unembedding_fourier_norms(model, task.p)),
            "weight_norm": sum_squared_weights(model),
        }


def evaluate_modular(model: HookedTransformer, task) -> dict[str, float]:
    """Losses and accuracies of a :class:`~mi_toolkit.tasks.ModularArithmetic` task and :func:`grokking_measures`."""
    return {**task.evaluate(model), **grokking_measures(model, task)}


def _neuron_path(model: HookedTransformer, task):
    out = final_position_forward(model, task.tokens)
    w_l = model.blocks[-1].mlp.W_out @ model.W_U  # (d_mlp, d_vocab_out)
    return out.logits, out.mlp_post, w_l


def _key_projection(p: int, freqs, components: str, device) -> Callable[[Tensor], Tensor]:
    """A function mapping N (p^2, d) to its component in the key-frequency subspace (mean excluded)."""
    if components == "sum":
        u = sum_frequency_directions(p, freqs, device)  # (p^2, 2|K|)
        return lambda n: u @ (u.T @ n)
    if components == "all":
        basis = fourier_basis(p, device)
        keep = torch.zeros(p, dtype=torch.bool, device=device)
        keep[0] = True
        for k in freqs:
            keep[[2 * k - 1, 2 * k]] = True
        mask = keep[:, None] & keep[None, :]
        mask[0, 0] = False  # the mean is handled apart

        def project(n):
            coef = torch.einsum("xa,yb,abd->xyd", basis, basis, n.reshape(p, p, -1)) * mask[..., None]
            return torch.einsum("xa,yb,xyd->abd", basis, basis, coef).reshape(p * p, -1)

        return project
    raise ValueError(f"components must be 'sum' or 'all', got {components!r}")


def restricted_loss(
    model: HookedTransformer, task, key_freqs, *, components: str = "sum", split: str = "test"
) -> float:
    """Loss when the last MLP's neurons keep only their key-frequency components (and their mean)."""
    return _restricted(model, task, lambda n: _key_projection(task.p, key_freqs, components, n.device), split)


def excluded_loss(
    model: HookedTransformer, task, key_freqs, *, components: str = "sum", split: str = "train"
) -> float:
    """Loss when the key-frequency components are removed from the last MLP's neurons."""
    return _excluded(model, task, lambda n: _key_projection(task.p, key_freqs, components, n.device), split)


def restricted_loss_on(model: HookedTransformer, task, directions: Float[Tensor, "pairs r"], *,
                       split: str = "test") -> float:
    """:func:`restricted_loss` keeping the neurons' components along orthonormal ``directions`` over the input pairs
    (rows in the task's order), e.g. a group's key irreps (:mod:`mi_toolkit.analysis.representations`)."""
    return _restricted(model, task, lambda n: _along(directions.to(n)), split)


def excluded_loss_on(model: HookedTransformer, task, directions: Float[Tensor, "pairs r"], *,
                     split: str = "train") -> float:
    """:func:`excluded_loss` removing the neurons' components along orthonormal ``directions``."""
    return _excluded(model, task, lambda n: _along(directions.to(n)), split)


def _along(u: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda n: u @ (u.T @ n)


def _restricted(model, task, projector, split: str) -> float:
    """``projector(n)`` returns the projection to apply to the neurons ``n`` (built on their device and dtype)."""
    with torch.no_grad():
        logits, n, w_l = _neuron_path(model, task)
        n_res = n.mean(0, keepdim=True) + projector(n)(n)
        return _split_loss(logits + (n_res - n) @ w_l, task, split)


def _excluded(model, task, projector, split: str) -> float:
    with torch.no_grad():
        logits, n, w_l = _neuron_path(model, task)
        return _split_loss(logits - projector(n)(n) @ w_l, task, split)


def excluded_loss_per_frequency(model: HookedTransformer, task, key_freqs, *, split: str = "train") -> dict[int, float]:
    """Excluded loss removing one key frequency at a time: ``{k: loss}``."""
    return {k: excluded_loss(model, task, [k], split=split) for k in key_freqs}


def _split_loss(logits: Tensor, task, split: str) -> float:
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    idx = {"train": task.train_indices, "test": task.test_indices}.get(split, slice(None))
    return answer_loss(logits[idx], task.labels[idx], dtype=torch.float64).item()


def evaluate_checkpoints(model: HookedTransformer, task, checkpoints, key_freqs) -> list[dict]:
    """Progress measures at each checkpoint of a run (for key frequencies found in the final model).

    Args:
        model: a model of the run's architecture; its weights are replaced by each checkpoint in turn and
            restored afterwards.
        task: the run's task (with its split).
        checkpoints: a run directory, or ``[(step, state_dict_or_path), ...]``.
        key_freqs: the key frequencies (typically ``key_frequencies(final_model, task)``).

    Returns:
        One dict per checkpoint: ``step, restricted_loss, excluded_loss, excluded_loss_per_freq``.
    """
    def measure(model) -> dict:
        per_freq = excluded_loss_per_frequency(model, task, key_freqs)
        return {"restricted_loss": restricted_loss(model, task, key_freqs),
                "excluded_loss": excluded_loss(model, task, key_freqs),
                "excluded_loss_per_freq": {str(k): v for k, v in per_freq.items()}}

    return over_checkpoints(model, checkpoints, measure)


def over_checkpoints(model: torch.nn.Module, checkpoints, measure: Callable[[torch.nn.Module], dict]) -> list[dict]:
    """``{"step": step, **measure(model)}`` with the model's weights set to each checkpoint in turn (restored
    afterwards, even after an exception).

    Args:
        checkpoints: a run directory, or ``[(step, state_dict_or_path), ...]``.
    """
    if isinstance(checkpoints, (str, Path)):
        checkpoints = list_checkpoints(checkpoints)
    device = next(model.parameters()).device
    original = {k: v.clone() for k, v in model.state_dict().items()}
    records = []
    try:
        for step, state in checkpoints:
            if not isinstance(state, dict):
                state, _ = load_tensors(state, device=device)
            model.load_state_dict(state)
            records.append({"step": step, **measure(model)})
    finally:
        model.load_state_dict(original)
    return records


@dataclasses.dataclass(frozen=True)
class Phases:
    """Estimated phase boundaries (steps); None where the run did not get there.

    memorisation: ``[0, memorisation_end)``; circuit formation: ``[memorisation_end, cleanup_start)``;
    cleanup: ``[cleanup_start, cleanup_end)``.
    """

    memorisation_end: int | None
    cleanup_start: int | None
    cleanup_end: int | None


def estimate_phases(history: list[dict], *, train_acc: float = 0.99, test_acc: float = 0.5) -> Phases:
    """Heuristic phase boundaries from a metrics history (logged steps, ascending).

    - memorisation ends at the first step with train accuracy >= ``train_acc`` (the training set is fitted);
    - cleanup starts at the first later step with test accuracy >= ``test_acc`` (the sharp test-loss drop that
      follows circuit formation);
    - cleanup ends at the first later step where test accuracy >= 0.99 and, if recorded, the restricted loss is
      below 0.1 (the memorising components are gone).
    """
    def first(cond, after):
        return next((r["step"] for r in history if after is not None and r["step"] >= after and cond(r)), None)

    mem = first(lambda r: r["train_acc"] >= train_acc, 0)
    clean = first(lambda r: r["test_acc"] >= test_acc, mem)
    # Where the restricted loss is recorded (at checkpoints, between more frequent loss records), only those
    # records can end cleanup.
    recorded = any(r.get("restricted_loss") is not None for r in history)
    end = first(lambda r: r["test_acc"] >= GROKKED_TEST_ACC and (
        r.get("restricted_loss") is not None and r["restricted_loss"] < CLEAN_RESTRICTED_LOSS if recorded else True),
        clean)
    return Phases(mem, clean, end)
