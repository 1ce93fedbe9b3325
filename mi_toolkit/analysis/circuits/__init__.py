"""Circuit discovery on the edge graph of any ``HookedTransformer``: edge scores (exact, EAP, EAP-IG along the input
embeddings or along each receiver's input: ``METHODS``), circuits and their faithfulness, ACDC, and causal scrubbing.

Senders are ``"input"``, ``"a{L}.h{H}"`` and ``"m{L}"``; receivers ``"a{L}.h{H}.q"`` / ``".k"`` / ``".v"``, ``"m{L}"``
and ``"logits"`` (:mod:`.graph`). An edge is removed by giving one receiver the sender's ablated output instead of
its own, the LayerNorm after it recomputed (:mod:`._engine`, many edge sets per forward pass).

Typical use (tutorial 06 runs it on the induction and IOI models)::

    scores = mt.circuits.edge_scores(model, clean, corrupted, metric, method="eap-ig")
    curve = mt.circuits.faithfulness_curve(model, scores, clean, metric, [5, 10, 20], corrupted_tokens=corrupted)
    found = mt.circuits.acdc(model, clean, corrupted, threshold=0.01)
    sweep = mt.circuits.acdc_sweep(model, clean, corrupted, thresholds=[0.01, 0.1, 1.0]); sweep.smallest(0.9)
"""

from mi_toolkit.analysis.circuits.acdc import ACDCResult, ACDCSweep, acdc, acdc_sweep
from mi_toolkit.analysis.circuits.circuit import (
    ABLATIONS,
    Circuit,
    FaithfulnessCurve,
    ablated_outputs,
    evaluate_circuits,
    faithfulness,
    faithfulness_curve,
    roc_auc,
)
from mi_toolkit.analysis.circuits.graph import EdgeGraph, edge_graph
from mi_toolkit.analysis.circuits.scores import DEFAULT_ROWS, METHODS, EdgeScores, edge_scores
from mi_toolkit.analysis.circuits.scrubbing import Hypothesis, ScrubResult, causal_scrub, token_feature

__all__ = [
    "ABLATIONS", "ACDCResult", "ACDCSweep", "Circuit", "DEFAULT_ROWS", "EdgeGraph", "EdgeScores", "FaithfulnessCurve",
    "METHODS", "ablated_outputs", "acdc", "acdc_sweep", "Hypothesis", "ScrubResult", "causal_scrub", "edge_graph",
    "edge_scores", "evaluate_circuits", "faithfulness", "faithfulness_curve", "roc_auc", "token_feature",
]
