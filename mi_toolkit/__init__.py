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
from mi_toolkit import ablation, attribution, induction, metrics, patching
from mi_toolkit._tl import get_act_name  # hook names, for the ablation hook factories
from mi_toolkit.ablation import ablate_heads, ablate_layer, ablate_neurons, ablate_subspace, ablation_effect
from mi_toolkit.attribution import head_attribution, layer_attribution, logit_lens, neuron_attribution
from mi_toolkit.induction import InductionTask, make_induction_model, model_head_scores, train_induction_model
from mi_toolkit.patching import activation_patch, attribution_patch, attribution_patch_every, compare_patching

# --- superposition and SAEs (issue 4) ---
from mi_toolkit import ground_truth, sae, sae_eval, steering, superposition
from mi_toolkit.ground_truth import GroundTruth, mmcs
from mi_toolkit.sae import SAE, ActivationStream, SAEConfig, collect_activations, train_sae
from mi_toolkit.sae_eval import ce_loss_recovered, decoder_spread, density_histogram, evaluate_sae, max_activating
from mi_toolkit.steering import add_direction, clamp_feature, scale_feature, splice_sae
from mi_toolkit.superposition import ToyModel, ToyModelConfig, superposition_metrics, train_toy_model

__version__ = "0.1.0"
