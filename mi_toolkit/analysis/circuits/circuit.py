"""Circuits (sets of edges), evaluated with every other edge ablated, and their faithfulness.

``faithfulness(C) = (m(C) - m(empty)) / (m(full) - m(empty))``: 1 when the circuit alone reproduces the model, 0 when
it does no better than ablating every edge. With ``ablation="corrupted"`` the empty circuit is exactly the corrupted
run; ``"resample"`` takes the ablated outputs from the clean batch shuffled (each sequence gets another's), ``"mean"``
from the clean batch's mean at each position, ``"zero"`` sets them to zero (the attention output bias ``b_O`` is not a
head's and stays). Many circuits are evaluated in one forward pass, one copy of the batch each.
"""

import dataclasses

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mi_toolkit.analysis.bootstrap import bounds, check_level, resample
from mi_toolkit.analysis.circuits._engine import patched_logits, sender_outputs
from mi_toolkit.analysis.circuits.graph import EdgeGraph, edge_graph
from mi_toolkit.analysis.circuits.scores import EdgeScores
from mi_toolkit.analysis.patching.targets import check_inputs
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.core.types import Metric

__all__ = ["ABLATIONS", "Circuit", "FaithfulnessCurve", "ablated_outputs", "evaluate_circuits", "faithfulness",
           "faithfulness_curve", "roc_auc"]

ABLATIONS = ("corrupted", "resample", "mean", "zero")


@dataclasses.dataclass(frozen=True, eq=False)
class Circuit:
    """A set of edges of a model's :class:`EdgeGraph` (``mask[r, s]``: the edge ``senders[s] -> receivers[r]``)."""

    graph: EdgeGraph
    mask: Bool[Tensor, "n_receivers n_senders"]

    def __post_init__(self):
        if self.mask.shape != self.graph.valid.shape:
            raise ValueError(f"mask shape {tuple(self.mask.shape)} != graph {tuple(self.graph.valid.shape)}")
        if (self.mask.cpu() & ~self.graph.valid).any():
            raise ValueError("the mask holds pairs that are not edges of the graph")

    @classmethod
    def from_edges(cls, graph: EdgeGraph, edges) -> "Circuit":
        """A circuit from ``(sender, receiver)`` pairs."""
        return cls(graph, graph.mask(edges))

    @classmethod
    def full(cls, graph: EdgeGraph) -> "Circuit":
        return cls(graph, graph.valid.clone())

    @classmethod
    def top_n(cls, scores: EdgeScores, n: int) -> "Circuit":
        """The ``n`` edges with the largest absolute scores."""
        return cls.from_edges(scores.graph, scores.top(n))

    @classmethod
    def greedy(cls, scores: EdgeScores, n: int) -> "Circuit":
        """``n`` edges grown from the logits: repeatedly add the highest-|score| edge whose receiver belongs to the
        logits or to a node already in the circuit, so every edge lies on a path to the output (Hanna et al.)."""
        graph = scores.graph
        values = (scores.tensor if scores.tensor.ndim == 2 else scores.tensor.sum(-1)).abs().cpu()
        reached = {"logits"}
        mask = torch.zeros_like(graph.valid)
        owner = [graph.node_of_receiver(r) for r in range(len(graph.receivers))]
        for _ in range(min(n, graph.n_edges)):
            open_rows = torch.tensor([node in reached for node in owner])
            candidates = torch.where(graph.valid & ~mask & open_rows[:, None], values, torch.tensor(-1.0))
            r, s = divmod(int(candidates.argmax()), len(graph.senders))
            if candidates[r, s] < 0:
                break
            mask[r, s] = True
            reached.add(graph.senders[s])
        return cls(graph, mask)

    @property
    def edges(self) -> list[tuple[str, str]]:
        return [(self.graph.senders[s], self.graph.receivers[r]) for r, s in self.mask.nonzero().tolist()]

    @property
    def n_edges(self) -> int:
        return int(self.mask.sum())

    def __contains__(self, edge: tuple[str, str]) -> bool:
        return bool(self.mask[self.graph.index(edge)])


