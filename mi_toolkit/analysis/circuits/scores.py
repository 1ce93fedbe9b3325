"""A score for every edge: what removing it does to a metric, exactly (many edges per forward pass) or from
gradients (edge attribution patching, EAP, and its integrated-gradients version, EAP-IG).

Convention (removing an edge, as ACDC does): ``score(u -> v) = metric(clean run in which only receiver v reads
sender u's corrupted output) - metric(clean run)``. EAP estimates it to first order from the gradient at the clean
run (Syed et al. 2023): ``(u_corrupted - u_clean) . d metric / d input_v``; EAP-IG averages that gradient over
``ig_steps`` points on the straight line between the clean and the corrupted input embeddings (Hanna et al. 2024),
which helps where the gradient at the clean run is flat (a KL divergence to the clean run has zero gradient there).
``"eap-ig-receivers"`` integrates along a path per receiver instead: only that receiver's input moves from clean to
corrupted (all its edges at once), every other one stays clean. A receiver with one sender is then scored exactly (up
to the quadrature), its own nonlinearity (LayerNorm, attention softmax, the metric at the logits) is integrated over,
and only edges into the same receiver interact; it costs ``n_receivers * ig_steps`` copies instead of ``ig_steps``.
"""

import collections.abc
import dataclasses

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mi_toolkit.analysis.circuits._engine import (one_edge_logits, patched_logits, receiver_gradients, receiver_hook,
                                                   sender_outputs)
from mi_toolkit.analysis.circuits.graph import EdgeGraph, edge_graph
from mi_toolkit.analysis.patching.targets import check_inputs
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.core.types import Metric

__all__ = ["DEFAULT_ROWS", "METHODS", "EdgeScores", "edge_scores"]

METHODS = ("exact", "eap", "eap-ig", "eap-ig-receivers")
DEFAULT_ROWS = {"exact": 256, "eap": 256, "eap-ig": 256, "eap-ig-receivers": 64}
"""``edge_scores``' rows (copies x batch) per forward pass where ``max_rows`` is None (EAP has one pass)."""



@dataclasses.dataclass(frozen=True, eq=False)
class EdgeScores(collections.abc.Mapping):
    """Edge scores, read as a mapping ``{(sender, receiver): score}`` or as a tensor.

    ``tensor[r, s]`` (``[r, s, pos]`` with ``per_position``) is the score of ``graph.senders[s] ->
    graph.receivers[r]``; non-edges hold 0.
    """

    graph: EdgeGraph
    tensor: Tensor
    method: str
    clean_metric: float
    """``metric(clean run)``: a score plus this is the metric with the edge removed."""

    def __getitem__(self, edge: tuple[str, str]) -> float | Tensor:
        r, s = self.graph.index(edge)
        value = self.tensor[r, s]
        return value.item() if value.ndim == 0 else value

    def __iter__(self):
        return iter(self.graph.edges)

    def __len__(self) -> int:
        return self.graph.n_edges

    def flat(self) -> Float[Tensor, " n_edges"]:
        """The scores in the order of ``graph.edges`` (summed over positions for per-position scores)."""
        values = self.tensor if self.tensor.ndim == 2 else self.tensor.sum(-1)
        return values[self.graph.valid.to(values.device)]

    def top(self, n: int) -> list[tuple[str, str]]:
        """The ``n`` edges with the largest absolute score, largest first."""
        order = self.flat().abs().argsort(descending=True)[:n].tolist()
        edges = self.graph.edges
        return [edges[i] for i in order]


