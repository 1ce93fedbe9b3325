"""Activation patching and attribution patching for any ``HookedTransformer``.

Activation patching runs the *corrupted* input, replaces one activation with its value on the *clean* input and
records ``metric(logits)``; a sweep does this for every layer and index of a target (TransformerLens's
``get_act_patch_*`` convention: the result holds the patched metric, not its change). Here the sweep is
vectorised: the corrupted batch is repeated along a "patch" axis, ``chunk_size`` copies per forward pass, and one
hook per layer writes a different clean slice into each copy.

Attribution patching estimates the same numbers to first order,
``metric(patched) ~ metric(corrupted) + grad_act metric |corrupted . (act_clean - act_corrupted)``,
from one clean forward pass and one corrupted forward + backward pass for every target at once. It is exact
where the metric is linear in the patched activation and poor for large changes (Nanda, "Attribution Patching").

Targets and result shapes (``pos`` = sequence length):

========================================================================  ====================================
``resid_pre``, ``resid_mid``, ``resid_post``, ``attn_out``, ``mlp_out``   ``[n_layers, pos]``
``head_out`` (the heads' ``z``), ``q``, ``k``, ``v``                      ``[n_layers, pos, n_heads]``
``head_out_all_pos``, ``q_all_pos``, ``k_all_pos``, ``v_all_pos``,        ``[n_layers, n_heads]``
``pattern_all_pos``
``neuron`` / ``neuron_all_pos`` (post-activation of the MLP)              ``[n_layers, pos, d_mlp]`` /
                                                                          ``[n_layers, d_mlp]``
========================================================================  ====================================

With ``layers=[...]`` only those layers are patched and the first axis has ``len(layers)`` entries.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mi_toolkit._tl import HookedTransformer, get_act_name, has_hooks, run_until

__all__ = [
    "TARGETS",
    "PatchingComparison",
    "activation_patch",
    "attribution_patch",
    "attribution_patch_every",
    "compare_patching",
    "valid_targets",
]

Metric = Callable[[Float[Tensor, "batch pos d_vocab_out"]], Float[Tensor, ""]]


@dataclasses.dataclass(frozen=True)
class _Target:
    act: str
    """TL's activation name (``get_act_name(act, layer)``)."""
    axes: tuple[str, ...]
    """Axes of the activation after the batch axis."""
    index: tuple[str, ...]
    """The axes patched one entry at a time (a sub-sequence of ``axes``); the others are patched whole."""
    needs: str = ""
    """``"mlp"`` or ``"resid_mid"``: the target exists only on models with MLPs (and a resid_mid)."""


_VEC = ("pos", "head_index", "d_head")
TARGETS: dict[str, _Target] = {
    "resid_pre": _Target("resid_pre", ("pos", "d_model"), ("pos",)),
    "resid_mid": _Target("resid_mid", ("pos", "d_model"), ("pos",), needs="resid_mid"),
    "resid_post": _Target("resid_post", ("pos", "d_model"), ("pos",)),
    "attn_out": _Target("attn_out", ("pos", "d_model"), ("pos",)),
    "mlp_out": _Target("mlp_out", ("pos", "d_model"), ("pos",), needs="mlp"),
    "head_out": _Target("z", _VEC, ("pos", "head_index")),
    "q": _Target("q", _VEC, ("pos", "head_index")),
    "k": _Target("k", _VEC, ("pos", "head_index")),
    "v": _Target("v", _VEC, ("pos", "head_index")),
    "head_out_all_pos": _Target("z", _VEC, ("head_index",)),
    "q_all_pos": _Target("q", _VEC, ("head_index",)),
    "k_all_pos": _Target("k", _VEC, ("head_index",)),
    "v_all_pos": _Target("v", _VEC, ("head_index",)),
    "pattern_all_pos": _Target("pattern", ("head_index", "query_pos", "key_pos"), ("head_index",)),
    "neuron": _Target("post", ("pos", "d_mlp"), ("pos", "d_mlp"), needs="mlp"),
    "neuron_all_pos": _Target("post", ("pos", "d_mlp"), ("d_mlp",), needs="mlp"),
}
"""Every patching target; :func:`valid_targets` lists those a given model has."""