def ablated_outputs(
    model: HookedTransformer,
    graph: EdgeGraph,
    clean_tokens: Int[Tensor, "batch pos"],
    ablation: str = "corrupted",
    corrupted_tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    seed: int = 0,
) -> Float[Tensor, "n_senders batch pos d_model"]:
    """What each sender's output becomes on an ablated edge (see the module docstring)."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if ablation == "corrupted":
        if corrupted_tokens is None:
            raise ValueError("ablation='corrupted' needs corrupted_tokens")
        return sender_outputs(model, graph, corrupted_tokens)
    if ablation == "resample":
        if len(clean_tokens) < 2:
            raise ValueError("ablation='resample' needs a batch of at least 2 sequences")
        order = torch.randperm(len(clean_tokens), generator=torch.Generator().manual_seed(seed))
        shift = torch.randint(1, len(clean_tokens), (), generator=torch.Generator().manual_seed(seed + 1))
        other = order.roll(int(shift))[order.argsort()]  # a derangement: sequence i reads sequence other[i] != i
        return sender_outputs(model, graph, clean_tokens[other.to(clean_tokens.device)])
    outputs = sender_outputs(model, graph, clean_tokens)
    if ablation == "mean":
        return outputs.mean(1, keepdim=True).expand_as(outputs)
    return torch.zeros_like(outputs)


def _values(metric: Metric, logits: Tensor, per_example: bool) -> Tensor:
    if not per_example:
        return metric(logits)
    if not hasattr(metric, "per_example"):
        raise ValueError("bootstrap intervals need a metric with per-example values (the metrics of mt.metrics "
                         "have them: metric.per_example)")
    return metric.per_example(logits)


@torch.no_grad()
def evaluate_circuits(
    model: HookedTransformer,
    circuits: list[Circuit],
    clean_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    ablated: Float[Tensor, "n_senders batch pos d_model"],
    *,
    per_example: bool = False,
    max_rows: int = 1024,
) -> Float[Tensor, "n_circuits *batch"]:
    """``metric`` of the clean run with every edge outside each circuit ablated to ``ablated``.

    Args:
        model: the model.
        circuits: circuits of ``model``'s graph.
        clean_tokens: the input that is run.
        metric: logits -> scalar.
        ablated: the senders' ablated outputs (:func:`ablated_outputs`).
        per_example: return ``metric.per_example`` values, ``[n_circuits, batch]``.
        max_rows: rows (circuits x batch) per forward pass.
    """
    if not circuits:
        raise ValueError("no circuits given")
    graph, batch, n_pos = circuits[0].graph, *clean_tokens.shape
    per_pass = max(1, max_rows // batch)
    out = []
    for i in range(0, len(circuits), per_pass):
        chunk = circuits[i : i + per_pass]
        removed = torch.stack([graph.valid & ~c.mask for c in chunk]).to(ablated.device, ablated.dtype)
        logits = patched_logits(model, graph, clean_tokens, removed[..., None].expand(-1, -1, -1, n_pos), ablated)
        out += [_values(metric, piece, per_example) for piece in logits.split(batch)]
    return torch.stack(out)


def faithfulness(
    model: HookedTransformer,
    circuit: Circuit,
    clean_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    ablation: str = "corrupted",
    corrupted_tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    seed: int = 0,
) -> float:
    """``(m(circuit) - m(empty)) / (m(full) - m(empty))`` with the other edges ablated (module docstring)."""
    check_inputs(model, clean_tokens, clean_tokens if corrupted_tokens is None else corrupted_tokens, [], None)
    ablated = ablated_outputs(model, circuit.graph, clean_tokens, ablation, corrupted_tokens, seed=seed)
    empty = Circuit(circuit.graph, torch.zeros_like(circuit.mask))
    m_c, m_empty, m_full = evaluate_circuits(
        model, [circuit, empty, Circuit.full(circuit.graph)], clean_tokens, metric, ablated).tolist()
    _check_spread(m_full, m_empty, ablation)
    return (m_c - m_empty) / (m_full - m_empty)


def _distinct(full: float, empty: float) -> bool:
    """Whether the full and empty circuits' metrics differ by more than float32 rounding of the same run, so that
    faithfulness is defined."""
    return abs(full - empty) > 1e-5 * max(1.0, abs(full))


def _check_spread(full: float, empty: float, ablation: str) -> None:
    if not _distinct(full, empty):
        raise ValueError(f"the metric is {full} with every edge and {empty} with none ({ablation} ablation): "
                         "faithfulness is undefined; choose inputs or a metric that tell them apart")


@dataclasses.dataclass(frozen=True)
class FaithfulnessCurve:
    """Faithfulness of the top-``n`` circuits against ``n``, beside random circuits of the same sizes."""

    n_edges: list[int]
    faithfulness: list[float]
    low: list[float]
    """Bootstrap interval over examples (``level``), lower end."""
    high: list[float]
    random_mean: list[float]
    random_low: list[float]
    """The spread of the random circuits (the same quantiles over draws)."""
    random_high: list[float]
    total_edges: int
    level: float


def _ratio(values: Tensor, empty: Tensor, full: Tensor) -> Tensor:
    return (values - empty) / (full - empty)


def faithfulness_curve(
    model: HookedTransformer,
    scores: EdgeScores,
    clean_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    n_edges: list[int],
    ablation: str = "corrupted",
    corrupted_tokens: Int[Tensor, "batch pos"] | None = None,
    *,
    how: str = "top",
    n_random: int = 10,
    n_bootstrap: int = 1000,
    level: float = 0.9,
    seed: int = 0,
) -> FaithfulnessCurve:
    """Faithfulness of the circuits of the ``n`` best edges (``how``: ``"top"`` or ``"greedy"``) for each ``n``.

    Bootstrap intervals resample the examples of the batch (``metric.per_example`` is needed); the random baseline
    draws ``n_random`` circuits of each size uniformly from all edges.
    """
    if how not in ("top", "greedy"):
        raise ValueError(f"how must be 'top' or 'greedy', got {how!r}")
    if n_random < 1 or not n_edges:
        raise ValueError(f"need n_edges and n_random >= 1; got {list(n_edges)}, {n_random}")
    check_level(level, n_bootstrap)
    if not hasattr(metric, "per_example"):
        raise ValueError("bootstrap intervals need a metric with per-example values (the metrics of mt.metrics "
                         "have them: metric.per_example)")
    check_inputs(model, clean_tokens, clean_tokens if corrupted_tokens is None else corrupted_tokens, [], None)
    graph = scores.graph
    build = Circuit.top_n if how == "top" else Circuit.greedy
    gen = torch.Generator().manual_seed(seed)
    valid = graph.valid.nonzero()
    circuits = [build(scores, n) for n in n_edges]
    for n in n_edges:
        for _ in range(n_random):
            mask = torch.zeros_like(graph.valid)
            pick = valid[torch.randperm(len(valid), generator=gen)[:n]]
            mask[pick[:, 0], pick[:, 1]] = True
            circuits.append(Circuit(graph, mask))
    circuits += [Circuit(graph, torch.zeros_like(graph.valid)), Circuit.full(graph)]
    ablated = ablated_outputs(model, graph, clean_tokens, ablation, corrupted_tokens, seed=seed)
    values = evaluate_circuits(model, circuits, clean_tokens, metric, ablated, per_example=True).cpu()
    empty, full = values[-2], values[-1]
    _check_spread(full.mean().item(), empty.mean().item(), ablation)
    k = len(n_edges)
    top = values[:k]
    rows = resample(values.shape[1], n_bootstrap, gen)
    boot = _ratio(top[:, rows].mean(-1), empty[rows].mean(-1), full[rows].mean(-1))  # (n, n_bootstrap)
    point = _ratio(top.mean(-1), empty.mean(), full.mean())
    rand = _ratio(values[k:-2].mean(-1), empty.mean(), full.mean()).view(k, n_random)
    (boot_lo, boot_hi), (rand_lo, rand_hi) = bounds(boot, level), bounds(rand, level)
    return FaithfulnessCurve(list(n_edges), point.tolist(), boot_lo.tolist(), boot_hi.tolist(), rand.mean(1).tolist(),
                             rand_lo.tolist(), rand_hi.tolist(), graph.n_edges, level)


def roc_auc(scores: EdgeScores | Float[Tensor, " n_edges"], reference: Circuit) -> float:
    """Area under the ROC curve of ranking edges by ``|score|`` against membership of ``reference``: the chance that
    a random reference edge outscores a random other edge (ties count half)."""
    graph = reference.graph
    values = (scores.flat() if isinstance(scores, EdgeScores) else scores).abs().cpu().double()
    truth = reference.mask[graph.valid]
    pos, neg = values[truth], values[~truth]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("the reference circuit must hold some but not all edges")
    greater = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    return greater.mean().item()
