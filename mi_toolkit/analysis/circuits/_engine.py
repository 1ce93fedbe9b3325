"""Owns the edge-patched forward pass: many copies of a batch in one pass, each with its own set of removed edges.

A receiver's input is the sum of the outputs of the senders before it (plus biases). In copy ``c``, receiver ``r``
reads ``input_r + sum_s removed[c, r, s, p] * (ablated_s - actual_s)`` at position ``p``, where ``actual_s`` is the
sender's output in that copy's own run (it differs from the clean run once an earlier edge is removed) and
``ablated_s`` its replacement (the corrupted run's output, a mean, zero). The receiver inputs are TransformerLens's
split query/key/value inputs and ``hook_mlp_in``, switched on only for the pass; the LayerNorm after them is
recomputed by the model itself.
"""

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mi_toolkit.analysis.circuits.graph import EdgeGraph
from mi_toolkit.core.tl import HookedTransformer

__all__ = ["Gradients", "one_edge_logits", "patched_logits", "receiver_gradients", "receiver_hook", "sender_hooks", "sender_outputs", "split_inputs"]


@contextlib.contextmanager
def split_inputs(model: HookedTransformer, heads: bool = True) -> Iterator[None]:
    """Give every head its own query/key/value input (unless ``heads`` is False) and every MLP a ``hook_mlp_in`` for
    the duration."""
    old = model.cfg.use_split_qkv_input, model.cfg.use_hook_mlp_in
    model.set_use_split_qkv_input(heads or old[0])
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    try:
        yield
    finally:
        model.set_use_split_qkv_input(old[0])
        if not model.cfg.attn_only:
            model.set_use_hook_mlp_in(old[1])


def sender_hooks(model: HookedTransformer, record) -> list[tuple[str, object]]:
    """Hooks that call ``record(outputs)`` with each sender's output ``[batch, pos, d_model]``, in sender order."""

    def embedding(x: Tensor, hook) -> None:
        record([x])

    def heads(layer: int):
        w_o = model.blocks[layer].attn.W_O  # (head_index, d_head, d_model)

        def hook(z: Tensor, hook) -> None:
            record(list(torch.einsum("bphe,hem->hbpm", z, w_o.to(z.dtype)).unbind(0)))

        return hook

    def mlp(x: Tensor, hook) -> None:
        record([x])

    hooks = [("blocks.0.hook_resid_pre", embedding)]
    for layer in range(model.cfg.n_layers):
        hooks.append((f"blocks.{layer}.attn.hook_z", heads(layer)))
        if not model.cfg.attn_only:
            hooks.append((f"blocks.{layer}.hook_mlp_out", mlp))
    return hooks


def receiver_hook(graph: EdgeGraph, r: int) -> tuple[str, int | None]:
    """The hook point whose activation is receiver ``r``'s input, and its head (None: the whole activation)."""
    name = graph.receivers[r]
    if name == "logits":
        return f"blocks.{graph.n_layers - 1}.hook_resid_post", None
    if name.count(".") == 0:
        return f"blocks.{name[1:]}.hook_mlp_in", None
    layer, head, kind = name[1:].split(".")
    return f"blocks.{layer}.hook_{kind}_input", int(head[1:])


def _receiver_groups(model: HookedTransformer, graph: EdgeGraph) -> list[tuple[str, list[int], bool]]:
    """``(hook name, receiver indices, per head)`` for every receiver hook point, in the order the pass reaches
    them (receivers are listed topologically, a hook's heads in order)."""
    groups: dict[str, tuple[list[int], bool]] = {}
    for r in range(len(graph.receivers)):
        name, head = receiver_hook(graph, r)
        groups.setdefault(name, ([], head is not None))[0].append(r)
    return [(name, rows, per_head) for name, (rows, per_head) in groups.items()]


@torch.no_grad()
def sender_outputs(
    model: HookedTransformer, graph: EdgeGraph, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "n_senders batch pos d_model"]:
    """Every sender's output on ``tokens`` (one forward pass)."""
    outputs: list[Tensor] = []
    with model.hooks(fwd_hooks=sender_hooks(model, outputs.extend)):
        model(tokens, return_type=None)
    return torch.stack(outputs)


