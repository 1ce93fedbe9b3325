"""The one place mi_toolkit imports TransformerLens's model classes and quiets its deprecation notice.

TransformerLens 3.x warns on every ``HookedTransformer(...)`` that the class will move to ``TransformerBridge``
in 4.0. mi_toolkit pins ``transformer-lens<4`` and builds on ``HookedTransformer`` deliberately, so the models
it constructs are built inside :func:`quiet_construction`, which ignores that one message and nothing else; the
user's own warning filters are left as they are.
"""

import contextlib
import warnings

from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

__all__ = [
    "ActivationCache", "HookPoint", "HookedTransformer", "HookedTransformerConfig", "get_act_name",
    "quiet_construction",
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
