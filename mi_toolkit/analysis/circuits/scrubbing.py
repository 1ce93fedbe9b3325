"""Causal scrubbing (Chan et al. 2022): test a hypothesis about what each part of a circuit computes by resampling
every activation the hypothesis says cannot matter.

A :class:`Hypothesis` names edges of the graph and, for each sender on them, a *feature*: a function of the input
tokens, per position, that the hypothesis claims is all the receiver needs from that sender there. The scrubbed
model computes, for an input ``x``, each receiver's input as the sum over its senders of

- on a hypothesis edge, the sender's (recursively scrubbed) output at position ``q`` on another input ``x'`` drawn
  from ``pool`` with ``feature(x')[q] == feature(x)[q]`` (a fresh draw for every position and every instance);
- on any other edge, the sender's output on one random input from ``pool`` (the hypothesis says it is irrelevant).

The hypothesis is tested by the loss it recovers, ``(L_random - L_scrubbed) / (L_random - L_model)``, where
``L_random`` scrubs with the empty hypothesis: every sender feeding the logits drawn from its own random input (not
one random input for the whole model, which gives a higher loss and so a higher recovery). Draws with no agreeing
input in the pool reuse the input itself and are counted in ``unmatched`` (a warning above 5%). A node's scrubbed
instance is a full forward pass of its layer on its own resampled input, so the cost grows by a factor ``pos`` per
level of the hypothesis; the input embeddings are a lookup and cost nothing.
"""

import dataclasses
import warnings
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.analysis.bootstrap import bounds, check_level, resample
from mi_toolkit.analysis.circuits._engine import receiver_hook, sender_hooks, sender_outputs, split_inputs
from mi_toolkit.analysis.circuits.graph import EdgeGraph, edge_graph
from mi_toolkit.analysis.patching.targets import check_inputs
from mi_toolkit.core.activations import run_until
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.core.types import Metric

__all__ = ["Hypothesis", "ScrubResult", "causal_scrub", "token_feature"]

_INPUT = "blocks.0.hook_resid_pre"  # the "input" sender: the residual stream entering block 0

Feature = Callable[[Int[Tensor, "n pos"]], Int[Tensor, "n pos"]]


def token_feature(offset: int = 0) -> Feature:
    """The token at ``position + offset`` (-1 where that is outside the sequence): ``offset=0`` the current token,
    ``-1`` the previous one."""

    def feature(tokens: Tensor) -> Tensor:
        out = torch.full_like(tokens, -1)
        n = tokens.shape[1]
        if offset <= 0:
            out[:, -offset:] = tokens[:, : n + offset]
        else:
            out[:, : n - offset] = tokens[:, offset:]
        return out

    return feature


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """Edges ``(sender, receiver)`` that carry a feature, and each such sender's feature."""

    edges: tuple[tuple[str, str], ...]
    features: dict[str, Feature]

    def check(self, graph: EdgeGraph) -> None:
        for edge in self.edges:
            graph.index(edge)
            if edge[0] not in self.features:
                raise ValueError(f"the hypothesis edge {edge} has no feature for its sender {edge[0]!r}")


@dataclasses.dataclass(frozen=True)
class ScrubResult:
    """What a hypothesis recovers."""

    loss_recovered: float
    low: float
    """Bootstrap interval over examples (``level``)."""
    high: float
    model_loss: float
    scrubbed_loss: float
    random_loss: float
    unmatched: float
    """Fraction of resampling draws with no agreeing input in the pool (the input itself was used)."""
    level: float


