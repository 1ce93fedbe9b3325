"""Ablations as hook factories: zero, mean and resample ablation of heads, layers, neurons and subspaces.

Each factory returns a hook ``fn(activation, hook) -> activation`` to attach with ``model.hooks(...)`` (so it is
removed even on error); :func:`ablation_effect` runs a model with and without a set of hooks and reports the
change of the loss or of any metric.

- ``"zero"``: set the component to 0.
- ``"mean"``: set it to its mean over a reference batch (per position), keeping the "typical" value.
- ``"resample"``: set it to its value on a randomly drawn sequence of the reference batch (as in causal
  scrubbing); the draw is seeded.

``reference`` is the activation at the same hook on a reference batch, e.g. ``cache["z", layer]`` from
``model.run_with_cache(reference_tokens)``; it is required for ``"mean"`` and ``"resample"``.

>>> from mi_toolkit.models import make_induction_model
>>> model = make_induction_model(d_model=16, n_heads=2, d_head=8)
>>> tokens = torch.randint(1, 64, (2, 10))
>>> with model.hooks(fwd_hooks=[(get_act_name("z", 1), ablate_heads([0]))]):
...     loss = model(tokens, return_type="loss")
"""

import dataclasses
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.analysis.metrics import loss
from mi_toolkit.core.activations import run_until
from mi_toolkit.core.tl import HookedTransformer, get_act_name
from mi_toolkit.core.types import HookFn, Metric

__all__ = [
    "AblationEffect",
    "ablate",
    "ablate_heads",
    "ablate_layer",
    "ablate_neurons",
    "ablate_subspace",
    "ablation_effect",
    "head_ablation_effects",
]

How = str  # "zero", "mean" or "resample" (a plain str, so a bad value gets the ValueError below)


def _replacement(how: How, reference: Tensor | None, seed: int) -> Callable[[Tensor], Tensor]:
    """``values(activation) -> tensor`` of the same shape holding what an ablated entry becomes."""
    if how == "zero":
        return torch.zeros_like
    if how not in ("mean", "resample"):
        raise ValueError(f"unknown ablation {how!r}; expected 'zero', 'mean' or 'resample'")
    if reference is None:
        raise ValueError(f"{how} ablation needs `reference`, the activation at this hook on a reference batch")
    reference = reference.detach()
    generator = torch.Generator().manual_seed(seed)
    mean = reference.mean(0, keepdim=True)  # (1, ...): the per-position mean

    def values(activation: Tensor) -> Tensor:
        if activation.shape[1:] != reference.shape[1:]:
            raise ValueError(
                f"reference activation {tuple(reference.shape)} does not match the activation "
                f"{tuple(activation.shape)} beyond the batch axis"
            )
        if how == "mean":
            return mean.to(activation.device, activation.dtype).expand_as(activation)
        rows = torch.randint(0, len(reference), (len(activation),), generator=generator)
        return reference[rows.to(reference.device)].to(activation.device, activation.dtype)

    return values


def ablate(
    index: tuple = (), how: How = "zero", reference: Tensor | None = None, *, seed: int = 0
) -> HookFn:
    """Ablate ``activation[(slice(None),) + index]`` (the batch axis is never indexed).

    The general form of the factories below, e.g. ``index=(slice(None), [1, 3])`` selects heads 1 and 3 of a
    ``[batch, pos, head_index, d_head]`` activation at every position.

    Args:
        index: an index into the activation after its batch axis.
        how: ``"zero"``, ``"mean"`` or ``"resample"``.
        reference: the activation at this hook on a reference batch (``"mean"``, ``"resample"``).
        seed: seed of the resampling draw.

    Returns:
        A forward hook.
    """
    values = _replacement(how, reference, seed)
    where = (slice(None),) + tuple(index)

    def hook(activation: Tensor, hook) -> Tensor:
        activation = activation.clone()
        activation[where] = values(activation)[where]
        return activation

    return hook


def ablate_heads(
    heads: Sequence[int], how: How = "zero", reference: Float[Tensor, "batch pos head_index d_head"] | None = None,
    *, seed: int = 0,
) -> HookFn:
    """Ablate attention heads; attach at ``get_act_name("z", layer)`` (the heads' outputs before ``W_O``).

    Args:
        heads: head indices in that layer.
        how: ``"zero"``, ``"mean"`` or ``"resample"``.
        reference: ``cache["z", layer]`` of a reference batch (``"mean"``, ``"resample"``).
        seed: seed of the resampling draw.
    """
    return ablate((slice(None), list(heads)), how, reference, seed=seed)


