"""Layer 5: interventions as values. Hook factories (ablations, SAE splices, feature steering) return forward hooks
for ``model.hooks(...)``, so they are removed even on error; measurements of what an intervention changes sit
beside them."""

from mi_toolkit.interventions.ablation import (
    AblationEffect,
    ablate,
    ablate_heads,
    ablate_layer,
    ablate_neurons,
    ablate_subspace,
    ablation_effect,
    head_ablation_effects,
)
from mi_toolkit.interventions import editing, rank_one
from mi_toolkit.interventions.editing import EditConfig, memit, rome, second_moments
from mi_toolkit.interventions.rank_one import WeightEdit, memit_update, rank_one_update
from mi_toolkit.interventions.probe_edits import FlipErrors, evaluate_flips, flip_cases, probe_flip
from mi_toolkit.interventions.splicing import LossRecovered, ce_loss_recovered
from mi_toolkit.interventions.steering import add_direction, clamp_feature, scale_feature, splice_sae