def edge_scores(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "_batch _pos"],  # checked against clean_tokens with a clear error
    metric: Metric,
    method: str = "exact",
    *,
    per_position: bool = False,
    ig_steps: int = 5,
    max_rows: int | None = None,
    progress: bool = False,
) -> EdgeScores:
    """Score every edge of ``model``'s graph (:func:`~mi_toolkit.analysis.circuits.edge_graph`).

    Args:
        model: any ``HookedTransformer`` with plain pre-norm blocks.
        clean_tokens: the input that is run.
        corrupted_tokens: the input whose sender outputs replace the clean ones on the removed edge; same shape.
        metric: logits -> scalar (from :mod:`mi_toolkit.analysis.metrics`, e.g. ``kl_to_clean`` or ``logit_diff``).
        method: ``"exact"`` (one patched copy of the batch per edge, many per forward pass), ``"eap"`` (one
            corrupted forward, one clean forward and backward), ``"eap-ig"`` (``ig_steps`` forward and backward
            copies along the interpolation of the input embeddings, as many per pass as ``max_rows`` allows) or
            ``"eap-ig-receivers"`` (``ig_steps`` copies per receiver, each moving only that receiver's input).
        per_position: score each edge at each position separately (``tensor[r, s, pos]``).
        ig_steps: points of the EAP-IG path (midpoints of ``ig_steps`` equal segments).
        max_rows: exact and both EAP-IGs: rows (copies x batch) per forward pass, which bounds memory (EAP-IG with
            ``max_rows`` = batch holds one path point's activations and gradients at a time, as EAP does). None:
            ``DEFAULT_ROWS[method]``, 256, or 64 for eap-ig-receivers, whose passes also keep their blocks for the
            backward pass (a 4-layer model with MLPs, 8 sequences: 947 MB of peak extra memory at 256 rows,
            256-293 MB at 64 for about 11% more time; ``benchmarks/circuits.py``).
        progress: exact and eap-ig-receivers: a progress bar over forward passes.

    Returns:
        :class:`EdgeScores`.

    Raises:
        ValueError: mismatched or out-of-vocabulary tokens, an unknown method, an unsupported architecture.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
    if ig_steps < 1 or (max_rows is not None and max_rows < 1):
        raise ValueError(f"ig_steps and max_rows must be >= 1; got {ig_steps} and {max_rows}")
    check_inputs(model, clean_tokens, corrupted_tokens, [], None)
    max_rows = DEFAULT_ROWS[method] if max_rows is None else max_rows
    graph = edge_graph(model)
    batch = len(clean_tokens)
    if method == "eap":  # one batched forward pass (clean with gradient, corrupted without) and one backward
        pass_ = receiver_gradients(model, graph, clean_tokens, metric, also=corrupted_tokens,
                                   deltas=lambda senders: senders[:, batch:] - senders[:, :batch],
                                   per_position=per_position)
        scores, base = pass_.scores, pass_.value
    else:
        clean = sender_outputs(model, graph, clean_tokens)
        corrupted = sender_outputs(model, graph, corrupted_tokens)
        with torch.no_grad():
            base = metric(model(clean_tokens)).item()
    if method == "exact":
        scores = _exact(model, graph, clean_tokens, clean, corrupted, metric, base, per_position, max_rows,
                        progress)
    elif method == "eap-ig-receivers":
        scores = _receiver_paths(model, graph, clean_tokens, clean, corrupted, metric, ig_steps, per_position,
                                 max_rows, progress)
    elif method == "eap-ig":
        alphas = (torch.arange(ig_steps, device=clean.device, dtype=clean.dtype) + 0.5) / ig_steps
        path = clean[0] + alphas[:, None, None, None] * (corrupted[0] - clean[0])
        per_pass = max(1, max_rows // batch)  # path points per forward and backward pass
        delta = corrupted - clean
        scores = sum(receiver_gradients(model, graph, clean_tokens, metric, embeddings=points, senders=False,
                                        deltas=lambda _: delta, per_position=per_position).scores
                     for points in path.split(per_pass)) / ig_steps
    if method != "exact":  # gradient estimates give every (receiver, sender) pair a number; keep the edges'
        scores = scores * graph.valid.to(scores.device).reshape(*graph.valid.shape, *[1] * (scores.ndim - 2))
    return EdgeScores(graph, scores.detach(), method, base)


def _receiver_paths(model, graph: EdgeGraph, tokens, clean, corrupted, metric, ig_steps, per_position, max_rows,
                    progress) -> Tensor:
    """EAP-IG along one path per receiver: copy ``(r, alpha)`` moves receiver ``r``'s input the fraction ``alpha``
    towards its input with every edge into it removed (the other receivers read clean inputs), and the gradient at
    that input, averaged over the ``ig_steps`` midpoints, is contracted with each sender's difference. Everything
    upstream of ``r`` is clean, so each pass restarts at the receivers' block, as exact scores do."""
    batch, n_pos = tokens.shape
    deltas = (corrupted - clean).to(torch.promote_types(corrupted.dtype, torch.float32))
    alphas = ((torch.arange(ig_steps) + 0.5) / ig_steps).tolist()
    starts = _restart_points(model, tokens)
    valid = graph.valid.to(deltas.device, deltas.dtype)
    copies = [(r, alpha) for r in valid.any(1).nonzero().flatten().tolist() for alpha in alphas]
    chunks = _by_block(graph, copies, max(1, max_rows // batch))
    scores = torch.zeros(*graph.valid.shape, *([n_pos] if per_position else []), device=deltas.device,
                         dtype=deltas.dtype)
    leaf = [("blocks.0.hook_resid_pre", lambda x, hook: x.detach().requires_grad_(True))]  # frozen weights too
    for layer, chunk in tqdm(chunks, disable=not progress, desc="eap-ig-receivers", dynamic_ncols=True):
        inputs: dict[str, Tensor] = {}
        wanted = {receiver_hook(graph, r)[0] for r, _ in chunk}  # the hooks of this chunk's receivers

        def keep(name: str, x: Tensor) -> None:
            if name in wanted:
                inputs[name] = x

        with torch.enable_grad():
            if starts is None:  # the general engine, from the tokens
                removed = torch.zeros(len(chunk), *graph.valid.shape, n_pos, device=deltas.device)
                for c, (r, alpha) in enumerate(chunk):
                    removed[c, r] = alpha
                with model.hooks(fwd_hooks=leaf):
                    logits = patched_logits(model, graph, tokens, removed, corrupted, keep)
            else:  # each copy's receiver reads alpha * (the sum of its senders' differences) more
                weights = torch.stack([alpha * valid[r] for r, alpha in chunk])
                moved = torch.einsum("cs,sbpd->cbpd", weights, deltas).to(starts[layer].dtype)
                logits = one_edge_logits(model, graph, layer, starts[layer].detach().requires_grad_(True),
                                         [(r, c, None) for c, (r, _) in enumerate(chunk)], moved, keep)
            value = sum(metric(rows) for rows in logits.split(batch))
            names = list(inputs)
            grads = dict(zip(names, torch.autograd.grad(value, [inputs[n] for n in names], allow_unused=True)))
        for c, (r, _) in enumerate(chunk):
            name, head = receiver_hook(graph, r)
            if grads[name] is None:  # the metric does not read this receiver
                continue
            grad = grads[name][c * batch : (c + 1) * batch]
            grad = (grad if head is None else grad[:, :, head]).to(deltas.dtype)  # (batch, pos, d_model)
            scores[r] += torch.einsum("sbpd,bpd->s" + ("p" if per_position else ""), deltas, grad) / ig_steps
    return scores


def _restart_points(model, tokens) -> list[Tensor] | None:
    """The clean residual stream entering each block, and the final one (where the logits read): where passes that
    leave everything upstream of a block clean restart. None where a pass cannot restart (shortformer positions,
    which attention re-reads; left padding, for which the full pass builds an attention mask)."""
    tokenizer = getattr(model, "tokenizer", None)
    if (model.cfg.positional_embedding_type == "shortformer"
            or getattr(tokenizer, "padding_side", "right") == "left"):
        return None
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)] + [f"blocks.{n_layers - 1}.hook_resid_post"]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=names)
    return [cache[name] for name in names]


