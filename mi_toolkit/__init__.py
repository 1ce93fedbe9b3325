"""mi_toolkit: mechanistic interpretability on TransformerLens's ``HookedTransformer``.

Grokking and its progress measures, patching and ablations, superposition and sparse autoencoders, as reusable
functions that take a model and data and return tensors or small dataclasses; plots live in ``mi_toolkit.plot``.
"""

from mi_toolkit import _tl  # noqa: F401  (silences TL's HookedTransformer deprecation warning, once)
from mi_toolkit.fast_forward import final_position_logits
from mi_toolkit.models import build_model, grokking_model_config, make_grokking_model

# --- grokking / foundation (issue 2) ---

# --- patching, ablations, attribution, induction (issue 3) ---

# --- superposition and SAEs (issue 4) ---

__version__ = "0.1.0"
