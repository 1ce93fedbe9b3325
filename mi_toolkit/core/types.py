"""The shared types of mi_toolkit, defined once: metrics, positions, hooks.

Dimension names follow TransformerLens (``batch pos d_model``, ``batch pos head_index d_head``, ...).
"""

from collections.abc import Callable

from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["HookFn", "Logits", "Metric", "Positions", "Tokens"]

Logits = Float[Tensor, "batch pos d_vocab_out"]
"""A model's output logits."""

Metric = Callable[[Logits], Float[Tensor, ""]]
"""``metric(logits) -> scalar``, differentiable. It may declare the positions it reads in a ``positions`` attribute
(see :func:`mi_toolkit.analysis.metrics.reads`)."""

Positions = int | slice | list[int] | Int[Tensor, " n"]
"""Sequence positions: one index (``-1``, the last), a slice, or a list or tensor of indices. Where an argument is
``Positions | None``, None means every position."""

Tokens = int | Int[Tensor, ""] | Int[Tensor, " batch"]
"""Token ids: one for the whole batch, or one per sequence."""

HookFn = Callable[[Tensor, object], Tensor | None]
"""A TransformerLens forward hook, ``hook(activation, hook=hook_point) -> activation or None``, for
``model.hooks(fwd_hooks=[(name, hook_fn)])``."""