def patched_logits(
    model: HookedTransformer,
    graph: EdgeGraph,
    tokens: Int[Tensor, "batch pos"],
    removed: Float[Tensor, "copies n_receivers n_senders pos"],
    ablated: Float[Tensor, "n_senders batch pos d_model"],
    on_input=None,
) -> Float[Tensor, "copies_x_batch pos d_vocab_out"]:
    """Logits of ``len(removed)`` copies of ``tokens``, copy ``c`` with the edges in ``removed[c]`` ablated.

    Rows are copy-major: copy ``c`` is rows ``c * batch .. (c + 1) * batch``. ``on_input(hook_name, x)``, where
    given, receives every receiver hook's activation as the receivers read it (after the edits), for gradients.
    A fractional ``removed`` moves the input that fraction of the way to the ablated one.
    """
    copies, batch = len(removed), len(tokens)
    removed = removed.to(ablated.dtype) * graph.valid.to(removed.device)[None, :, :, None]
    actual: list[Tensor] = []
    stacked: dict[int, Tensor] = {}  # differences ablated - actual, for the first n senders, built once per n

    def differences(n: int, used: Tensor) -> Tensor:  # (used senders, copy, batch, pos, d_model)
        if n not in stacked:
            stacked.clear()  # a later layer reads more senders; the earlier stack is not needed again
            now = torch.stack(actual[:n]).unflatten(1, (copies, batch))
            stacked[n] = ablated[:n, None] - now
        return stacked[n][used]

    def receiver(rows: list[int], per_head: bool):
        def hook(x: Tensor, hook) -> Tensor:
            n = len(actual)
            mask = removed[:, rows, :n]  # (copy, receiver, sender, pos)
            used = mask.ne(0).any(3).any(1).any(0).nonzero().flatten()  # senders some copy removes here
            if len(used):
                diffs, mask = differences(n, used), mask[:, :, used]
                if per_head:  # x: (copy * batch, pos, head_index, d_model)
                    delta = torch.einsum("chsp,scbpd->cbphd", mask, diffs)
                else:  # x: (copy * batch, pos, d_model)
                    delta = torch.einsum("csp,scbpd->cbpd", mask[:, 0], diffs)
                x = x + delta.flatten(0, 1)
            if on_input is not None:
                on_input(hook.name, x)
            return x

        return hook

    hooks = sender_hooks(model, actual.extend)
    hooks += [(name, receiver(rows, per_head)) for name, rows, per_head in _receiver_groups(model, graph)]
    with split_inputs(model), model.hooks(fwd_hooks=hooks):
        return model(tokens.repeat(copies, 1))


def one_edge_logits(
    model: HookedTransformer,
    graph: EdgeGraph,
    layer: int,
    start: Float[Tensor, "batch pos d_model"],
    patches: list[tuple[int, int, int | None]],
    deltas: Float[Tensor, "n_senders batch pos d_model"],
    on_input=None,
) -> Float[Tensor, "copies_x_batch pos d_vocab_out"]:
    """One copy of the clean run per patch ``(receiver, sender, position or None)``, every receiver in block
    ``layer`` (``n_layers``: the logits), each copy adding ``deltas[sender]`` to its one receiver's input.

    With one edge removed, every sender upstream of the receiver keeps its clean output, so the delta is the same in
    every copy and the pass restarts at ``layer`` from the clean residual stream ``start`` (TransformerLens's
    ``start_at_layer``): the layers before it are not run again. ``deltas`` may hold any row per patch (a sum of
    senders' differences, scaled); ``on_input(hook_name, x)`` receives the edited receiver inputs, as in
    :func:`patched_logits`.
    """
    copies, batch = len(patches), len(start)
    by_hook: dict[str, list[tuple[int, int, int, int | None]]] = {}  # hook -> (copy, head or 0, sender, position)
    for c, (r, s, p) in enumerate(patches):
        name, head = receiver_hook(graph, r)
        by_hook.setdefault(name, []).append((c, head or 0, s, p))

    def add(entries):
        copy = torch.tensor([e[0] for e in entries], device=start.device)
        slot = torch.tensor([e[1] for e in entries], device=start.device)
        values = deltas[[e[2] for e in entries]]  # (patch, batch, pos, d_model)
        at = torch.tensor([-1 if e[3] is None else e[3] for e in entries], device=start.device)
        positions = torch.arange(values.shape[2], device=start.device)
        values = values * ((at[:, None] < 0) | (positions[None] == at[:, None]))[:, None, :, None]

        def hook(x: Tensor, hook) -> Tensor:
            out = x.clone().unflatten(0, (copies, batch))
            if out.ndim == 5:  # (copy, batch, pos, head_index, d_model)
                out[copy, :, :, slot] += values
            else:
                out[copy] += values
            out = out.flatten(0, 1)
            if on_input is not None:
                on_input(hook.name, out)
            return out

        return hook

    if layer == model.cfg.n_layers:  # the logits read the final residual stream: add there, then unembed
        resid = start.repeat(copies, 1, 1).unflatten(0, (copies, batch))
        for c, (r, s, p) in enumerate(patches):
            resid[c, :, slice(None) if p is None else p] += deltas[s][:, slice(None) if p is None else p]
        resid = resid.flatten(0, 1)
        if on_input is not None:
            on_input(f"blocks.{layer - 1}.hook_resid_post", resid)
        return model(resid, start_at_layer=layer)
    # Only block `layer` needs its own input per head (TransformerLens's split inputs cost n_heads times the
    # projections); the blocks after it run as usual.
    hooks = [(name, add(entries)) for name, entries in by_hook.items()]
    with split_inputs(model), model.hooks(fwd_hooks=hooks):
        resid = model.blocks[layer](start.repeat(copies, 1, 1))
    return model(resid, start_at_layer=layer + 1)


