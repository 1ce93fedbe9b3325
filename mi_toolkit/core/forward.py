"""Logits at the final position only, skipping the work a last-token loss never reads.

Tasks such as modular addition read the logits at the last position alone. In the last block, only that
position's query, attention output, MLP and unembedding matter; the other positions are needed only as keys and
values. For a 1-layer model this removes about two thirds of the MLP and unembedding work, which dominates the
cost of a full-batch training step. The result equals ``model(tokens)[:, -1]`` up to float rounding; models whose
architecture this path does not cover fall back to that full forward pass.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.core.architectures import supports, unmet_requirements
from mi_toolkit.core.tl import HookedTransformer

__all__ = ["FinalPosition", "final_position_forward", "final_position_logits", "supports_fast_path"]


class FinalPosition(NamedTuple):
    """What the last block computes at the final position."""

    logits: Float[Tensor, "batch d_vocab_out"]
    mlp_post: Float[Tensor, "batch d_mlp"] | None
    """The last MLP's neurons after the activation function (None for attention-only models)."""


def supports_fast_path(model: HookedTransformer) -> bool:
    """Whether :func:`final_position_logits` can skip work for this model (else it runs the full forward); see
    :mod:`mi_toolkit.core.architectures`."""
    return supports(model, "final_position")


def final_position_logits(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch d_vocab_out"]:
    """``model(tokens)[:, -1]``, computed without the final block's work at earlier positions.

    Args:
        model: any ``HookedTransformer``; unsupported architectures (and models with hooks attached) use the
            ordinary forward pass.
        tokens: token ids, no padding.

    Returns:
        Logits at the last position.
    """
    if not supports_fast_path(model):
        return model(tokens)[:, -1]
    return final_position_forward(model, tokens).logits


def final_position_forward(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> FinalPosition:
    """Logits and last-MLP neurons at the final position, through the fast path.

    Raises:
        ValueError: the model's architecture is not covered (see :func:`supports_fast_path`).
    """
    unmet = [r for r in unmet_requirements(model, "final_position") if r != "no hooks attached"]
    if unmet:  # hooks attached are allowed here: they simply do not fire
        raise ValueError(f"final_position_forward does not cover this architecture (needs: {'; '.join(unmet)}); "
                         "use run_with_cache")
    cfg = model.cfg
    batch, n_pos = tokens.shape
    n_heads, d_model, d_head = model.blocks[-1].attn.W_Q.shape
    if cfg.n_layers == 1 and cfg.d_vocab <= batch:
        q, k, v, resid_last = _first_block_qkv_by_lookup(model, tokens)
    else:
        q, k, v, resid_last = _last_block_qkv(model, tokens)
    attn = model.blocks[-1].attn
    block = model.blocks[-1]
    q = q.view(batch, 1, n_heads, d_head)
    k = k.view(batch, n_pos, n_heads, d_head)
    v = v.view(batch, n_pos, n_heads, d_head)
    scores = (q * k).sum(-1) / attn.attn_scale  # (batch, key_pos, head_index); the last query sees every key
    pattern = F.softmax(scores, dim=1)
    z = (pattern[..., None] * v).sum(1)  # (batch, head_index, d_head)
    resid_last = resid_last + z.reshape(batch, -1) @ attn.W_O.reshape(-1, d_model) + attn.b_O
    post = None
    if not cfg.attn_only:
        mlp = block.mlp
        post = mlp.act_fn(block.ln2(resid_last[:, None])[:, 0] @ mlp.W_in + mlp.b_in)  # (batch, d_mlp)
        resid_last = resid_last + post @ mlp.W_out + mlp.b_out
    if hasattr(model, "ln_final"):  # absent when normalization_type is None
        resid_last = model.ln_final(resid_last[:, None])[:, 0]
    return FinalPosition(model.unembed(resid_last[:, None])[:, 0], post)


def _last_block_qkv(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]):
    """Query at the last position, keys and values everywhere, and the residual stream at the last position."""
    # F.embedding's backward is a fast dense scatter; TL's W_E[tokens] indexing backward is several times slower.
    resid = F.embedding(tokens, model.W_E) + model.W_pos[: tokens.shape[1]]  # (batch, pos, d_model)
    for block in model.blocks[:-1]:
        resid = block(resid)
    attn = model.blocks[-1].attn
    x = model.blocks[-1].ln1(resid)  # (batch, pos, d_model)
    # One (d_model, head_index * d_head) matmul per projection beats per-head batched matmuls on CPU.
    q = x[:, -1] @ _heads_to_columns(attn.W_Q) + attn.b_Q.flatten()  # (batch, head_index * d_head)
    k = x @ _heads_to_columns(attn.W_K) + attn.b_K.flatten()  # (batch, pos, head_index * d_head)
    v = x @ _heads_to_columns(attn.W_V) + attn.b_V.flatten()
    return q, k, v, resid[:, -1]


def _first_block_qkv_by_lookup(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]):
    """As :func:`_last_block_qkv` for a 1-layer model, via tables over (position, token).

    In block 0 the residual stream at a position is ``W_E[token] + W_pos[position]``, so its LayerNorm, query,
    key and value depend on (position, token) alone: compute them once per vocabulary entry and look them up,
    instead of once per batch row. Worth it when the vocabulary is smaller than the batch.
    """
    n_pos = tokens.shape[1]
    attn, ln1 = model.blocks[0].attn, model.blocks[0].ln1
    x = ln1(model.W_E[None] + model.W_pos[:n_pos, None])  # (pos, d_vocab, d_model)
    q_table = x[-1] @ _heads_to_columns(attn.W_Q) + attn.b_Q.flatten()  # (d_vocab, head_index * d_head)
    k_table = (x @ _heads_to_columns(attn.W_K) + attn.b_K.flatten()).flatten(0, 1)  # (pos * d_vocab, hd)
    v_table = (x @ _heads_to_columns(attn.W_V) + attn.b_V.flatten()).flatten(0, 1)
    rows = tokens + model.cfg.d_vocab * torch.arange(n_pos, device=tokens.device)  # row of (pos, token)
    last = tokens[:, -1]
    resid_last = F.embedding(last, model.W_E) + model.W_pos[n_pos - 1]
    return F.embedding(last, q_table), F.embedding(rows, k_table), F.embedding(rows, v_table), resid_last


def _heads_to_columns(w: Float[Tensor, "head_index d_model d_head"]) -> Float[Tensor, "d_model hd"]:
    return w.permute(1, 0, 2).reshape(w.shape[1], -1)
