"""The edge graph of a ``HookedTransformer``: who writes to the residual stream, who reads it, and which pairs
are edges.

Senders write to the residual stream: the input embeddings (``"input"``, the residual stream entering block 0),
every attention head (``"a{L}.h{H}"``, its share ``z[:, :, H] @ W_O[H]`` of the attention output) and every MLP
(``"m{L}"``, its output). Receivers read it, before their LayerNorm: every head's query, key and value input
(``"a{L}.h{H}.q"``, ``".k"``, ``".v"``), every MLP's input (``"m{L}"``) and the unembedding (``"logits"``, the
residual stream entering the final LayerNorm). An edge joins a sender to every receiver after it: heads of layer
``L`` read the senders of layers ``< L``; the MLP of layer ``L`` also reads that layer's heads (unless attention
and MLP run in parallel).

The residual stream a receiver reads is the sum of every earlier sender's output plus biases, so an edge is
removed by adding ``ablated(sender) - sender`` to that one receiver's input; nothing else changes.

>>> from mi_toolkit.models import build_model
>>> model = build_model(dict(n_layers=2, d_model=8, n_heads=2, d_head=4, d_vocab=5, n_ctx=4, attn_only=True))
>>> g = edge_graph(model)
>>> len(g.senders), len(g.receivers), g.n_edges
(5, 13, 29)
>>> g.edges[:2]
[('input', 'a0.h0.q'), ('input', 'a0.h1.q')]
"""

import dataclasses
import functools

import torch
from jaxtyping import Bool
from torch import Tensor

from mi_toolkit.core.architectures import REQUIREMENTS
from mi_toolkit.core.tl import HookedTransformer

__all__ = ["EdgeGraph", "NotAnEdge", "edge_graph"]

_NEEDS = ("plain transformer blocks", "multi-head attention (no grouped queries)", "pre-norm blocks")


class NotAnEdge(KeyError, ValueError):
    """An unknown sender or receiver, or a pair that is not an edge (a ``KeyError``, so ``edge in scores`` is
    False, and a ``ValueError`` for bad input)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class EdgeGraph:
    """The senders, receivers and edges of a model (see the module docstring for the names).

    ``valid[r, s]`` says whether sender ``s`` comes before receiver ``r`` (an edge). Receivers are listed in
    topological order (by layer: each layer's queries, keys, values, then its MLP; ``"logits"`` last).
    """

    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    sender_layer: tuple[int, ...]
    """The block of each sender (-1 for ``"input"``)."""
    receiver_layer: tuple[int, ...]
    """The block of each receiver (``n_layers`` for ``"logits"``)."""
    valid: Bool[Tensor, "n_receivers n_senders"]
    n_layers: int
    n_heads: int

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    @functools.cached_property
    def sender_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.senders)}

    @functools.cached_property
    def receiver_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.receivers)}

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Every edge as ``(sender, receiver)``, receivers in topological order."""
        return [(self.senders[s], self.receivers[r]) for r, s in self.valid.nonzero().tolist()]

    def index(self, edge: tuple[str, str]) -> tuple[int, int]:
        """``(receiver, sender)`` indices of an edge ``(sender, receiver)``; a clear error for a non-edge."""
        sender, receiver = edge
        if sender not in self.sender_index:
            raise NotAnEdge(f"unknown sender {sender!r}; senders are 'input', 'a{{L}}.h{{H}}' and 'm{{L}}'")
        if receiver not in self.receiver_index:
            raise NotAnEdge(f"unknown receiver {receiver!r}; receivers are 'a{{L}}.h{{H}}.q/k/v', 'm{{L}}', 'logits'")
        r, s = self.receiver_index[receiver], self.sender_index[sender]
        if not self.valid[r, s]:
            raise NotAnEdge(f"{sender!r} -> {receiver!r} is not an edge: the sender does not come before the receiver")
        return r, s

    def mask(self, edges) -> Bool[Tensor, "n_receivers n_senders"]:
        """A boolean ``[n_receivers, n_senders]`` mask holding ``edges`` (pairs ``(sender, receiver)``)."""
        out = torch.zeros_like(self.valid)
        for edge in edges:
            out[self.index(edge)] = True
        return out

    def node_of_receiver(self, r: int) -> str:
        """The sender a receiver belongs to (``"a1.h0.q"`` -> ``"a1.h0"``; ``"logits"`` -> ``"logits"``)."""
        name = self.receivers[r]
        return name.rsplit(".", 1)[0] if name.count(".") == 2 else name

    @functools.cached_property
    def receivers_of_sender(self) -> dict[str, list[int]]:
        """The receivers that make up each sender's input (a head's q, k, v; an MLP's input)."""
        out: dict[str, list[int]] = {}
        for r in range(len(self.receivers)):
            out.setdefault(self.node_of_receiver(r), []).append(r)
        return out


def check_supported(model: HookedTransformer) -> None:
    """Raise ``ValueError`` if the edge graph cannot describe ``model``'s forward pass exactly."""
    unmet = [name for name in _NEEDS if not REQUIREMENTS[name](model, None)]
    if model.cfg.use_normalization_before_and_after:
        unmet.append("no LayerNorm after attention and MLP")
    if getattr(model.cfg, "load_in_4bit", False):
        unmet.append("unquantised weights (a head's output is computed from W_O)")
    if unmet:
        raise ValueError(f"edge-level circuits need a model with {unmet}; this model does not have them")


def edge_graph(model: HookedTransformer) -> EdgeGraph:
    """The edge graph of ``model`` (see the module docstring).

    Raises:
        ValueError: an architecture whose blocks do not read and write the residual stream as above (grouped-query
            attention, post-norm blocks, custom blocks).
    """
    check_supported(model)
    cfg = model.cfg
    senders, sender_layer = ["input"], [-1]
    receivers, receiver_layer = [], []
    for layer in range(cfg.n_layers):
        for kind in "qkv":
            receivers += [f"a{layer}.h{h}.{kind}" for h in range(cfg.n_heads)]
            receiver_layer += [layer] * cfg.n_heads
        senders += [f"a{layer}.h{h}" for h in range(cfg.n_heads)]
        sender_layer += [layer] * cfg.n_heads
        if not cfg.attn_only:
            receivers.append(f"m{layer}")
            receiver_layer.append(layer)
            senders.append(f"m{layer}")
            sender_layer.append(layer)
    receivers.append("logits")
    receiver_layer.append(cfg.n_layers)
    r_layer, s_layer = torch.tensor(receiver_layer)[:, None], torch.tensor(sender_layer)[None, :]
    is_mlp = torch.tensor([name.startswith("m") for name in receivers])[:, None]
    is_head = torch.tensor([name.startswith("a") for name in senders])[None, :]
    # An MLP reads its own layer's heads, unless attention and MLP run in parallel.
    valid = (s_layer < r_layer) | ((s_layer == r_layer) & is_mlp & is_head & (not cfg.parallel_attn_mlp))
    return EdgeGraph(tuple(senders), tuple(receivers), tuple(sender_layer), tuple(receiver_layer), valid,
                     cfg.n_layers, cfg.n_heads)
