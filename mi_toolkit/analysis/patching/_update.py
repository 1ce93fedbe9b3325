"""Engine (private): patches local to one position. Such a patch runs its own layer on that position only, and the
next layer's attention is updated from the corrupted run's cached scores instead of being recomputed (the
``attention_update`` fast path of :mod:`mi_toolkit.core.architectures`)."""

import torch
from torch import Tensor

from mi_toolkit.analysis.patching._restart import CorruptedRun, constant_hook
from mi_toolkit.core.architectures import supports
from mi_toolkit.core.tl import HookedTransformer, get_act_name

__all__ = ["LOCAL_ACTS", "local_patch_logits"]

LOCAL_ACTS = {"z", "attn_out", "resid_mid", "mlp_out", "post", "resid_post"}
"""Activations computed after attention mixes positions: patching one at position ``p`` changes the layer's output
only at ``p``."""


def local_patch_logits(
    model: HookedTransformer, run: CorruptedRun, act: str, layer: int, clean: Tensor, mask: Tensor,
    positions: Tensor,
) -> Tensor:
    """Logits ``[copies * batch, pos, d_vocab_out]`` for copies that each patch a position-local activation.

    Copy ``c`` patches ``act`` of ``layer`` at position ``positions[c]`` (``mask[c]`` marks its entries). Such a
    patch leaves the layer's attention (``z``) and every other position of the layer's output unchanged, so the
    layer runs on that one position, with ``z`` and the patched activation set from the cached corrupted run; later
    layers restart from the first patched position (the last layer's other positions keep the corrupted logits).
    """
    copies, (batch, n_pos) = len(positions), run.tokens.shape
    rows = torch.arange(copies, device=positions.device)

    def at_positions(activation: Tensor) -> Tensor:  # (batch, pos, *rest) -> (copy, batch, *rest)
        return activation[:, positions].transpose(0, 1)

    name, z_name = get_act_name(act, layer), get_act_name("z", layer)
    corrupted = at_positions(run.acts[name])
    value = torch.where(mask[rows, :, positions], at_positions(clean), corrupted)  # (copy, batch, *rest)
    resid = at_positions(run.acts[get_act_name("resid_pre", layer)]).reshape(copies * batch, 1, -1)
    last = layer == model.cfg.n_layers - 1
    if act == "z" and supports(model, "attention_update", layer):  # the block from its heads' output on, without TL's attention
        attn_out = _attention_output(model.blocks[layer].attn, value.reshape(copies * batch, 1, -1))
        out = _rest_of_block(model, layer, resid, attn_out)
        if last:
            out = model(out, start_at_layer=model.cfg.n_layers)  # final norm and unembedding
    else:
        hooks = [(name, constant_hook(value.reshape(copies * batch, 1, *value.shape[2:])))]
        if act != "z":
            z = at_positions(run.acts[z_name])
            hooks.insert(0, (z_name, constant_hook(z.reshape(copies * batch, 1, *z.shape[2:]))))
        with model.hooks(fwd_hooks=hooks):
            out = model(resid, start_at_layer=layer, stop_at_layer=None if last else layer + 1)
    if not last and supports(model, "attention_update", layer + 1):
        return _next_layer_logits(model, run, layer + 1, out.view(copies, batch, -1), positions)
    following = run.logits if last else run.acts[get_act_name("resid_pre", layer + 1)]
    patched = following.repeat(copies, 1, 1).view(copies, batch, n_pos, -1)
    patched[rows, :, positions] = out.view(copies, batch, -1)
    patched = patched.view(copies * batch, n_pos, -1)
    if last:
        return patched
    start = int(positions.min())
    return run.logits_with(model, layer + 1, start, copies, [], resid=patched[:, start:])


def _rotate(attn, x: Tensor, positions: Tensor) -> Tensor:
    """TL's rotary embedding of ``x`` ``[rows, 1, head_index, d_head]``, row ``i`` at position ``positions[i]``."""
    rotary_dim = attn.cfg.rotary_dim
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    cos, sin = attn.rotary_cos[positions, None, None], attn.rotary_sin[positions, None, None]
    return torch.cat([x_rot * cos + attn.rotate_every_two(x_rot) * sin, x_pass], dim=-1)


def _attention_output(attn, z: Tensor) -> Tensor:
    """TL's output projection: ``z`` ``[batch, pos, head_index * d_head]`` -> ``attn_out`` ``[batch, pos, d_model]``."""
    return torch.nn.functional.linear(z, attn.W_O.reshape(z.shape[-1], -1).T, attn.b_O)


