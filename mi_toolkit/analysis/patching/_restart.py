"""Engine (private): the corrupted run that patched passes restart from, through TransformerLens's key-value cache,
and the hooks that write clean values into many patched copies of a batch at once."""

import contextlib
import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from mi_toolkit.core.architectures import supports
from mi_toolkit.core.tl import (
    HookedTransformer,
    TransformerLensKeyValueCache,
    TransformerLensKeyValueCacheEntry,
    get_act_name,
)

__all__ = ["CorruptedRun", "constant_hook", "patch_hook"]


def patch_hook(clean: Tensor, mask: Tensor, copies: int, repeats: int = 1) -> Callable:
    """A hook writing ``clean`` into each copy of the repeated batch where ``mask[copy]`` is set.

    ``mask`` has shape ``[copies, 1, *axes]`` (1 on broadcast axes); the activation is ``[copies * batch, *axes]``.
    ``clean`` is ``[batch / repeats, *axes]``: each of its rows serves ``repeats`` consecutive rows of the batch
    (causal tracing's noise samples of one prompt), without copying it.
    """

    def hook(activation: Tensor, hook) -> Tensor:
        shape = activation.shape
        activation = activation.view(copies, shape[0] // (copies * repeats), repeats, *shape[1:])
        return torch.where(mask.unsqueeze(2), clean.unsqueeze(1), activation).view(shape)

    return hook


def constant_hook(value: Tensor) -> Callable:
    def hook(activation: Tensor, hook) -> Tensor:
        return value

    return hook


@dataclasses.dataclass
class CorruptedRun:
    """The unpatched corrupted run, from which patched copies restart.

    A patch in layer ``l`` at position ``p`` changes nothing before layer ``l``, nor (causal attention) before
    position ``p``. So a chunk of patches in layer ``l`` whose first position is ``p`` restarts from the corrupted
    residual stream ``resid_pre[l][:, p:]`` with the corrupted keys and values of positions ``< p`` as a frozen
    TransformerLens key-value cache, and the logits of positions ``< p`` are the corrupted ones. The result is the
    same as a full forward pass up to float rounding; models that cannot restart (the ``kv_restart`` fast path of
    :mod:`mi_toolkit.core.architectures`) take full forward passes.
    """

    tokens: Tensor
    logits: Tensor | None = None
    kv: object | None = None
    acts: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    """Corrupted activations by hook name: ``resid_pre`` of the restart layers and any others asked for."""

    @classmethod
    def build(
        cls, model: HookedTransformer, tokens: Tensor, layers: list[int], names=(), restart: bool = True
    ) -> "CorruptedRun":
        """Run the corrupted tokens once, keeping the activations ``names``; with ``restart`` (where the model
        can), also the key-value cache and ``resid_pre`` of ``layers`` for :meth:`logits_with`."""
        if not (restart and supports(model, "kv_restart")):
            if not names:  # full forward passes need nothing from the corrupted run
                return cls(tokens)
            logits, cache = model.run_with_cache(tokens, names_filter=list(names))
            return cls(tokens, logits, acts={name: cache[name] for name in names})
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
            with _attached(model, hooks):
                return model(self.tokens.repeat(copies, 1))
        batch, n_pos = self.tokens.shape
        if resid is None:
            # (copy * batch, pos - start, d_model)
            resid = self.acts[get_act_name("resid_pre", layer)][:, start:].repeat(copies, 1, 1)
        kwargs = {}
        if layer < model.cfg.n_layers:  # past keys and values for the blocks left
            kwargs = self._past(copies, start, torch.ones(copies * batch, n_pos, dtype=torch.int, device=resid.device))
        with _attached(model, hooks):
            suffix = model(resid, start_at_layer=layer, **kwargs)
        if start == 0:
            return suffix
        return torch.cat([self.logits[:, :start].repeat(copies, 1, 1), suffix], dim=1)

    def final_logits(self, model: HookedTransformer, start: int, entering: dict[int, Tensor]) -> Tensor:
        """Last-position logits of restarted copies that enter the model at different layers, in one pass.

        ``entering[layer]`` is ``[copies * batch, pos - start, d_model]``: the residual stream before ``layer``
        (``n_layers``: after the last block) from position ``start`` on, of copies that restart there, as
        :meth:`logits_with` restarts them without hooks. Each block runs once, on the copies that have entered by
        then; the last block runs on the last position alone, its keys and values at earlier positions taken from
        the key-value cache (before ``start``) and computed from the changed residual stream (from ``start``), since
        the attention output, MLP and unembedding of the other positions are never read (the ``final_restart`` fast
        path of :mod:`mi_toolkit.core.architectures`; other models take one :meth:`logits_with` per layer).

        Returns:
            Logits ``[rows, d_vocab_out]``, the copies of ``entering`` in increasing layer order.
        """
        n_layers, layers = model.cfg.n_layers, sorted(entering)
        batch, n_pos = self.tokens.shape
        if self.kv is None or not supports(model, "final_restart"):
            return torch.cat([self.logits_with(model, layer, start, len(entering[layer]) // batch, [],
                                               entering[layer])[:, -1] for layer in layers])
        resid = None
        ones = torch.ones(sum(len(r) for r in entering.values()), n_pos, dtype=torch.int, device=self.tokens.device)
        for layer in range(layers[0], n_layers):
            if layer in entering:
                resid = entering[layer] if resid is None else torch.cat([resid, entering[layer]])
            past = self._frozen(layer, len(resid) // batch, start)
            block = model.blocks[layer]
            if layer < n_layers - 1:
                entry = TransformerLensKeyValueCacheEntry(*past, frozen=True) if start else None
                resid = block(resid, past_kv_cache_entry=entry, attention_mask=ones[: len(resid)] if start else None)
                continue
            x = block.ln1(resid[:, :-1])
            _, keys, values = block.attn.calculate_qkv_matrices(x, x, x)
            entry = TransformerLensKeyValueCacheEntry(torch.cat([past[0], keys], 1), torch.cat([past[1], values], 1),
                                                      frozen=True)
            resid = block(resid[:, -1:], past_kv_cache_entry=entry, attention_mask=ones[: len(resid)])
        if n_layers in entering:
            tail = entering[n_layers][:, -1:]
            resid = tail if resid is None else torch.cat([resid, tail])
        return model(resid, start_at_layer=n_layers)[:, -1]

    def _frozen(self, layer: int, copies: int, start: int) -> tuple[Tensor, Tensor]:
        """The corrupted keys and values of ``layer`` before position ``start``, repeated for ``copies`` copies."""
        entry = self.kv.entries[layer]
        return (entry.past_keys[:, :start].repeat(copies, 1, 1, 1),
                entry.past_values[:, :start].repeat(copies, 1, 1, 1))

    def _past(self, copies: int, start: int, ones: Tensor) -> dict:
        """``model`` keyword arguments for a restart at position ``start``: the frozen keys and values before it."""
        if start == 0:
            return {}
        entries = [TransformerLensKeyValueCacheEntry(*self._frozen(layer, copies, start), frozen=True)
                   for layer in range(len(self.kv.entries))]
        return dict(past_kv_cache=TransformerLensKeyValueCache(entries, ones[:, :start], frozen=True),
                    attention_mask=ones)


def _attached(model: HookedTransformer, hooks: list):
    """``model.hooks(hooks)``, or nothing to attach (resetting every hook point on exit costs a forward pass's
    overhead on a small model)."""
    return model.hooks(fwd_hooks=hooks) if hooks else contextlib.nullcontext()
