"""Layer 0: what every other layer shares.

- :mod:`~mi_toolkit.core.tl`: the one TransformerLens import point.
- :mod:`~mi_toolkit.core.types`: ``Metric``, ``Positions``, ``HookFn``, ``Logits``, ``Tokens``.
- :mod:`~mi_toolkit.core.losses`: the one cross-entropy on answer positions.
- :mod:`~mi_toolkit.core.activations`: the early-stopping forward pass and activation streams.
- :mod:`~mi_toolkit.core.forward`: the last-position fast forward pass.
- :mod:`~mi_toolkit.core.architectures`: the table of architectures the fast paths support.
- :mod:`~mi_toolkit.core.io`: run directories, safetensors + JSON files, the :class:`Run` record.
"""

from mi_toolkit.core.activations import (
    ActivationStream,
    apply_at_positions,
    collect_activations,
    run_until,
    select_positions,
)
from mi_toolkit.core.architectures import FAST_PATHS, supports, unmet_requirements
from mi_toolkit.core.forward import FinalPosition, final_position_forward, final_position_logits, supports_fast_path
from mi_toolkit.core.io import CheckpointError, Run, load_json, load_tensors, read_jsonl, save_json, save_tensors
from mi_toolkit.core.losses import answer_loss, next_token_loss
from mi_toolkit.core.tl import ActivationCache, HookedTransformer, check_hook_name, get_act_name, has_hooks
from mi_toolkit.core.types import HookFn, Logits, Metric, Positions, Tokens