def _rest_of_block(model: HookedTransformer, layer: int, resid_pre: Tensor, attn_out: Tensor) -> Tensor:
    """``resid_post`` of a block that the ``attention_update`` fast path supports from its input and its attention output (MLP included)."""
    cfg, block = model.cfg, model.blocks[layer]
    if cfg.attn_only:
        return resid_pre + attn_out
    if cfg.parallel_attn_mlp:
        return resid_pre + attn_out + block.apply_mlp(block.ln2(resid_pre))
    resid_mid = resid_pre + attn_out
    return resid_mid + block.apply_mlp(block.ln2(resid_mid))


def _next_layer_logits(
    model: HookedTransformer, run: CorruptedRun, layer: int, resid: Tensor, positions: Tensor
) -> Tensor:
    """Logits ``[copies * batch, pos, d_vocab_out]`` where copy ``c``'s residual stream entering ``layer`` is the
    corrupted one except at position ``positions[c]``, where it is ``resid[c]`` (``[copies, batch, d_model]``).

    In ``layer`` only that position's query, key and value change. Instead of running the layer again from the
    first changed position, take the corrupted run's attention scores, recompute the changed position's row and
    column, softmax, and add the changed value's share to the corrupted values' mix; then the block's output
    projection and MLP run from the first changed position, and later layers restart from there.
    """
    block, attn, cfg = model.blocks[layer], model.blocks[layer].attn, model.cfg
    copies, batch, d_model = resid.shape
    n_pos = run.tokens.shape[1]
    start = int(positions.min())
    rotary = cfg.positional_embedding_type == "rotary"
    cached = lambda act: run.acts[get_act_name(act, layer)]  # noqa: E731
    q_old, k_old, v_old = cached("rot_q" if rotary else "q"), cached("rot_k" if rotary else "k"), cached("v")

    x = block.ln1(resid.reshape(copies * batch, 1, d_model))
    q, k, v = attn.calculate_qkv_matrices(x, x, x)  # (copy * batch, 1, head_index, d_head)
    if rotary:
        at = positions.repeat_interleave(batch)
        q, k = _rotate(attn, q, at), _rotate(attn, k, at)
    q, k, v = (t.view(copies, batch, *t.shape[2:]) for t in (q, k, v))  # (copy, batch, head_index, d_head)

    # Work in the layout (batch, head, copy, query, key): one batched matmul with the shared corrupted values.
    q, k, v = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # (batch, head_index, copy, d_head)
    q_old, k_old, v_old = (t.transpose(1, 2) for t in (q_old[:, start:], k_old, v_old))  # (batch, head, pos, d_head)
    copy = torch.arange(copies, device=resid.device)
    query = positions - start
    n_query = n_pos - start
    scores = cached("attn_scores")[:, :, None, start:].repeat(1, 1, copies, 1, 1)  # masked with -inf
    # The changed key, seen by the queries after it (its own query is the row below).
    # (Indexing two axes with a slice between them puts the indexed axis first: (copy, batch, head, query).)
    column = (q_old @ k.transpose(-1, -2)).permute(3, 0, 1, 2) / attn.attn_scale  # (copy, batch, head, query)
    after = (torch.arange(n_query, device=resid.device) > query[:, None])[:, None, None]  # (copy, 1, 1, query)
    scores[:, :, copy, :, positions] = torch.where(after, column, scores[:, :, copy, :, positions])
    # The changed query, against the corrupted keys before it and its own new key.
    row = q @ k_old.transpose(-1, -2) / attn.attn_scale  # (batch, head, copy, key)
    row[:, :, copy, positions] = (q * k).sum(-1) / attn.attn_scale
    upto = torch.arange(n_pos, device=resid.device) <= positions[:, None]  # (copy, key)
    scores[:, :, copy, query] = torch.where(upto, row, scores[:, :, copy, query])
    pattern = scores.softmax(dim=-1)  # (batch, head, copy, query, key)
    z = (pattern.view(batch, -1, copies * n_query, n_pos) @ v_old).view(batch, -1, copies, n_query, v.shape[-1])
    changed = pattern[:, :, copy, :, positions].permute(1, 2, 0, 3)  # (batch, head, copy, query): on the new value
    v_at_p = v_old[:, :, positions]  # (batch, head, copy, d_head)
    z = z + changed[..., None] * (v - v_at_p)[:, :, :, None]
    z = z.permute(2, 0, 3, 1, 4).reshape(copies * batch, n_query, -1)  # TL's (batch, pos, head_index * d_head)
    attn_out = _attention_output(attn, z)

    resid_pre = run.acts[get_act_name("resid_pre", layer)][:, start:].repeat(copies, 1, 1)
    resid_pre = resid_pre.view(copies, batch, n_query, d_model)
    resid_pre[copy, :, query] = resid
    resid_post = _rest_of_block(model, layer, resid_pre.view(copies * batch, n_query, d_model), attn_out)
    return run.logits_with(model, layer + 1, start, copies, [], resid=resid_post)
