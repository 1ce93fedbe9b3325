"""Patching targets: what can be patched, the result's shape for each, and the checks on a patching call's inputs."""

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from mi_toolkit.core.tl import HookedTransformer

__all__ = ["TARGETS", "check_inputs", "index_sizes", "mask_shape", "valid_targets"]


@dataclasses.dataclass(frozen=True)
class _Target:
    act: str
    """TL's activation name (``get_act_name(act, layer)``)."""
    axes: tuple[str, ...]
    """Axes of the activation after the batch axis."""
    index: tuple[str, ...]
    """The axes patched one entry at a time (a sub-sequence of ``axes``); the others are patched whole."""
    needs: str = ""
    """``"mlp"`` or ``"resid_mid"``: the target exists only on models with MLPs (and a resid_mid)."""


_VEC = ("pos", "head_index", "d_head")
TARGETS: dict[str, _Target] = {
    "resid_pre": _Target("resid_pre", ("pos", "d_model"), ("pos",)),
    "resid_mid": _Target("resid_mid", ("pos", "d_model"), ("pos",), needs="resid_mid"),
    "resid_post": _Target("resid_post", ("pos", "d_model"), ("pos",)),
    "attn_out": _Target("attn_out", ("pos", "d_model"), ("pos",)),
    "mlp_out": _Target("mlp_out", ("pos", "d_model"), ("pos",), needs="mlp"),
    "head_out": _Target("z", _VEC, ("pos", "head_index")),
    "q": _Target("q", _VEC, ("pos", "head_index")),
    "k": _Target("k", _VEC, ("pos", "head_index")),
    "v": _Target("v", _VEC, ("pos", "head_index")),
    "head_out_all_pos": _Target("z", _VEC, ("head_index",)),
    "q_all_pos": _Target("q", _VEC, ("head_index",)),
    "k_all_pos": _Target("k", _VEC, ("head_index",)),
    "v_all_pos": _Target("v", _VEC, ("head_index",)),
    "pattern_all_pos": _Target("pattern", ("head_index", "query_pos", "key_pos"), ("head_index",)),
    "neuron": _Target("post", ("pos", "d_mlp"), ("pos", "d_mlp"), needs="mlp"),
    "neuron_all_pos": _Target("post", ("pos", "d_mlp"), ("d_mlp",), needs="mlp"),
}
"""Every patching target; :func:`valid_targets` lists those a given model has."""


def valid_targets(model: HookedTransformer) -> list[str]:
    """The targets of :data:`TARGETS` that ``model`` computes (attention-only models have no MLP targets)."""
    cfg = model.cfg
    has = {"": True, "mlp": not cfg.attn_only, "resid_mid": not cfg.attn_only and not cfg.parallel_attn_mlp}
    return [name for name, spec in TARGETS.items() if has[spec.needs]]


def check_inputs(
    model: HookedTransformer, clean_tokens: Tensor, corrupted_tokens: Tensor, targets: Sequence[str],
    layers: Sequence[int] | None,
) -> list[int]:
    """Raise ``ValueError`` on bad inputs before any forward pass; return the layers to patch."""
    cfg = model.cfg
    valid = valid_targets(model)
    for target in targets:
        if target not in valid:
            raise ValueError(f"unknown patching target {target!r} for this model; valid targets: {valid}")
    for name, tokens in (("clean_tokens", clean_tokens), ("corrupted_tokens", corrupted_tokens)):
        if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor [batch, pos], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= cfg.d_vocab):
            raise ValueError(
                f"{name} has tokens outside the vocabulary [0, {cfg.d_vocab}): min {tokens.min().item()}, "
                f"max {tokens.max().item()}"
            )
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean and corrupted tokens must have the same shape; got {tuple(clean_tokens.shape)} and "
            f"{tuple(corrupted_tokens.shape)}"
        )
    if clean_tokens.shape[1] > cfg.n_ctx:
        raise ValueError(f"sequences of length {clean_tokens.shape[1]} exceed the model's n_ctx = {cfg.n_ctx}")
    layers = list(range(cfg.n_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < cfg.n_layers]
    if bad or not layers:
        raise ValueError(f"layers must be a non-empty list of layers in [0, {cfg.n_layers}); got {layers}")
    return layers


def index_sizes(spec: _Target, act_shape: Sequence[int]) -> list[int]:
    """Sizes of the index axes, read from an activation ``[batch, *axes]``."""
    return [act_shape[1 + spec.axes.index(axis)] for axis in spec.index]


def mask_shape(spec: _Target, act_shape: Sequence[int]) -> list[int]:
    """Shape of a per-copy mask that broadcasts against ``[copies, batch, *axes]``."""
    return [1] + [act_shape[1 + i] if axis in spec.index else 1 for i, axis in enumerate(spec.axes)]
