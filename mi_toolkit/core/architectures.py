"""The one table of which architectures mi_toolkit's fast paths support.

Each fast path reproduces part of TransformerLens's forward pass by hand, so it must only run where its hand-written
computation is exact. :data:`REQUIREMENTS` names every condition once; :data:`FAST_PATHS` lists which conditions
each path needs. Everything else falls back to TransformerLens's own forward pass (same numbers, more work).

======================  ============================================================================================
fast path               used by
======================  ============================================================================================
``final_position``      :func:`mi_toolkit.core.forward.final_position_forward` (the last position only: grokking
                        training, progress measures)
``kv_restart``          activation patching: restart a patched pass mid-sequence from a key-value cache
``attention_update``    activation patching: update one layer's attention from cached scores for one changed
                        position
``final_restart``       causal tracing: a restarted pass runs its last block on the last position only
======================  ============================================================================================
"""

from collections.abc import Callable

from mi_toolkit.core.tl import Attention, HookedTransformer, TransformerBlock, has_hooks

__all__ = ["FAST_PATHS", "REQUIREMENTS", "is_causal", "supports", "unmet_requirements"]

_EXTRA_ATTENTION_FLAGS = ("use_split_qkv_input", "use_attn_in", "use_qk_norm", "use_logn_attn", "use_attention_sinks",
                          "use_dynamic_ntk_rope", "load_in_4bit", "use_normalization_before_and_after")
_POST_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
"""Architectures whose blocks normalise after attention or after the projections (TL special-cases them)."""


def _blocks(model: HookedTransformer, layer: int | None):
    return model.blocks if layer is None else [model.blocks[layer]]


def is_causal(model: HookedTransformer, layer: int | None = None) -> bool:
    """Whether every layer (or ``layer``) attends only backwards, so a change at position ``p`` reaches only
    positions ``>= p``."""
    cfg = model.cfg
    return all((getattr(block.attn, "_attention_dir_override", None) or cfg.attention_dir) == "causal"
               for block in _blocks(model, layer))


Requirement = Callable[[HookedTransformer, int | None], bool]

REQUIREMENTS: dict[str, Requirement] = {
    # name: predicate(model, layer); layer None means every layer.
    "no hooks attached": lambda m, layer: not has_hooks(m),
    "causal attention": is_causal,
    "standard positions": lambda m, layer: m.cfg.positional_embedding_type == "standard",
    "standard or rotary positions": lambda m, layer: m.cfg.positional_embedding_type in ("standard", "rotary"),
    "plain transformer blocks": lambda m, layer: all(type(b) is TransformerBlock for b in _blocks(m, layer)),
    "multi-head attention (no grouped queries)": lambda m, layer: (
        getattr(m.cfg, "n_key_value_heads", None) is None
        and all(isinstance(b.attn, Attention) for b in _blocks(m, layer))),
    "global attention (no local windows)": lambda m, layer: (
        all(getattr(b.attn, "attn_type", "global") == "global" for b in _blocks(m, layer))),
    "pre-norm blocks": lambda m, layer: m.cfg.original_architecture not in _POST_NORM,
    "no attention extras (qk-norm, split inputs, log-n, sinks, dynamic NTK, 4-bit, qkv clipping)": lambda m, layer: (
        not any(getattr(m.cfg, flag, False) for flag in _EXTRA_ATTENTION_FLAGS)
        and getattr(m.cfg, "clip_qkv", None) is None),
    "no attention-score soft cap": lambda m, layer: (getattr(m.cfg, "attn_scores_soft_cap", -1.0) or -1.0) <= 0,
    "no output-logit soft cap": lambda m, layer: (getattr(m.cfg, "output_logits_soft_cap", -1.0) or -1.0) <= 0,
    "attention and MLP in sequence": lambda m, layer: not m.cfg.parallel_attn_mlp,
    "grouped queries not ungrouped": lambda m, layer: not (
        getattr(m.cfg, "n_key_value_heads", None) and getattr(m.cfg, "ungroup_grouped_query_attention", False)),
    "one device": lambda m, layer: (getattr(m.cfg, "n_devices", 1) or 1) == 1,
    "plain MLP (not gated, no inner LayerNorm)": lambda m, layer: (
        not m.cfg.gated_mlp and not str(m.cfg.act_fn).endswith("_ln")),
}

_ATTENTION = ("causal attention", "plain transformer blocks", "multi-head attention (no grouped queries)",
              "global attention (no local windows)", "pre-norm blocks",
              "no attention extras (qk-norm, split inputs, log-n, sinks, dynamic NTK, 4-bit, qkv clipping)",
              "no attention-score soft cap")

_KV_RESTART = ("causal attention", "standard or rotary positions", "grouped queries not ungrouped")

FAST_PATHS: dict[str, tuple[str, ...]] = {
    "final_position": ("no hooks attached", "standard positions", *_ATTENTION, "no output-logit soft cap",
                       "attention and MLP in sequence", "plain MLP (not gated, no inner LayerNorm)"),
    "kv_restart": _KV_RESTART,
    "attention_update": ("no hooks attached", "standard or rotary positions", *_ATTENTION),
    "final_restart": ("no hooks attached", *_KV_RESTART, "one device", "plain transformer blocks", "pre-norm blocks",
                      "no attention extras (qk-norm, split inputs, log-n, sinks, dynamic NTK, 4-bit, qkv clipping)"),
}


def unmet_requirements(model: HookedTransformer, path: str, layer: int | None = None) -> list[str]:
    """The requirements of fast path ``path`` that ``model`` (or its block ``layer``) does not meet."""
    if path not in FAST_PATHS:
        raise ValueError(f"unknown fast path {path!r}; expected one of {sorted(FAST_PATHS)}")
    return [name for name in FAST_PATHS[path] if not REQUIREMENTS[name](model, layer)]


def supports(model: HookedTransformer, path: str, layer: int | None = None) -> bool:
    """Whether fast path ``path`` reproduces ``model`` (or its block ``layer``) exactly."""
    return not unmet_requirements(model, path, layer)
