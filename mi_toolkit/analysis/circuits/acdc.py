"""ACDC (Conmy et al. 2023): prune edges from the output backwards, keeping an edge only if removing it moves the
metric (KL divergence to the clean run by default) by at least a threshold.

Receivers are visited in reverse topological order; a node none of whose outputs is left in the circuit loses its
inputs too (they can no longer reach the output). Edges into one receiver are tested in order, each against the
circuit left by the tests before it. That is sequential, but it is batched here by speculation: one forward pass
tries removing the first 1, 2, 3, ... remaining edges cumulatively; every result up to and including the first
edge that must stay is exactly what the sequential algorithm computes, so a receiver costs one pass per edge it
keeps, plus one.

``tau`` is a knob, and the published practice is to sweep it: :func:`acdc_sweep` runs ACDC at several thresholds on
one set of ablated outputs and reports each circuit's size and faithfulness.
"""

import dataclasses
import math
import time
import warnings
from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from mi_toolkit.analysis.circuits.circuit import Circuit, _distinct, ablated_outputs, evaluate_circuits
from mi_toolkit.analysis.circuits.graph import edge_graph
from mi_toolkit.analysis.metrics import kl_to_clean
from mi_toolkit.analysis.patching.targets import check_inputs
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.core.types import Metric

__all__ = ["ACDCResult", "ACDCSweep", "acdc", "acdc_sweep"]


@dataclasses.dataclass(frozen=True)
class ACDCResult:
    """The circuit ACDC keeps and what it took."""

    circuit: Circuit
    threshold: float
    metric: float
    """The metric of the final circuit (other edges ablated)."""
    forward_passes: int
    edges_tested: int
    seconds: float
    """Wall time of the run (:func:`acdc`: with the clean run and the ablated outputs; in a sweep, shared by its
    runs, those are not counted)."""
    faithfulness: float = math.nan
    """``(m(circuit) - m(empty)) / (m(full) - m(empty))`` under ACDC's own metric and ablation (an affine metric, such
    as 1 - normalised logit difference, gives the same ratio as the score it is built from); NaN where the full and
    empty circuits' metrics are equal."""

    @property
    def edge_fraction(self) -> float:
        return self.circuit.n_edges / self.circuit.graph.n_edges


@torch.no_grad()
def acdc(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    threshold: float = 0.01,
    metric: Metric | None = None,
    ablation: str = "corrupted",
    max_rows: int = 1024,
    seed: int = 0,
    progress: bool = False,
) -> ACDCResult:
    """Run ACDC on ``model``'s edge graph.

    Args:
        model: the model.
        clean_tokens: the input.
        corrupted_tokens: the corrupted input (for ``ablation="corrupted"``).
        threshold: tau (> 0): an edge is removed when removing it raises the metric by less than this.
        metric: a distance from the clean run's behaviour (lower is closer; default KL divergence to the clean run
            at the last position, :func:`mi_toolkit.analysis.metrics.kl_to_clean`). For a score where higher is
            better, pass its negative.
        ablation: what a removed edge's receiver reads instead (``mi_toolkit.analysis.circuits.ABLATIONS``).
        max_rows: rows (tries x batch) per forward pass.
        seed: seed of the resample ablation.
        progress: a progress bar over receivers.

    Returns:
        :class:`ACDCResult`.
    """
    _check_threshold(threshold)
    started = time.perf_counter()
    graph, metric, ablated = _prepare(model, clean_tokens, corrupted_tokens, metric, ablation, seed)
    return _acdc(model, graph, clean_tokens, metric, ablated, threshold, max_rows, progress, started)


def _check_threshold(threshold: float) -> None:
    if not threshold > 0:  # at 0 the dead-node shortcut would drop edges that sequential ACDC keeps
        raise ValueError(f"threshold must be > 0, got {threshold}")


def _prepare(model, clean_tokens, corrupted_tokens, metric, ablation, seed):
    """Check the inputs, then the graph, the metric (default KL to the clean run) and the senders' ablated outputs."""
    check_inputs(model, clean_tokens, clean_tokens if corrupted_tokens is None else corrupted_tokens, [], None)
    graph = edge_graph(model)
    metric = kl_to_clean(model(clean_tokens)) if metric is None else metric
    return graph, metric, ablated_outputs(model, graph, clean_tokens, ablation, corrupted_tokens, seed=seed)