def ablate_layer(how: How = "zero", reference: Tensor | None = None, *, seed: int = 0) -> HookFn:
    """Ablate a whole activation, e.g. an MLP layer at ``get_act_name("mlp_out", layer)`` or ``attn_out``."""
    return ablate((), how, reference, seed=seed)


def ablate_neurons(
    neurons: Sequence[int], how: How = "zero", reference: Float[Tensor, "batch pos d_mlp"] | None = None,
    *, seed: int = 0,
) -> HookFn:
    """Ablate MLP neurons; attach at ``get_act_name("post", layer)``.

    Args:
        neurons: neuron indices in that layer.
        how: ``"zero"``, ``"mean"`` or ``"resample"``.
        reference: ``cache["post", layer]`` of a reference batch.
        seed: seed of the resampling draw.
    """
    return ablate((slice(None), list(neurons)), how, reference, seed=seed)


def ablate_subspace(
    directions: Float[Tensor, "d_act k"], how: How = "zero", reference: Tensor | None = None, *, seed: int = 0
) -> HookFn:
    """Ablate the span of ``directions`` in the last axis of an activation, keeping its orthogonal complement.

    With ``P`` the orthogonal projection onto the span, the activation ``x`` becomes ``x - P x + P r`` where
    ``r`` is 0 (zero), the reference mean (mean) or a resampled reference row (resample). Use it for a feature
    direction, or e.g. the cos/sin embedding directions of one Fourier frequency in the grokking model.

    Args:
        directions: columns spanning the subspace (need not be orthonormal; they are orthonormalised).
        how: ``"zero"``, ``"mean"`` or ``"resample"``.
        reference: the activation at this hook on a reference batch.
        seed: seed of the resampling draw.
    """
    basis, _ = torch.linalg.qr(directions.detach())  # (d_act, k), orthonormal columns
    values = _replacement(how, reference, seed)

    def hook(activation: Tensor, hook) -> Tensor:
        b = basis.to(activation.device, activation.dtype)
        inside = (activation @ b) @ b.T
        return activation - inside + (values(activation) @ b) @ b.T

    return hook


@dataclasses.dataclass(frozen=True)
class AblationEffect:
    """A metric with and without an ablation."""

    baseline: float
    ablated: float

    @property
    def effect(self) -> float:
        """``ablated - baseline``."""
        return self.ablated - self.baseline


@torch.no_grad()
def ablation_effect(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    fwd_hooks: Sequence[tuple[str, HookFn]],
    metric: Metric | None = None,
) -> AblationEffect:
    """The metric (default: next-token loss on ``tokens``) of a clean run and of a run with ``fwd_hooks``.

    Args:
        model: any ``HookedTransformer``.
        tokens: the input.
        fwd_hooks: ``[(hook_name, hook), ...]``, e.g. ``[(get_act_name("z", 1), ablate_heads([2]))]``.
        metric: logits -> scalar (see :mod:`mi_toolkit.analysis.metrics`); default the mean next-token loss.

    Returns:
        The baseline and ablated values.
    """
    metric = loss(tokens) if metric is None else metric
    baseline = metric(model(tokens)).item()
    with model.hooks(fwd_hooks=list(fwd_hooks)):
        ablated = metric(model(tokens)).item()
    return AblationEffect(baseline, ablated)


@torch.no_grad()
def head_ablation_effects(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    how: How = "zero",
    reference_tokens: Int[Tensor, "ref_batch pos"] | None = None,
    metric: Metric | None = None,
    *,
    seed: int = 0,
) -> Float[Tensor, "layer head_index"]:
    """Ablate every head on its own; return ``metric(ablated) - metric(baseline)`` for each.

    Args:
        model: any ``HookedTransformer``.
        tokens: the input.
        how: ``"zero"``, ``"mean"`` or ``"resample"``.
        reference_tokens: the reference batch for ``"mean"``/``"resample"`` (default ``tokens``).
        metric: logits -> scalar; default the mean next-token loss on ``tokens``.
        seed: seed of the resampling draw.

    Returns:
        The change of the metric per head, ``[n_layers, n_heads]``.
    """
    metric = loss(tokens) if metric is None else metric
    cfg = model.cfg
    names = [get_act_name("z", layer) for layer in range(cfg.n_layers)]
    reference = {}
    if how != "zero":
        reference_tokens = tokens if reference_tokens is None else reference_tokens
        reference = run_until(model, reference_tokens, names)
    baseline = metric(model(tokens)).item()
    effects = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer, name in enumerate(names):
        for head in range(cfg.n_heads):
            hook = ablate_heads([head], how, reference.get(name), seed=seed)
            with model.hooks(fwd_hooks=[(name, hook)]):
                effects[layer, head] = metric(model(tokens)).item() - baseline
    return effects