class _Scrubber:
    def __init__(self, model, graph, hypothesis, pool, generator):
        self.model, self.graph, self.h, self.pool, self.gen = model, graph, hypothesis, pool, generator
        self.pool_outputs = sender_outputs(model, graph, pool)  # (sender, pool, pos, d_model)
        self.pool_features = {s: f(pool) for s, f in hypothesis.features.items()}
        self.edges = set(hypothesis.edges)
        self.draws = self.unmatched = 0

    def resample(self, tokens: Tensor, sender: str) -> Tensor:
        """For each row and position q, an input from the pool agreeing with the row on the feature at q:
        ``[rows, pos (q), pos]``."""
        labels, pool_labels = self.h.features[sender](tokens), self.pool_features[sender]
        rows, n_pos = tokens.shape
        out = tokens[:, None].expand(rows, n_pos, n_pos).clone()
        for q in range(n_pos):
            match = labels[:, q, None] == pool_labels[None, :, q]  # (rows, pool)
            draw = torch.rand(match.shape, generator=self.gen).to(match.device)  # the generator lives on the CPU
            best, found = draw.masked_fill(~match, -1.0).argmax(1), match.any(1)
            out[found, q] = self.pool[best[found]].to(out.device)
            self.draws += rows
            self.unmatched += int((~found).sum())
        return out

    def receiver_input(self, r: int, tokens: Tensor, actual: list[Tensor], base: Tensor) -> Tensor:
        """Receiver ``r``'s scrubbed input for ``tokens`` rows: ``base`` (its input in the actual run) plus, for each
        sender, its replacement minus its ``actual`` output."""
        out = base.clone()
        for s in self.graph.valid[r].nonzero().flatten().tolist():
            sender = self.graph.senders[s]
            if (sender, self.graph.receivers[r]) in self.edges:
                drawn = self.resample(tokens, sender)  # (rows, q, pos)
                if sender == "input":  # position-local: the embedding at q of the token drawn for q
                    value = run_until(self.model, drawn.diagonal(dim1=1, dim2=2), [_INPUT])[_INPUT]
                else:  # one scrubbed instance per (row, q), read at q
                    value = self.output(sender, drawn.flatten(0, 1)).unflatten(0, drawn.shape[:2])
                    value = value.diagonal(dim1=1, dim2=2).movedim(-1, 1)  # (rows, pos, d_model)
            else:
                pick = torch.randint(0, len(self.pool), (len(tokens),), generator=self.gen)
                value = self.pool_outputs[s, pick.to(self.pool_outputs.device)]
            out += value - actual[s]
        return out

    def output(self, sender: str, tokens: Tensor) -> Tensor:
        """``sender``'s (a head's or an MLP's) scrubbed output on ``tokens`` rows, ``[rows, pos, d_model]``."""
        receivers = self.graph.receivers_of_sender[sender]
        actual, base = _actual_run(self.model, self.graph, tokens, receivers)
        inputs = {r: self.receiver_input(r, tokens, actual, base[r]) for r in receivers}
        return _run_node(self.model, self.graph, sender, tokens, inputs)


class _Stop(Exception):
    pass


def _actual_run(model, graph, tokens, receivers: list[int]) -> tuple[list[Tensor], dict[int, Tensor]]:
    """One forward pass on ``tokens``, stopped once ``receivers``' inputs are known: the outputs of the senders
    before them (in sender order) and those inputs."""
    outputs: list[Tensor] = []
    inputs: dict[int, Tensor] = {}
    hooks = sender_hooks(model, outputs.extend)
    for r in receivers:
        name, head = receiver_hook(graph, r)

        def grab(x, hook, r=r, head=head):
            inputs[r] = x if head is None else x[:, :, head]
            if len(inputs) == len(receivers):
                raise _Stop

        hooks.append((name, grab))
    with split_inputs(model), model.hooks(fwd_hooks=hooks):
        try:
            model(tokens, return_type=None)
        except _Stop:
            pass
    return outputs, inputs


