"""mi_toolkit: mechanistic interpretability on TransformerLens's ``HookedTransformer``.

Grokking and its progress measures, patching and ablations, superposition and sparse autoencoders, as reusable
functions that take a model and data and return tensors or small dataclasses; plots live in ``mi_toolkit.plot``.
The package is layered in the order data flows (``ARCHITECTURE.md``): ``core`` -> ``tasks`` -> ``models`` ->
``training`` -> ``analysis`` -> ``interventions`` -> ``plot`` -> ``report`` -> ``experiments`` -> ``cli``; everything a
user needs is re-exported here, grouped by concept.
"""

# --- layers, as namespaces ---
from mi_toolkit import analysis, core, experiments, interventions, models, plot, tasks, training

# --- concept modules, by their short names ---
from mi_toolkit.analysis import circuits, fourier, metrics, patching, progress, superposition
from mi_toolkit.analysis import probes
from mi_toolkit.analysis import logit_attribution as attribution
from mi_toolkit.analysis import sae as sae_eval
from mi_toolkit.interventions import ablation, steering
from mi_toolkit.models import sae
from mi_toolkit.tasks import induction
from mi_toolkit.tasks import synthetic as ground_truth

# --- shared types, hooks and activations ---
from mi_toolkit.core import ActivationStream, HookFn, Metric, Positions, Run, collect_activations, get_act_name
from mi_toolkit.core.forward import final_position_logits

# --- tasks ---
from mi_toolkit.tasks import (
    GroundTruth,
    GroupComposition,
    InductionTask,
    IOITask,
    ModularArithmetic,
    MultiTaskModular,
    mmcs,
)
from mi_toolkit.tasks import groups

# --- models ---
from mi_toolkit.models import (
    SAE,
    SAEConfig,
    ToyModel,
    ToyModelConfig,
    build_model,
    grokking_model_config,
    load_sae,
    make_grokking_model,
    make_induction_model,
)

# --- training ---
from mi_toolkit.training import TrainConfig, recipes, train, train_sae, train_toy_model

# --- analysis: grokking ---
from mi_toolkit.analysis.fourier import key_frequencies, logit_decomposition, neuron_clusters
from mi_toolkit.analysis.progress import estimate_phases, evaluate_checkpoints, excluded_loss, gini, restricted_loss

# --- analysis: patching, attribution, heads ---
from mi_toolkit.analysis.heads import model_head_scores
from mi_toolkit.analysis.logit_attribution import head_attribution, layer_attribution, logit_lens, neuron_attribution
from mi_toolkit.analysis.patching import activation_patch, attribution_patch, attribution_patch_every, compare_patching

# --- analysis: superposition and SAEs ---
from mi_toolkit.analysis.sae import decoder_spread, density_histogram, evaluate_sae, max_activating
from mi_toolkit.analysis.superposition import superposition_metrics
from mi_toolkit.plot.dashboard import feature_dashboard

# --- interventions ---
from mi_toolkit.interventions import (
    ablate_heads,
    ablate_layer,
    ablate_neurons,
    ablate_subspace,
    ablation_effect,
    add_direction,
    ce_loss_recovered,
    clamp_feature,
    scale_feature,
    splice_sae,
)

# --- experiments ---
from mi_toolkit.experiments import (
    GrokkingConfig,
    GroupsConfig,
    MiiiiConfig,
    algorithm_checks,
    load_run,
    load_packaged,
    run_grokking,
    run_groups,
    run_miiii,
    sweep,
    train_induction_model,
    train_ioi_model,
)
from mi_toolkit.experiments import grokking

# --- facts: knowledge base, causal tracing, model editing (ROME, MEMIT) ---
from mi_toolkit.analysis import tracing
from mi_toolkit.analysis.tracing import attention_knockout, causal_trace, causal_traces
from mi_toolkit.experiments import FactsConfig, load_packaged_fact_model, run_facts

# --- a language model trained here on the standard library's source (the SAE replication's model) ---
from mi_toolkit.experiments import LMConfig, run_lm
from mi_toolkit.tasks import TextTask
from mi_toolkit.interventions import editing
from mi_toolkit.models import make_fact_model
from mi_toolkit.tasks import facts

# --- Othello world models and linear probes ---
from mi_toolkit.experiments import OthelloConfig, othello, run_othello
from mi_toolkit.interventions.probe_edits import probe_flip
from mi_toolkit.tasks import OthelloTask

# --- module names of the flat layout before 0.2 (moves listed in CHANGELOG.md) ---
from mi_toolkit.core import forward as fast_forward
from mi_toolkit.core import io as checkpoints
from mi_toolkit.training import grokfast

__version__ = "0.2.0"
