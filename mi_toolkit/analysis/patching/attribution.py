"""Attribution patching: the first-order estimate of activation patching for every component of every target,
from one clean forward pass and one corrupted forward + backward pass; and how it compares with the real thing."""

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.analysis.patching.targets import TARGETS, check_inputs, valid_targets
from mi_toolkit.core.activations import run_until
from mi_toolkit.core.tl import HookedTransformer, get_act_name
from mi_toolkit.core.types import Metric

__all__ = ["PatchingComparison", "attribution_patch", "attribution_patch_every", "compare_patching"]


def attribution_patch_every(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "_batch _pos"],  # checked against clean_tokens with a clear error
    metric: Metric,
    targets: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Attribution patching of several targets from one clean forward and one corrupted forward + backward.

    Args:
        model: any ``HookedTransformer``.
        clean_tokens: input whose activations would be patched in.
        corrupted_tokens: input that is run; same shape as ``clean_tokens``.
        metric: logits -> scalar, differentiable.
        targets: names from :data:`~mi_toolkit.analysis.patching.targets.TARGETS`; default every target the model has (:func:`valid_targets`).
        layers: the layers to estimate (default all).

    Returns:
        ``{target: estimate}``, each shaped as :func:`activation_patch` returns it.
    """
    targets = valid_targets(model) if targets is None else list(targets)
    layers = check_inputs(model, clean_tokens, corrupted_tokens, targets, layers)
    names = sorted({get_act_name(TARGETS[t].act, layer) for t in targets for layer in layers})
    with torch.no_grad():
        clean_cache = run_until(model, clean_tokens, names)
    corrupted: dict[str, Tensor] = {}

    def leaf_input(embedding: Tensor, hook) -> Tensor:
        # Everything downstream then requires grad, even if the model's parameters do not.
        return embedding.detach().requires_grad_(True)

    def save(activation: Tensor, hook) -> None:
        corrupted[hook.name] = activation

    with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf_input)] + [(n, save) for n in names]):
        value = metric(model(corrupted_tokens))
        grads = torch.autograd.grad(value, [corrupted[name] for name in names], allow_unused=True)
    base = value.detach()
    deltas = {}
    for name, grad in zip(names, grads):
        grad = torch.zeros_like(corrupted[name]) if grad is None else grad
        deltas[name] = grad * (clean_cache[name] - corrupted[name].detach())  # (batch, *axes)
    out = {}
    for target in targets:
        spec = TARGETS[target]
        summed = [i + 1 for i, axis in enumerate(spec.axes) if axis not in spec.index]
        out[target] = torch.stack(
            [base + deltas[get_act_name(spec.act, layer)].sum(dim=[0, *summed]) for layer in layers]
        )
    return out


def attribution_patch(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "_batch _pos"],  # checked against clean_tokens with a clear error
    metric: Metric,
    target: str,
    *,
    layers: Sequence[int] | None = None,
) -> Float[Tensor, "layer *index"]:
    """First-order estimate of :func:`activation_patch` (same arguments, same shape).

    ``estimate = metric(corrupted) + sum(grad . (clean - corrupted))`` over the patched slice, with the gradient
    of ``metric`` at the corrupted run. Exact where the metric is linear in the activation (e.g. a logit
    difference and the last layer's ``attn_out`` of an attention-only model without LayerNorm).

    Args:
        model: any ``HookedTransformer``.
        clean_tokens: input whose activations would be patched in.
        corrupted_tokens: input that is run; same shape as ``clean_tokens``.
        metric: logits -> scalar, differentiable.
        target: a name from :data:`~mi_toolkit.analysis.patching.targets.TARGETS`.
        layers: the layers to estimate (default all).

    Returns:
        The estimated patched metric, ``[len(layers), *index]``.
    """
    return attribution_patch_every(model, clean_tokens, corrupted_tokens, metric, [target], layers=layers)[target]


@dataclasses.dataclass(frozen=True)
class PatchingComparison:
    """How well attribution patching approximates activation patching."""

    correlation: float
    """Pearson correlation over all components."""
    max_abs_error: float
    mean_abs_error: float
    activation: Tensor
    """The activation-patching result (flattened)."""
    attribution: Tensor
    """The attribution-patching estimate (flattened)."""


def compare_patching(activation: Tensor, attribution: Tensor) -> PatchingComparison:
    """Compare activation patching with its attribution estimate (same shape).

    Args:
        activation: result of :func:`activation_patch`.
        attribution: result of :func:`attribution_patch` for the same target.

    Returns:
        Correlation and errors; draw it with ``mi_toolkit.plot.attribution_vs_activation``.
    """
    if activation.shape != attribution.shape:
        raise ValueError(f"shapes differ: {tuple(activation.shape)} vs {tuple(attribution.shape)}")
    x = activation.detach().flatten().double().cpu()
    y = attribution.detach().flatten().double().cpu()
    correlation = torch.corrcoef(torch.stack([x, y]))[0, 1].item() if len(x) > 1 else float("nan")
    error = (x - y).abs()
    return PatchingComparison(correlation, error.max().item(), error.mean().item(), x.float(), y.float())
