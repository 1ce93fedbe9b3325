"""Logits at the final position only, skipping the work a last-token loss never reads.

Tasks such as modular addition read the logits at the last position alone. In the last block, only that
position's query, attention output, MLP and unembedding matter; the other positions are needed only as keys and
values. For a 1-layer model this removes about two thirds of the MLP and unembedding work, which dominates the
cost of a full-batch training step. The result equals ``model(tokens)[:, -1]`` up to float rounding; models whose
architecture this path does not cover fall back to that full forward pass.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit._tl import HookedTransformer

__all__ = ["final_position_logits", "supports_fast_path"]


def supports_fast_path(model: HookedTransformer) -> bool:
    """Whether :func:`final_position_logits` can skip work for this model (else it runs the full forward)."""
    return _architecture_supported(model) and _no_hooks(model)


def _no_hooks(model: HookedTransformer) -> bool:
    # Hooks attached by the user must see every activation, so hooked models take the full path.
    return all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())


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
    cfg = model.cfg
    if not supports_fast_path(model):
        return model(tokens)[:, -1]
    batch, n_pos = tokens.shape
    # F.embedding's backward is a fast dense scatter; TL's W_E[tokens] indexing backward is several times slower.
    resid = F.embedding(tokens, model.W_E) + model.W_pos[:n_pos]  # (batch, pos, d_model)
    for block in model.blocks[:-1]:
        resid = block(resid)
    block = model.blocks[-1]
    attn = block.attn
    n_heads, d_model, d_head = attn.W_Q.shape
    x = block.ln1(resid)  # (batch, pos, d_model)
    # One (d_model, head_index * d_head) matmul per projection beats per-head batched matmuls on CPU.
    q = x[:, -1] @ _heads_to_columns(attn.W_Q) + attn.b_Q.flatten()  # (batch, head_index * d_head)
    k = x @ _heads_to_columns(attn.W_K) + attn.b_K.flatten()  # (batch, pos, head_index * d_head)
    v = x @ _heads_to_columns(attn.W_V) + attn.b_V.flatten()
    q = q.view(batch, 1, n_heads, d_head)
    k = k.view(batch, n_pos, n_heads, d_head)
    v = v.view(batch, n_pos, n_heads, d_head)
    scores = (q * k).sum(-1) / attn.attn_scale  # (batch, key_pos, head_index); the last query sees every key
    pattern = F.softmax(scores, dim=1)
    z = (pattern[..., None] * v).sum(1)  # (batch, head_index, d_head)
    resid_last = resid[:, -1] + z.reshape(batch, -1) @ attn.W_O.reshape(-1, d_model) + attn.b_O
    if not cfg.attn_only:
        resid_last = resid_last + block.mlp(block.ln2(resid_last[:, None]))[:, 0]
    if hasattr(model, "ln_final"):  # absent when normalization_type is None
        resid_last = model.ln_final(resid_last[:, None])[:, 0]
    return model.unembed(resid_last[:, None])[:, 0]


def _heads_to_columns(w: Float[Tensor, "head_index d_model d_head"]) -> Float[Tensor, "d_model hd"]:
    return w.permute(1, 0, 2).reshape(w.shape[1], -1)


def _architecture_supported(model: HookedTransformer) -> bool:
    cfg = model.cfg
    return (
        cfg.positional_embedding_type == "standard"
        and cfg.attention_dir == "causal"
        and getattr(cfg, "n_key_value_heads", None) is None
        and not getattr(cfg, "use_qk_norm", False)
        and (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) <= 0
        and (getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0) <= 0
        and cfg.attn_types is None
        and not cfg.gated_mlp
        and not cfg.parallel_attn_mlp
    )