def _acdc(model, graph, clean_tokens, metric: Metric, ablated: Tensor, threshold: float, max_rows: int,
          progress: bool, started: float | None = None) -> ACDCResult:
    started = time.perf_counter() if started is None else started
    per_pass = max(1, max_rows // len(clean_tokens))
    mask = graph.valid.clone()
    full, empty = evaluate_circuits(model, [Circuit(graph, mask), Circuit(graph, torch.zeros_like(mask))],
                                    clean_tokens, metric, ablated, max_rows=max_rows).tolist()
    current = full
    passes, tested = (1 if per_pass > 1 else 2), 0
    order = list(range(len(graph.receivers)))[::-1]
    for r in tqdm(order, disable=not progress, desc="ACDC", dynamic_ncols=True):
        node = graph.node_of_receiver(r)
        if node != "logits" and not mask[:, graph.sender_index[node]].any():
            mask[r] = False  # the node's output reaches nothing: its inputs cannot matter
            continue
        pending = mask[r].nonzero().flatten().tolist()[::-1]  # senders, latest first
        while pending:
            tries = []
            for k in range(min(per_pass, len(pending))):
                trial = mask.clone()
                trial[r, pending[: k + 1]] = False
                tries.append(Circuit(graph, trial))
            values = evaluate_circuits(model, tries, clean_tokens, metric, ablated, max_rows=max_rows).tolist()
            passes += 1
            for k, value in enumerate(values):
                tested += 1
                if value - current < threshold:  # removing it costs less than tau: it goes
                    mask[r, pending[k]] = False
                    current = value
                else:
                    pending = pending[k + 1 :]
                    break
            else:
                pending = pending[len(values) :]
    faithful = math.nan
    if _distinct(full, empty):
        faithful = (current - empty) / (full - empty)
    else:
        warnings.warn(f"ACDC: the metric is {full} with every edge and {empty} with none, so the circuit's "
                      "faithfulness is undefined (NaN); choose inputs or a metric that tell them apart", stacklevel=3)
    return ACDCResult(Circuit(graph, mask), threshold, current, passes, tested,
                      round(time.perf_counter() - started, 3), faithful)


@dataclasses.dataclass(frozen=True)
class ACDCSweep:
    """ACDC at several thresholds (:func:`acdc_sweep`), one :class:`ACDCResult` each, in the order given."""

    results: list[ACDCResult]

    def table(self) -> list[dict]:
        """One row per threshold: ``threshold``, ``edges``, ``edge_fraction``, ``faithfulness``, ``forward_passes``,
        ``seconds``."""
        return [dict(threshold=r.threshold, edges=r.circuit.n_edges, edge_fraction=r.edge_fraction,
                     faithfulness=r.faithfulness, forward_passes=r.forward_passes, seconds=r.seconds)
                for r in self.results]

    def smallest(self, faithfulness: float = 0.9) -> ACDCResult | None:
        """The circuit with the fewest edges whose faithfulness is at least ``faithfulness``; of equal sizes the one
        closest to 1 (above 1 a circuit overshoots the full model); None where no threshold reached it."""
        if not math.isfinite(faithfulness):
            raise ValueError(f"faithfulness must be a finite number, got {faithfulness}")
        passing = [r for r in self.results if r.faithfulness >= faithfulness]
        return min(passing, key=lambda r: (r.circuit.n_edges, abs(1 - r.faithfulness)), default=None)


@torch.no_grad()
def acdc_sweep(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    thresholds: Sequence[float] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
    metric: Metric | None = None,
    ablation: str = "corrupted",
    max_rows: int = 1024,
    seed: int = 0,
    progress: bool = False,
) -> ACDCSweep:
    """:func:`acdc` at each of ``thresholds`` (tau; the other arguments as there), the senders' ablated outputs
    computed once. Each result carries its circuit's faithfulness; ``sweep.smallest(0.9)`` is the smallest circuit that
    reaches 0.9, ``sweep.table()`` every run, and :func:`mi_toolkit.plot.acdc_sweep` plots faithfulness against
    the edges kept.
    """
    thresholds = list(thresholds)
    if not thresholds:
        raise ValueError("no thresholds given")
    for threshold in thresholds:
        _check_threshold(threshold)
    graph, metric, ablated = _prepare(model, clean_tokens, corrupted_tokens, metric, ablation, seed)
    runs = tqdm(thresholds, disable=not progress, desc="ACDC sweep", dynamic_ncols=True)
    return ACDCSweep([_acdc(model, graph, clean_tokens, metric, ablated, t, max_rows, False) for t in runs])