def valid_targets(model: HookedTransformer) -> list[str]:
    """The targets of :data:`TARGETS` that ``model`` computes (attention-only models have no MLP targets)."""
    cfg = model.cfg
    has = {"": True, "mlp": not cfg.attn_only, "resid_mid": not cfg.attn_only and not cfg.parallel_attn_mlp}
    return [name for name, spec in TARGETS.items() if has[spec.needs]]


def _check_inputs(
    model: HookedTransformer, clean_tokens: Tensor, corrupted_tokens: Tensor, targets: Sequence[str],
    layers: Sequence[int] | None,
) -> list[int]:
    """Raise ``ValueError`` on bad inputs before any forward pass; return the layers to patch."""
    cfg = model.cfg
    valid = valid_targets(model)
    for target in targets:
        if target not in valid:
            raise ValueError(f"unknown patching target {target!r} for this model; valid targets: {valid}")
    for name, tokens in (("clean_tokens", clean_tokens), ("corrupted_tokens", corrupted_tokens)):
        if tokens.ndim != 2 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor [batch, pos], got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= cfg.d_vocab):
            raise ValueError(
                f"{name} has tokens outside the vocabulary [0, {cfg.d_vocab}): min {tokens.min().item()}, "
                f"max {tokens.max().item()}"
            )
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean and corrupted tokens must have the same shape; got {tuple(clean_tokens.shape)} and "
            f"{tuple(corrupted_tokens.shape)}"
        )
    if clean_tokens.shape[1] > cfg.n_ctx:
        raise ValueError(f"sequences of length {clean_tokens.shape[1]} exceed the model's n_ctx = {cfg.n_ctx}")
    layers = list(range(cfg.n_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < cfg.n_layers]
    if bad or not layers:
        raise ValueError(f"layers must be a non-empty list of layers in [0, {cfg.n_layers}); got {layers}")
    return layers


def _index_sizes(spec: _Target, act_shape: Sequence[int]) -> list[int]:
    """Sizes of the index axes, read from an activation ``[batch, *axes]``."""
    return [act_shape[1 + spec.axes.index(axis)] for axis in spec.index]


def _mask_shape(spec: _Target, act_shape: Sequence[int]) -> list[int]:
    """Shape of a per-copy mask that broadcasts against ``[copies, batch, *axes]``."""
    return [1] + [act_shape[1 + i] if axis in spec.index else 1 for i, axis in enumerate(spec.axes)]


def _patch_hook(clean: Tensor, mask: Tensor, copies: int) -> Callable:
    """A hook writing ``clean`` into each copy of the repeated batch where ``mask[copy]`` is set.

    ``mask`` has shape ``[copies, 1, *axes]`` (1 on broadcast axes); the activation is ``[copies * batch, *axes]``.
    """

    def hook(activation: Tensor, hook) -> Tensor:
        shape = activation.shape
        activation = activation.view(copies, shape[0] // copies, *shape[1:])  # (copy, batch, *axes)
        return torch.where(mask, clean, activation).view(shape)

    return hook


def _causal(model: HookedTransformer) -> bool:
    """Whether every layer attends only backwards, so that a change at position ``p`` reaches positions ``>= p``."""
    return model.cfg.attention_dir == "causal" and all(
        (getattr(block.attn, "_attention_dir_override", None) or "causal") == "causal" for block in model.blocks
    )


def _can_restart(model: HookedTransformer) -> bool:
    """Whether a forward pass can restart mid-sequence from a key-value cache (causal attention, and positions
    TL's cache supports)."""
    return model.cfg.positional_embedding_type in ("standard", "rotary") and _causal(model)


@dataclasses.dataclass
class _CorruptedRun:
    """The unpatched corrupted run, from which patched copies restart.

    A patch in layer ``l`` at position ``p`` changes nothing before layer ``l``, nor (causal attention) before
    position ``p``. So a chunk of patches in layer ``l`` whose first position is ``p`` restarts from the corrupted
    residual stream ``resid_pre[l][:, p:]`` with the corrupted keys and values of positions ``< p`` as a frozen
    TransformerLens key-value cache, and the logits of positions ``< p`` are the corrupted ones. The result is the
    same as a full forward pass up to float rounding; models that cannot restart (:func:`_can_restart`: attention
    that looks ahead, positional embeddings other than "standard" and "rotary") take full forward passes.
    """

    tokens: Tensor
    logits: Tensor | None = None
    kv: object | None = None
    acts: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    """Corrupted activations by hook name: ``resid_pre`` of the restart layers and any others asked for."""

    @classmethod
    def build(
        cls, model: HookedTransformer, tokens: Tensor, layers: list[int], names=(), restart: bool = True
    ) -> "_CorruptedRun":
        """Run the corrupted tokens once, keeping the activations ``names``; with ``restart`` (where the model
        can), also the key-value cache and ``resid_pre`` of ``layers`` for :meth:`logits_with`."""
        if not (restart and _can_restart(model)):
            if not names:  # full forward passes need nothing from the corrupted run
                return cls(tokens)
            logits, cache = model.run_with_cache(tokens, names_filter=list(names))
            return cls(tokens, logits, acts={name: cache[name] for name in names})
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        kv = TransformerLensKeyValueCache.init_cache(model.cfg, tokens.device, len(tokens))
        wanted = sorted({get_act_name("resid_pre", layer) for layer in layers} | set(names))
        ones = torch.ones(tokens.shape, dtype=torch.int, device=tokens.device)
        logits, cache = model.run_with_cache(tokens, names_filter=wanted, past_kv_cache=kv, attention_mask=ones)
        return cls(tokens, logits, kv, {name: cache[name] for name in wanted})

    def logits_with(
        self, model: HookedTransformer, layer: int, start: int, copies: int, hooks: list, resid: Tensor | None = None
    ) -> Tensor:
        """Logits ``[copies * batch, pos, d_vocab_out]`` of ``copies`` repeats of the run with ``hooks`` attached.

        ``resid`` (``[copies * batch, pos - start, d_model]``) replaces the corrupted ``resid_pre`` of ``layer``
        from position ``start`` on; it needs the key-value cache unless ``layer`` is ``n_layers`` (the final
        norm and unembedding only).
        """
        if self.kv is None and resid is None:
            with model.hooks(fwd_hooks=hooks):
                return model(self.tokens.repeat(copies, 1))
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        batch, n_pos = self.tokens.shape
        if resid is None:
            resid = self.acts[get_act_name("resid_pre", layer)][:, start:].repeat(copies, 1, 1)  # (copy * batch, pos - start, d_model)
        kwargs = {}
        if start > 0 and layer < model.cfg.n_layers:  # past keys and values for the blocks left
            entries = [
                TransformerLensKeyValueCacheEntry(
                    e.past_keys[:, :start].repeat(copies, 1, 1, 1), e.past_values[:, :start].repeat(copies, 1, 1, 1),
                    frozen=True,
                )
                for e in self.kv.entries
            ]
            ones = torch.ones(copies * batch, n_pos, dtype=torch.int, device=resid.device)
            kwargs = dict(past_kv_cache=TransformerLensKeyValueCache(entries, ones[:, :start], frozen=True),
                          attention_mask=ones)
        with model.hooks(fwd_hooks=hooks):
            suffix = model(resid, start_at_layer=layer, **kwargs)
        if start == 0:
            return suffix
        return torch.cat([self.logits[:, :start].repeat(copies, 1, 1), suffix], dim=1)


_LOCAL_ACTS = {"z", "attn_out", "resid_mid", "mlp_out", "post", "resid_post"}
"""Activations computed after attention mixes positions: patching one at position ``p`` changes the layer's output
only at ``p``."""


def _constant_hook(value: Tensor) -> Callable:
    def hook(activation: Tensor, hook) -> Tensor:
        return value

    return hook


def _local_patch_logits(
    model: HookedTransformer, run: "_CorruptedRun", act: str, layer: int, clean: Tensor, mask: Tensor,
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
    if act == "z" and _updatable(model, layer):  # the block from its heads' output on, without TL's attention
        attn_out = _attention_output(model.blocks[layer].attn, value.reshape(copies * batch, 1, -1))
        out = _rest_of_block(model, layer, resid, attn_out)
        if last:
            out = model(out, start_at_layer=model.cfg.n_layers)  # final norm and unembedding
    else:
        hooks = [(name, _constant_hook(value.reshape(copies * batch, 1, *value.shape[2:])))]
        if act != "z":
            z = at_positions(run.acts[z_name])
            hooks.insert(0, (z_name, _constant_hook(z.reshape(copies * batch, 1, *z.shape[2:]))))
        with model.hooks(fwd_hooks=hooks):
            out = model(resid, start_at_layer=layer, stop_at_layer=None if last else layer + 1)
    if not last and _updatable(model, layer + 1):
        return _next_layer_logits(model, run, layer + 1, out.view(copies, batch, -1), positions)
    following = run.logits if last else run.acts[get_act_name("resid_pre", layer + 1)]
    patched = following.repeat(copies, 1, 1).view(copies, batch, n_pos, -1)
    patched[rows, :, positions] = out.view(copies, batch, -1)
    patched = patched.view(copies * batch, n_pos, -1)
    if last:
        return patched
    start = int(positions.min())
    return run.logits_with(model, layer + 1, start, copies, [], resid=patched[:, start:])


def _updatable(model: HookedTransformer, layer: int) -> bool:
    """Whether :func:`_next_layer_logits` reproduces ``layer``'s block: a plain pre-norm block with global causal
    multi-head attention, standard or rotary positions, and no extra normalisation, clipping or soft cap; and
    no hooks attached, which its shortcut would skip."""
    from transformer_lens.components import Attention, TransformerBlock

    cfg, block = model.cfg, model.blocks[layer]
    attn = getattr(block, "attn", None)
    return (
        not has_hooks(model)
        and type(block) is TransformerBlock
        and isinstance(attn, Attention)
        and attn.attn_type == "global"
        and (getattr(attn, "_attention_dir_override", None) or cfg.attention_dir) == "causal"
        and cfg.positional_embedding_type in ("standard", "rotary")
        and cfg.original_architecture not in _POST_NORM
        and not any(getattr(cfg, flag, False) for flag in _UNSUPPORTED_FLAGS)
        and getattr(cfg, "clip_qkv", None) is None
        and (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) <= 0
    )


_UNSUPPORTED_FLAGS = ("use_split_qkv_input", "use_attn_in", "use_qk_norm", "use_logn_attn", "use_attention_sinks",
                      "use_dynamic_ntk_rope", "load_in_4bit", "use_normalization_before_and_after")
_POST_NORM = ("OlmoeForCausalLM", "Olmo2ForCausalLM", "Olmo3ForCausalLM")
"""Architectures whose blocks normalise after attention or after the projections (TL special-cases them)."""


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
    """``resid_post`` of an :func:`_updatable` block from its input and its attention output (MLP included)."""
    cfg, block = model.cfg, model.blocks[layer]
    if cfg.attn_only:
        return resid_pre + attn_out
    if cfg.parallel_attn_mlp:
        return resid_pre + attn_out + block.apply_mlp(block.ln2(resid_pre))
    resid_mid = resid_pre + attn_out
    return resid_mid + block.apply_mlp(block.ln2(resid_mid))


def _next_layer_logits(
    model: HookedTransformer, run: "_CorruptedRun", layer: int, resid: Tensor, positions: Tensor
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


def _read_positions(metric: Metric, n_pos: int) -> Tensor | None:
    """The positions whose logits ``metric`` reads, as a mask ``[n_pos]``, if it declares them (``None``: all).

    The metrics of :mod:`mi_toolkit.metrics` declare them in a ``positions`` attribute (see
    :func:`mi_toolkit.metrics.reads`).
    """
    positions = getattr(metric, "positions", None)
    if positions is None:
        return None
    if isinstance(positions, Tensor):
        positions = positions.cpu()
    elif isinstance(positions, tuple):  # a tuple would index several axes
        positions = list(positions)
    read = torch.zeros(n_pos, dtype=torch.bool)
    try:
        read[positions] = True
    except IndexError as error:
        raise ValueError(f"the metric reads positions {positions!r}, outside a sequence of {n_pos}") from error
    if not read.any():
        raise ValueError(f"the metric declares that it reads no position ({positions!r})")
    return read


def _blind_patches(
    read: Tensor | None, per_layer: int, per_pos: int, causal: bool, own_position_only: bool
) -> Tensor:
    """Mask ``[per_layer]`` of the patches that change no position the metric reads (``read``; None: all read).

    A patch at position ``p`` changes only positions ``>= p`` in a ``causal`` model, and only ``p`` itself where
    ``own_position_only`` (a position-local patch in the last layer).
    """
    blind = torch.zeros(per_layer, dtype=torch.bool)
    if read is None:
        return blind
    position = torch.arange(per_layer) // per_pos
    if causal:
        blind |= position > int(read.nonzero().max())
    if own_position_only:
        blind |= ~read[position]
    return blind


@torch.no_grad()
def activation_patch(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "_batch _pos"],  # checked against clean_tokens with a clear error
    metric: Metric,
    target: str,
    *,
    layers: Sequence[int] | None = None,
    chunk_size: int | None = None,
    max_rows: int = 1024,
    progress: bool = False,
) -> Float[Tensor, "layer *index"]:
    """Patch each component of ``target`` from the clean run into the corrupted run; return the metric of each.

    Many patched copies of the corrupted batch run in one forward pass; each pass restarts from the corrupted run
    at the patched layer and at the first patched position (see :class:`_CorruptedRun`), so a per-position sweep
    costs far less than one full forward pass per patch.

    Args:
        model: any ``HookedTransformer``.
        clean_tokens: input whose activations are patched in.
        corrupted_tokens: input that is run; same shape as ``clean_tokens``.
        metric: patched logits ``[batch, pos, d_vocab_out]`` -> scalar (see :mod:`mi_toolkit.metrics`). It is
            called once per patch on that patch's logits (the corrupted batch size). If it declares the positions
            it reads (``metric.positions``, as the metrics of :mod:`mi_toolkit.metrics` do), patches that cannot
            change them are not run: they get the metric of the corrupted run.
        target: a name from :data:`TARGETS` (the module docstring lists shapes).
        layers: the layers to patch (default all); the result's first axis follows this list.
        chunk_size: patched copies of the batch per forward pass. Default for per-position targets: the patches
            of a quarter of the positions, or fewer to keep about 256 rows per pass (smaller chunks restart later
            in the sequence but take more passes); all of a layer's patches for other targets and for the last
            layer's position-local targets; always at most ``max_rows // batch``.
        max_rows: bounds memory when ``chunk_size`` is None: rows (copies x batch) per forward pass.
        progress: show a progress bar over forward passes.

    Returns:
        The metric of the corrupted run with each single component patched, ``[len(layers), *index]``.

    Raises:
        ValueError: mismatched or out-of-vocabulary tokens, an unknown target, a layer out of range.
    """
    layers = _check_inputs(model, clean_tokens, corrupted_tokens, [target], layers)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    spec = TARGETS[target]
    batch, n_pos = clean_tokens.shape
    by_position = spec.index[0] == "pos"  # index order is (pos, ...): a chunk's first patch has its lowest pos
    read = _read_positions(metric, n_pos) if by_position else None
    names = [get_act_name(spec.act, layer) for layer in layers]
    clean_cache = run_until(model, clean_tokens, names)
    clean = [clean_cache[name] for name in names]
    can_restart = _can_restart(model)
    last = model.cfg.n_layers - 1
    # Position-local patches run their own layer on one position (needs a key-value cache unless it is the last).
    local = {layer for layer in layers
             if spec.act in _LOCAL_ACTS and spec.index[0] == "pos" and (can_restart or layer == last)}
    kept = {get_act_name(act, layer) for layer in local for act in (spec.act, "z", "resid_pre")}
    kept |= {get_act_name("resid_pre", layer + 1) for layer in local if layer < last}
    rotary = model.cfg.positional_embedding_type == "rotary"
    kept |= {get_act_name(act, layer + 1) for layer in local if layer < last and _updatable(model, layer + 1)
             for act in ("rot_q" if rotary else "q", "rot_k" if rotary else "k", "v", "attn_scores")}
    # Restarts from a key-value cache serve every pass but the last layer's local ones and the next-layer updates
    # that end at the last layer.
    restart = any(layer not in local or (layer < last and (layer + 1 < last or not _updatable(model, layer + 1)))
                  for layer in layers)
    run = _CorruptedRun.build(model, corrupted_tokens, layers, sorted(kept), restart)
    sizes = _index_sizes(spec, clean[0].shape)
    per_layer = math.prod(sizes)
    per_pos = per_layer // n_pos if by_position else per_layer
    if chunk_size is None:
        # Restarting passes: the patches of a quarter of the positions, at most about 256 rows (copies x batch).
        # Bigger passes restart earlier than their later patches need; on 2 CPU cores 256 rows were the fastest.
        wanted = min(per_pos * math.ceil(n_pos / 4), max(per_pos, 256 // batch)) if by_position else per_layer
        # The last layer's position-local patches run one position each: no restart position to keep late.
        chunk_by_layer = [max(1, min(per_layer if layer == last and layer in local else wanted, max_rows // batch))
                          for layer in layers]
    else:
        chunk_by_layer = [chunk_size] * len(layers)
    mask_shape = _mask_shape(spec, clean[0].shape)
    results = torch.empty(len(layers), per_layer, device=clean[0].device)  # filled without a sync per patch
    blind = [_blind_patches(read, per_layer, per_pos, _causal(model), layer == last and layer in local)
             for layer in layers]
    chunks = [(i, index[s : s + chunk]) for i, chunk in enumerate(chunk_by_layer)
              for index in [torch.arange(per_layer)[~blind[i]]] for s in range(0, len(index), chunk)]
    unchanged = [(i, torch.arange(per_layer)[blind[i]]) for i in range(len(layers))]
    if any(len(index) for _, index in unchanged):
        base = metric(run.logits if run.logits is not None else model(corrupted_tokens))
        for i, index in unchanged:
            results[i, index] = base.to(results.dtype)
    for i, index in tqdm(chunks, disable=not progress, desc=f"patching {target}", dynamic_ncols=True):
        copies = len(index)
        onehot = torch.zeros(copies, per_layer, dtype=torch.bool)
        onehot[torch.arange(copies), index] = True  # copy c patches index[c]
        mask = onehot.reshape(copies, *mask_shape).to(clean[i].device)  # (copy, 1, *axes)
        if layers[i] in local:
            positions = (index // per_pos).to(clean[i].device)
            logits = _local_patch_logits(model, run, spec.act, layers[i], clean[i], mask, positions)
        else:
            first_pos = int(index[0]) // per_pos if by_position and run.kv is not None else 0
            # From the first patched position on (the pos axis is the first after batch for per-position targets).
            hook = _patch_hook(clean[i][:, first_pos:], mask[:, :, first_pos:], copies)
            logits = run.logits_with(model, layers[i], first_pos, copies, [(names[i], hook)])
        for c in range(copies):
            results[i, index[c]] = metric(logits[c * batch : (c + 1) * batch])
    return results.view(len(layers), *sizes)


def attribution_patch_every(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "_batch _pos"],  # checked against clean_tokens with a clear error
    metric: Metric,
    targets: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """Attribution patching of several targets from one clean forward and one corrupted forward + backward.

    Args:
        model: any ``HookedTransformer``.
        clean_tokens: input whose activations would be patched in.
        corrupted_tokens: input that is run; same shape as ``clean_tokens``.
        metric: logits -> scalar, differentiable.
        targets: names from :data:`TARGETS`; default every target the model has (:func:`valid_targets`).
        layers: the layers to estimate (default all).

    Returns:
        ``{target: estimate}``, each shaped as :func:`activation_patch` returns it.
    """
    targets = valid_targets(model) if targets is None else list(targets)
    layers = _check_inputs(model, clean_tokens, corrupted_tokens, targets, layers)
    names = sorted({get_act_name(TARGETS[t].act, layer) for t in targets for layer in layers})
    with torch.no_grad():
        clean_cache = run_until(model, clean_tokens, names)
    corrupted: dict[str, Tensor] = {}

    def leaf_input(embedding: Tensor, hook) -> Tensor:
        # Everything downstream then requires grad, even if the model's parameters do not.
        return embedding.detach().requires_grad_(True)

    def save(activation: Tensor, hook) -> None:
        corrupted[hook.name] = activation

    with torch.enable_grad(), model.hooks(fwd_hooks=[("hook_embed", leaf_input)] + [(n, save) for n in names]):
        value = metric(model(corrupted_tokens))
        grads = torch.autograd.grad(value, [corrupted[name] for name in names], allow_unused=True)
    base = value.detach()
    deltas = {}
    for name, grad in zip(names, grads):
        grad = torch.zeros_like(corrupted[name]) if grad is None else grad
        deltas[name] = grad * (clean_cache[name] - corrupted[name].detach())  # (batch, *axes)
    out = {}
    for target in targets:
        spec = TARGETS[target]
        summed = [i + 1 for i, axis in enumerate(spec.axes) if axis not in spec.index]
        out[target] = torch.stack(
            [base + deltas[get_act_name(spec.act, layer)].sum(dim=[0, *summed]) for layer in layers]
        )
    return out


def attribution_patch(
    model: HookedTransformer,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "_batch _pos"],  # checked against clean_tokens with a clear error
    metric: Metric,
    target: str,
    *,
    layers: Sequence[int] | None = None,
) -> Float[Tensor, "layer *index"]:
    """First-order estimate of :func:`activation_patch` (same arguments, same shape).

    ``estimate = metric(corrupted) + sum(grad . (clean - corrupted))`` over the patched slice, with the gradient
    of ``metric`` at the corrupted run. Exact where the metric is linear in the activation (e.g. a logit
    difference and the last layer's ``attn_out`` of an attention-only model without LayerNorm).

    Args:
        model: any ``HookedTransformer``.
        clean_tokens: input whose activations would be patched in.
        corrupted_tokens: input that is run; same shape as ``clean_tokens``.
        metric: logits -> scalar, differentiable.
        target: a name from :data:`TARGETS`.
        layers: the layers to estimate (default all).

    Returns:
        The estimated patched metric, ``[len(layers), *index]``.
    """
    return attribution_patch_every(model, clean_tokens, corrupted_tokens, metric, [target], layers=layers)[target]


@dataclasses.dataclass(frozen=True)
class PatchingComparison:
    """How well attribution patching approximates activation patching."""

    correlation: float
    """Pearson correlation over all components."""
    max_abs_error: float
    mean_abs_error: float
    activation: Tensor
    """The activation-patching result (flattened)."""
    attribution: Tensor
    """The attribution-patching estimate (flattened)."""


def compare_patching(activation: Tensor, attribution: Tensor) -> PatchingComparison:
    """Compare activation patching with its attribution estimate (same shape).

    Args:
        activation: result of :func:`activation_patch`.
        attribution: result of :func:`attribution_patch` for the same target.

    Returns:
        Correlation and errors; draw it with ``mi_toolkit.plot.attribution_vs_activation``.
    """
    if activation.shape != attribution.shape:
        raise ValueError(f"shapes differ: {tuple(activation.shape)} vs {tuple(attribution.shape)}")
    x = activation.detach().flatten().double().cpu()
    y = attribution.detach().flatten().double().cpu()
    correlation = torch.corrcoef(torch.stack([x, y]))[0, 1].item() if len(x) > 1 else float("nan")
    error = (x - y).abs()
    return PatchingComparison(correlation, error.max().item(), error.mean().item(), x.float(), y.float())
