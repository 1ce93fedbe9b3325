"""Plotly figures for mi_toolkit results: the only part of the package that imports plotly.

Each submodule draws one area's results (``grokking``, ``patching``, ``sae``); the functions are re-exported here,
so a notebook reads ``result = mt.something(model, data)`` then ``mt.plot.something(result)``.
"""

from mi_toolkit.plot.circuits import acdc_sweep, circuit_graph, edge_score_heatmap, faithfulness_curves
from mi_toolkit.plot.dashboard import feature_dashboard, feature_dashboard_html, feature_histogram
from mi_toolkit.plot.facts import edit_scores, facts_training, knockout_curves, trace_heatmap
from mi_toolkit.plot.grokking import (
    embedding_fourier_norms,
    logit_fraction_explained,
    loss_curves,
    neuron_clusters,
    neuron_heatmaps,
    progress_measures,
)
from mi_toolkit.plot.groups import irrep_overview, neuron_irreps
from mi_toolkit.plot.lm import lm_training
from mi_toolkit.plot.miiii import omega_curve, task_accuracies
from mi_toolkit.plot.othello import (
    board_heatmaps,
    edit_errors,
    legal_by_move,
    othello_training,
    probe_accuracy_by_layer,
    short_hook_name,
)
from mi_toolkit.plot.patching import attention_patterns, attribution_vs_activation, patching_heatmap
from mi_toolkit.plot.sae import feature_activations, feature_density
from mi_toolkit.plot.superposition import features_vs_sparsity, superposition_geometry
from mi_toolkit.plot.sweep import sweep_key_frequencies, sweep_steps_to_grok