class Gradients(NamedTuple):
    """What one forward and backward pass of :func:`receiver_gradients` gives."""

    grads: Tensor | None
    """``[n_receivers, batch, pos, d_model]``: the metric's gradient at each receiver's input, summed over copies,
    float32 at least (None when ``deltas`` contracted it into ``scores`` instead)."""
    senders: Tensor | None
    """``[n_senders, copies * batch (+ len(also)), pos, d_model]``: every sender's output in that pass (no
    gradient; None when not asked for)."""
    value: float
    """The metric, summed over copies."""
    scores: Tensor | None = None
    """``[n_receivers, n_senders]`` (``[..., pos]`` per position): ``deltas . grads``, formed receiver group by
    receiver group, so that the per-receiver gradient tensor (``grads``) is never formed; the hook points' own
    gradients from the backward pass are still held together. Float32 at least, whatever the model's dtype."""


def receiver_gradients(
    model: HookedTransformer,
    graph: EdgeGraph,
    tokens: Int[Tensor, "batch pos"],
    metric,
    embeddings: Float[Tensor, "copies batch pos d_model"] | None = None,
    also: Int[Tensor, "batch pos"] | None = None,
    deltas=None,
    per_position: bool = False,
    senders: bool = True,
) -> Gradients:
    """The gradient of ``metric`` with respect to every receiver's input, from one forward and backward pass.

    Args:
        model, graph, tokens: the model, its graph and the input.
        metric: logits ``[batch, pos, d_vocab]`` -> scalar, called on each copy's logits.
        embeddings: optional replacements of the residual stream entering block 0, one per copy (the points of an
            integrated-gradients path); default one copy of the input's own.
        also: more sequences to run in the same pass, without gradient, for their sender outputs only (appended
            after the copies in ``Gradients.senders``): one batched pass instead of two.
        deltas: optional function of the pass's sender outputs (``Gradients.senders``) returning ``[n_senders,
            batch, pos, d_model]``; given, each receiver group's gradient is contracted with it as it is formed
            (EAP's scores, ``Gradients.scores``) instead of being kept.
        per_position: with ``deltas``, keep the position axis of the scores.
        senders: record every sender's output in the pass (``Gradients.senders``, which ``deltas`` receives;
            None without: EAP-IG's differences come from its own clean and corrupted runs).
    """
    if per_position and deltas is None:
        raise ValueError("per_position needs deltas (it keeps the position axis of the contracted scores)")
    copies = 1 if embeddings is None else len(embeddings)
    batch = len(tokens)
    n_rows = copies * batch
    groups = _receiver_groups(model, graph)
    inputs: dict[str, Tensor] = {}
    outputs: list[Tensor] = []

    def leaf(x: Tensor, hook) -> Tensor:
        start = x[:n_rows] if embeddings is None else embeddings.flatten(0, 1).to(x.dtype)
        return torch.cat([start.detach().requires_grad_(True), x[n_rows:].detach()])

    def keep(x: Tensor, hook) -> None:
        inputs[hook.name] = x

    # The leaf comes first, so the "input" sender records the (replaced) leaf; the rest record as usual.
    hooks = [("blocks.0.hook_resid_pre", leaf)]
    if senders:
        hooks += sender_hooks(model, lambda xs: outputs.extend(x.detach() for x in xs))
    shared = _shared_norm_inputs(model)
    # Where the heads share one LayerNorm, a head's input gradient is formed from the gradient at its q/k/v
    # projection through that LayerNorm's backward, instead of giving every head its own copy of the residual stream
    # for the whole pass (TransformerLens's split inputs: n_heads copies per q/k/v, kept for the backward).
    wanted = {_PROJECTION[name.rsplit(".", 1)[1]].format(name.split(".")[1]) if shared and per_head else name: name
              for name, _, per_head in groups}
    hooks += [(name, keep) for name in wanted]
    if shared and model.cfg.normalization_type is not None:
        hooks += [(f"blocks.{layer}.ln1.{part}", keep) for layer in range(model.cfg.n_layers)
                  for part in ("hook_scale", "hook_normalized")]
    run = tokens.repeat(copies, 1) if also is None else torch.cat([tokens.repeat(copies, 1), also])
    with torch.enable_grad(), split_inputs(model, heads=not shared), model.hooks(fwd_hooks=hooks):
        logits = model(run)[:n_rows]
        value = sum(metric(chunk) for chunk in logits.split(batch))
        grads = dict(zip(wanted.values(), torch.autograd.grad(value, [inputs[name] for name in wanted],
                                                               allow_unused=True)))
    senders = torch.stack(outputs) if senders else None
    dtype = torch.promote_types(logits.dtype, torch.float32)  # gradients and scores: float32 at least
    if deltas is None:
        out = torch.zeros(len(graph.receivers), batch, tokens.shape[1], model.cfg.d_model, device=logits.device,
                          dtype=dtype)
    else:
        delta = deltas(senders).to(dtype)
        out = torch.zeros(len(graph.receivers), len(delta), *([tokens.shape[1]] if per_position else []),
                          device=logits.device, dtype=dtype)
        # delta . grad as one matrix product: (s, b p d) @ (b p d, r), or one per position
        delta = delta.permute(2, 0, 1, 3).flatten(2) if per_position else delta.flatten(1)
    for name, rows, per_head in groups:
        grad = grads[name]
        if grad is None:
            continue
        grad = grad[:n_rows].unflatten(0, (copies, batch))  # (copies, batch, pos, [head_index,] [d_head | d_model])
        if shared and per_head:
            layer, kind = int(name.split(".")[1]), name.rsplit(".", 1)[1]
            grad = _head_input_gradients(model, layer, kind, grad, inputs, copies, batch)
        grad = grad.sum(0)  # (batch, pos, [head_index,] d_model)
        grad = (grad.movedim(2, 0) if per_head else grad[None]).to(dtype)  # (receivers of the group, batch, pos, d)
        if deltas is None:
            out[rows] = grad
        elif per_position:  # (pos, s, b d) @ (pos, b d, r) -> (r, s, pos)
            out[rows] = (delta @ grad.permute(2, 1, 3, 0).flatten(1, 2)).permute(2, 1, 0)
        else:
            out[rows] = (delta @ grad.flatten(1).T).T
    if deltas is None:
        return Gradients(out, senders, float(value.detach()))
    return Gradients(None, senders, float(value.detach()), out)