def _run_node(model, graph, sender, tokens, inputs: dict[int, Tensor]) -> Tensor:
    """``sender``'s output on ``tokens`` when its receivers read ``inputs`` instead of their own inputs."""
    captured = {}
    hooks = []
    for r, value in inputs.items():
        name, head = receiver_hook(graph, r)

        def replace(x, hook, value=value, head=head):
            if head is None:
                return value.to(x.dtype)
            x = x.clone()
            x[:, :, head] = value
            return x

        hooks.append((name, replace))
    if sender.startswith("a"):
        layer, head = (int(part[1:]) for part in sender.split("."))
        w_o = model.blocks[layer].attn.W_O[head]

        def grab(z, hook):
            captured["x"] = z[:, :, head] @ w_o
            raise _Stop

        hooks.append((f"blocks.{layer}.attn.hook_z", grab))
    else:
        def grab(x, hook):
            captured["x"] = x
            raise _Stop

        hooks.append((f"blocks.{sender[1:]}.hook_mlp_out", grab))
    with split_inputs(model), model.hooks(fwd_hooks=hooks):
        try:
            model(tokens, return_type=None)
        except _Stop:
            pass
    return captured["x"]


@torch.no_grad()
def causal_scrub(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    hypothesis: Hypothesis,
    pool: Int[Tensor, "n_pool pos"],
    *,
    seed: int = 0,
    n_bootstrap: int = 1000,
    level: float = 0.9,
) -> ScrubResult:
    """The loss a hypothesis recovers on ``tokens`` (module docstring).

    Args:
        model: the model.
        tokens: the inputs the loss is measured on.
        metric: a loss of the logits for ``tokens`` (lower is better) with per-example values
            (e.g. :func:`mi_toolkit.analysis.metrics.loss`).
        hypothesis: edges and the features their senders carry.
        pool: inputs to resample from (the data distribution), same length as ``tokens``.
        seed: seed of every draw.
        n_bootstrap: bootstrap resamples of the examples for the interval.
        level: the interval's coverage.

    Returns:
        :class:`ScrubResult`.
    """
    check_level(level, n_bootstrap)
    graph = edge_graph(model)
    hypothesis.check(graph)
    if pool.ndim != 2 or pool.shape[1] != tokens.shape[1] or len(pool) < 2:
        raise ValueError(f"pool must hold >= 2 sequences as long as tokens ({tokens.shape[1]}); got {tuple(pool.shape)}")
    check_inputs(model, tokens, tokens, [], None)
    check_inputs(model, pool, pool, [], None)
    if (pool.to(tokens.device)[:, None] == tokens[None]).all(-1).any():
        raise ValueError("pool holds some of the scrubbed sequences themselves: a draw could return the original input")
    if not hasattr(metric, "per_example"):
        raise ValueError("causal_scrub needs a metric with per-example values (the metrics of mt.metrics have them)")
    gen = torch.Generator().manual_seed(seed)
    values = []
    for h in (hypothesis, Hypothesis((), {})):
        scrubber = _Scrubber(model, graph, h, pool, gen)
        r = graph.receiver_index["logits"]
        actual, base = _actual_run(model, graph, tokens, [r])
        resid = scrubber.receiver_input(r, tokens, actual, base[r])
        name, _ = receiver_hook(graph, r)
        logits = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook, value=resid: value)])
        values.append(metric.per_example(logits))
        if h is hypothesis:
            unmatched = scrubber.unmatched / max(scrubber.draws, 1)
    if unmatched > 0.05:
        warnings.warn(f"{unmatched:.1%} of the draws found no input in the pool agreeing on the feature and reused "
                      "the input itself, which leaks information: use a larger pool", stacklevel=2)
    scrubbed, random = values
    clean = metric.per_example(model(tokens))
    rows = resample(len(tokens), n_bootstrap, gen)
    boot = (random[rows].mean(1) - scrubbed[rows].mean(1)) / (random[rows].mean(1) - clean[rows].mean(1))
    lo, hi = bounds(boot, level)
    recovered = ((random.mean() - scrubbed.mean()) / (random.mean() - clean.mean())).item()
    return ScrubResult(recovered, lo.item(), hi.item(), clean.mean().item(), scrubbed.mean().item(),
                       random.mean().item(), unmatched, level)
