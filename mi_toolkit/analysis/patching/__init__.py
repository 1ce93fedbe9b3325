"""Activation patching and attribution patching for any ``HookedTransformer``.

Activation patching runs the *corrupted* input, replaces one activation with its value on the *clean* input and
records ``metric(logits)``; a sweep does this for every layer and index of a target (TransformerLens's
``get_act_patch_*`` convention: the result holds the patched metric, not its change). Here the sweep is
vectorised: the corrupted batch is repeated along a "patch" axis, ``chunk_size`` copies per forward pass, and one
hook per layer writes a different clean slice into each copy.

Attribution patching estimates the same numbers to first order,
``metric(patched) ~ metric(corrupted) + grad_act metric |corrupted . (act_clean - act_corrupted)``,
from one clean forward pass and one corrupted forward + backward pass for every target at once. It is exact
where the metric is linear in the patched activation and poor for large changes (Nanda, "Attribution Patching").

Targets and result shapes (``pos`` = sequence length):

========================================================================  ====================================
``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``   ``[n_layers, pos]``
``head_out`` (the heads' ``z``), ``q``, ``k``, ``v``                      ``[n_layers, pos, n_heads]``
``head_out_all_pos``, ``q_all_pos``, ``k_all_pos``, ``v_all_pos``,        ``[n_layers, n_heads]``
``pattern_all_pos``
``neuron`` / ``neuron_all_pos`` (post-activation of the MLP)              ``[n_layers, pos, d_mlp]`` /
                                                                          ``[n_layers, d_mlp]``
========================================================================  ====================================

With ``layers=[...]`` only those layers are patched and the first axis has ``len(layers)`` entries.
"""

from mi_toolkit.analysis.patching.activation import activation_patch
from mi_toolkit.analysis.patching.attribution import (
    PatchingComparison,
    attribution_patch,
    attribution_patch_every,
    compare_patching,
)
from mi_toolkit.analysis.patching.targets import TARGETS, valid_targets

__all__ = [
    "TARGETS",
    "PatchingComparison",
    "activation_patch",
    "attribution_patch",
    "attribution_patch_every",
    "compare_patching",
    "valid_targets",
]