_PROJECTION = {"hook_q_input": "blocks.{}.attn.hook_q", "hook_k_input": "blocks.{}.attn.hook_k",
               "hook_v_input": "blocks.{}.attn.hook_v"}
"""The projection each head's query / key / value input feeds (``[batch, pos, head_index, d_head]``)."""


def _shared_norm_inputs(model: HookedTransformer) -> bool:
    """Whether every head's q/k/v input is ``ln1(resid_pre)`` of one plain LayerNorm (or none), so that input
    gradients per head can be formed from the projections' gradients (see :func:`_head_input_gradients`)."""
    cfg = model.cfg
    return (cfg.normalization_type in ("LN", "LNPre", None) and cfg.positional_embedding_type != "shortformer"
            and not getattr(cfg, "parallel_attn_mlp", False) and getattr(cfg, "n_key_value_heads", None) is None
            and cfg.dtype in (torch.float32, torch.float64))


def _head_input_gradients(model: HookedTransformer, layer: int, kind: str, grad: Tensor, saved: dict[str, Tensor],
                          copies: int, batch: int) -> Tensor:
    """Each head's gradient at its own (pre-LayerNorm) q/k/v input, from the gradient at its projection.

    The projection is ``x_norm @ W[h] + b[h]`` with ``x_norm = xhat * w + b`` and ``xhat = (x - mean x) / scale``, so
    the gradient reaching the head's copy of ``x`` is the LayerNorm's backward of ``grad[h] @ W[h]^T``:
    ``(g - mean(g) - xhat * mean(g * xhat)) / scale`` with ``g = (grad[h] @ W[h]^T) * w``.
    """
    attn, ln = model.blocks[layer].attn, model.blocks[layer].ln1
    weight = {"hook_q_input": attn.W_Q, "hook_k_input": attn.W_K, "hook_v_input": attn.W_V}[kind]  # (h, m, e)
    g = torch.einsum("cbphe,hme->cbphm", grad, weight.to(grad.dtype))
    if model.cfg.normalization_type is None:  # no LayerNorm: the head's input is the residual stream itself
        return g
    if hasattr(ln, "w"):
        g = g * ln.w.to(g.dtype)
    xhat = saved[f"blocks.{layer}.ln1.hook_normalized"][: copies * batch].unflatten(0, (copies, batch))[:, :, :, None]
    scale = saved[f"blocks.{layer}.ln1.hook_scale"][: copies * batch].unflatten(0, (copies, batch))[:, :, :, None]
    xhat, scale = xhat.detach(), scale.detach()
    return (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True)) / scale
