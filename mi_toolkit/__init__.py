"""mi_toolkit: mechanistic interpretability on TransformerLens's ``HookedTransformer``.

Grokking and its progress measures, patching and ablations, superposition and sparse autoencoders, as reusable
functions that take a model and data and return tensors or small dataclasses; plots live in ``mi_toolkit.plot``.
"""

from mi_toolkit.fast_forward import final_position_logits
from mi_toolkit.models import build_model, grokking_model_config, make_grokking_model

# --- grokking / foundation (issue 2) ---
from mi_toolkit import fourier, plot, progress
from mi_toolkit.fourier import key_frequencies, logit_decomposition, neuron_clusters
from mi_toolkit.grokking import GrokkingConfig, Run, load_run, run_grokking
from mi_toolkit.progress import estimate_phases, evaluate_checkpoints, excluded_loss, gini, restricted_loss
from mi_toolkit.tasks import ModularArithmetic
from mi_toolkit.training import TrainConfig, train

# --- patching, ablations, attribution, induction (issue 3) ---

# --- superposition and SAEs (issue 4) ---

__version__ = "0.1.0"
