"""Activation collection: the one forward pass that stops early, and activations streamed batch by batch.

:func:`run_until` runs a model only as far as the last activation asked for (a hook raises once it has them all,
and TransformerLens's ``hooks`` context removes the hooks in its ``finally``). :class:`ActivationStream` reads one
hook point's activations over many token batches through it, e.g. to train a sparse autoencoder.
"""

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.core.tl import HookedTransformer, check_hook_name
from mi_toolkit.core.types import Positions

__all__ = ["ActivationStream", "apply_at_positions", "collect_activations", "run_until", "select_positions"]


class _AllComputed(Exception):
    """Raised by the last caching hook of :func:`run_until` to end the forward pass."""


def run_until(model: HookedTransformer, tokens: Tensor, names: Iterable[str]) -> dict[str, Tensor]:
    """The activations ``names`` of ``model(tokens)``, from a forward pass that stops once all are computed.

    Like ``model.run_with_cache(tokens, names_filter=names)[1]`` without the logits, and without the layers (and
    the unembedding) after the last activation asked for.

    Raises:
        ValueError: a name is not a hook point of the model, or the forward pass never reaches it.
    """
    names = list(dict.fromkeys(names))
    unknown = [name for name in names if name not in model.hook_dict]
    if unknown:
        raise ValueError(f"unknown hook names {unknown}; see model.hook_dict for this model's hook points")
    acts: dict[str, Tensor] = {}

    def save(activation: Tensor, hook) -> None:
        acts[hook.name] = activation.detach()
        if len(acts) == len(names):
            raise _AllComputed

    with model.hooks(fwd_hooks=[(name, save) for name in names]):
        try:
            model(tokens, return_type=None)
        except _AllComputed:
            pass
    missing = [name for name in names if name not in acts]
    if missing:
        raise ValueError(f"the forward pass does not reach the hook points {missing}")
    return acts


def select_positions(
    activation: Float[Tensor, "batch pos *rest"], positions: Positions | None
) -> Float[Tensor, "n d_in"]:
    """The activations at ``positions`` (None: all) as rows, trailing dimensions flattened."""
    if positions is None:
        positions = slice(None)
    selected = activation[:, positions]
    d_in = math.prod(activation.shape[2:])
    return selected.reshape(-1, d_in)


def apply_at_positions(
    activation: Float[Tensor, "batch pos *rest"],
    positions: Positions | None,
    fn: Callable[[Float[Tensor, "n d_in"]], Float[Tensor, "n d_in"]],
) -> Float[Tensor, "batch pos *rest"]:
    """A copy of ``activation`` with ``fn`` applied to the rows :func:`select_positions` would give."""
    if positions is None:
        positions = slice(None)
    out = activation.clone()
    selected = out[:, positions]
    out[:, positions] = fn(select_positions(activation, positions)).view(selected.shape).to(out.dtype)
    return out


@dataclasses.dataclass(frozen=True)
class ActivationStream:
    """Activations of ``model`` at ``hook_name``, computed batch by batch from token sequences.

    Iterating gives one ``[n, d_in]`` tensor per token batch: the activation at ``positions`` of every sequence,
    its trailing dimensions flattened (e.g. ``hook_z``'s ``head_index d_head``). The model runs only until the
    hook (:func:`run_until`).
    """

    model: HookedTransformer = dataclasses.field(repr=False)
    """The model to read from (run under ``torch.no_grad``)."""
    hook_name: str
    """A hook point of ``model``, e.g. ``"blocks.0.mlp.hook_post"``."""
    tokens: Int[Tensor, "batch pos"] | Sequence[Int[Tensor, "batch pos"]] = dataclasses.field(repr=False)
    """Token sequences, or a re-iterable collection of token batches (a list, a DataLoader)."""
    positions: Positions | None = None
    """Which positions to read; None for all."""
    batch_size: int = 256
    """Sequences per forward pass when ``tokens`` is one tensor."""

    def __post_init__(self):
        check_hook_name(self.model, self.hook_name)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    def token_batches(self) -> Iterator[Int[Tensor, "batch pos"]]:
        """One pass over the token batches."""
        if isinstance(self.tokens, Tensor):
            yield from self.tokens.split(self.batch_size)
        else:
            yield from self.tokens

    def activations(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "n d_in"]:
        """The selected activations of one token batch."""
        with torch.no_grad():
            activation = run_until(self.model, tokens.to(self.model.cfg.device), [self.hook_name])[self.hook_name]
        return select_positions(activation, self.positions)

    @property
    def d_in(self) -> int:
        """Size of one activation vector (computed from the first sequence)."""
        return self.activations(next(self.token_batches())[:1]).shape[-1]

    def __iter__(self) -> Iterator[Float[Tensor, "n d_in"]]:
        return map(self.activations, self.token_batches())


def collect_activations(
    model: HookedTransformer,
    hook_name: str,
    tokens: Int[Tensor, "batch pos"] | Sequence[Int[Tensor, "batch pos"]],
    *,
    positions: Positions | None = None,
    batch_size: int = 256,
) -> Float[Tensor, "n d_in"]:
    """All activations of ``model`` at ``hook_name`` over ``tokens`` (see :class:`ActivationStream`), as rows."""
    return torch.cat(list(ActivationStream(model, hook_name, tokens, positions, batch_size)))
