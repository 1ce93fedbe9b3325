"""The one place mi_toolkit imports TransformerLens, and where it quiets TL's deprecation notice.

TransformerLens 3.x warns on every ``HookedTransformer(...)`` that the class will move to ``TransformerBridge``
in 4.0. mi_toolkit pins ``transformer-lens<4`` and builds on ``HookedTransformer`` deliberately, so the models
it constructs are built inside :func:`quiet_construction`, which ignores that one message and nothing else; the
user's own warning filters are left as they are.
"""

import contextlib
import difflib
import warnings

from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.components import (
    MLP,
    AbstractAttention,
    Attention,
    Embed,
    GatedMLP,
    PosEmbed,
    TransformerBlock,
    Unembed,
)
from transformer_lens.hook_points import HookPoint
from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict
from transformer_lens.utilities import get_act_name

__all__ = [
    "MLP", "AbstractAttention", "ActivationCache", "Attention", "Embed", "GatedMLP", "HookPoint", "HookedTransformer",
    "HookedTransformerConfig", "PosEmbed", "Unembed",
    "TransformerBlock", "TransformerLensKeyValueCache", "TransformerLensKeyValueCacheEntry", "check_hook_name",
    "get_act_name", "get_pretrained_model_config", "get_pretrained_state_dict", "has_hooks", "quiet_construction",
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
    """Whether any hook is attached to ``model``: on a hook point, or a plain PyTorch hook or pre-hook on any of its
    modules (fast paths that skip hook points, or call blocks on part of the batch, must not run)."""
    return any(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
               or getattr(module, "_backward_pre_hooks", None) for module in model.modules())


def check_hook_name(model: HookedTransformer, hook_name: str) -> None:
    """Raise a ``ValueError`` naming the closest hook points when ``hook_name`` is not one of ``model``'s."""
    if hook_name not in model.hook_dict:
        close = difflib.get_close_matches(hook_name, list(model.hook_dict), n=5, cutoff=0.5)
        hint = f"; close matches: {close}" if close else ""
        raise ValueError(f"model has no hook point {hook_name!r}{hint}")