def _by_block(graph: EdgeGraph, items: list[tuple], per_pass: int) -> list[tuple[int, list[tuple]]]:
    """``items`` (receiver first) in chunks of at most ``per_pass``, each chunk's receivers in one block
    (``n_layers``: the logits), blocks in order."""
    chunks = []
    for layer in range(graph.n_layers + 1):
        mine = [item for item in items if graph.receiver_layer[item[0]] == layer]
        chunks += [(layer, mine[i : i + per_pass]) for i in range(0, len(mine), per_pass)]
    return chunks


@torch.no_grad()
def _exact(model, graph: EdgeGraph, tokens, clean, corrupted, metric, base, per_position, max_rows, progress) -> Tensor:
    """One patched copy per edge (per position), grouped by the receiver's block so that each pass restarts there."""
    batch, n_pos = tokens.shape
    starts = _restart_points(model, tokens)  # None: the general engine runs every copy from the tokens
    deltas = corrupted - clean
    edges = graph.valid.nonzero().tolist()  # receiver-major: receivers (and so blocks) in order
    patches = [(r, s, p) for r, s in edges for p in (range(n_pos) if per_position else [None])]
    chunks = _by_block(graph, patches, max(1, max_rows // batch))
    scores = torch.zeros(*graph.valid.shape, *([n_pos] if per_position else []), device=corrupted.device,
                         dtype=torch.promote_types(corrupted.dtype, torch.float32))
    for layer, chunk in tqdm(chunks, disable=not progress, desc="exact edge scores", dynamic_ncols=True):
        if starts is None:
            removed = torch.zeros(len(chunk), *graph.valid.shape, n_pos, device=corrupted.device)
            for c, (r, s, p) in enumerate(chunk):
                removed[c, r, s, slice(None) if p is None else p] = 1
            logits = patched_logits(model, graph, tokens, removed, corrupted)
        else:
            logits = one_edge_logits(model, graph, layer, starts[layer], chunk, deltas)
        for c, (r, s, p) in enumerate(chunk):
            value = metric(logits[c * batch : (c + 1) * batch]) - base
            scores[(r, s) if p is None else (r, s, p)] = value
    return scores
