"""The one place mi_toolkit imports TransformerLens's model classes and quiets its deprecation notice.

TransformerLens 3.x warns on every ``HookedTransformer(...)`` that the class will move to ``TransformerBridge``
in 4.0. mi_toolkit pins ``transformer-lens<4`` and builds on ``HookedTransformer`` deliberately, so the models
it constructs are built inside :func:`quiet_construction`, which ignores that one message and nothing else; the
user's own warning filters are left as they are.
"""

import contextlib
import warnings
from collections.abc import Iterable

from torch import Tensor

from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

__all__ = [
    "ActivationCache", "HookPoint", "HookedTransformer", "HookedTransformerConfig", "get_act_name",
    "has_hooks", "quiet_construction", "run_until",
]


@contextlib.contextmanager
def quiet_construction():
    """Build ``HookedTransformer``s without TL's "deprecated and will be removed in 4.0" warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"HookedTransformer.* is deprecated and will be removed in 4\.0",
            category=DeprecationWarning,
        )
        yield


def has_hooks(model: HookedTransformer) -> bool:
    """Whether any hook point of ``model`` has a hook attached (fast paths that skip hook points must not run)."""
    return any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values())


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
