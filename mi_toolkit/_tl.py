"""The one place mi_toolkit imports TransformerLens's model classes.

TransformerLens 3.x warns on every ``HookedTransformer(...)`` that the class will move to ``TransformerBridge``
in 4.0. mi_toolkit pins ``transformer-lens<4`` and builds on ``HookedTransformer`` deliberately, so that one
warning (matched by its exact message) is silenced here and nowhere else; every other warning still shows.
"""

import warnings

warnings.filterwarnings(
    "ignore",
    message=r"HookedTransformer is deprecated and will be removed in 4\.0",
    category=DeprecationWarning,
)

from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig  # noqa: E402
from transformer_lens.hook_points import HookPoint  # noqa: E402
from transformer_lens.utilities import get_act_name  # noqa: E402

__all__ = ["ActivationCache", "HookPoint", "HookedTransformer", "HookedTransformerConfig", "get_act_name"]
