"""Layer 4: analysis. Pure functions from a model, a cache or data to tensors or small frozen dataclasses: patching
metrics, Fourier analysis and progress measures, activation and attribution patching, direct logit attribution,
head scores, superposition geometry, SAE evaluation, circuit discovery (``circuits``)."""

from mi_toolkit.analysis import (
    circuits, dashboard, fourier, heads, logit_attribution, metrics, patching, progress, sae, superposition,
)
from mi_toolkit.analysis.dashboard import FeatureDashboard, feature_dashboard_data
from mi_toolkit.analysis import edits, tracing
from mi_toolkit.analysis.edits import EditScores, edit_scores, summarise_scores
from mi_toolkit.analysis.tracing import Knockout, Trace, attention_knockout, causal_trace, causal_traces
from mi_toolkit.analysis.fourier import key_frequencies, logit_decomposition, neuron_clusters
from mi_toolkit.analysis.heads import HEAD_TYPES, detection_pattern, head_scores, induction_measures, model_head_scores
from mi_toolkit.analysis.logit_attribution import head_attribution, layer_attribution, logit_lens, neuron_attribution
from mi_toolkit.analysis.patching import activation_patch, attribution_patch, attribution_patch_every, compare_patching
from mi_toolkit.analysis.progress import (
    estimate_phases,
    evaluate_checkpoints,
    excluded_loss,
    gini,
    grokking_measures,
    restricted_loss,
)
from mi_toolkit.analysis.sae import decoder_spread, density_histogram, evaluate_sae, max_activating
from mi_toolkit.analysis.superposition import SuperpositionMetrics, superposition_metrics
from mi_toolkit.analysis import probes
from mi_toolkit.analysis.probes import LayerProbes, Probe, ProbeAccuracy, ProbeConfig, fit_probe, probe_layers
