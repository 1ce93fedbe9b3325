"""Engine (private): the plan of an activation-patching sweep. Which patches run in which forward pass, which
corrupted activations to keep, which patches cannot change what the metric reads, and how each pass's logits are
made (a restart from the key-value cache, or a position-local patch)."""

import dataclasses
import math

import torch
from torch import Tensor

from mi_toolkit.analysis.patching._restart import CorruptedRun, patch_hook
from mi_toolkit.analysis.patching._update import LOCAL_ACTS, local_patch_logits
from mi_toolkit.analysis.patching.targets import index_sizes, mask_shape
from mi_toolkit.core.architectures import is_causal, supports
from mi_toolkit.core.tl import HookedTransformer, get_act_name
from mi_toolkit.core.types import Metric

__all__ = ["Sweep", "blind_patches", "read_positions"]


def read_positions(metric: Metric, n_pos: int) -> Tensor | None:
    """The positions whose logits ``metric`` reads, as a mask ``[n_pos]``, if it declares them (``None``: all).

    The metrics of :mod:`mi_toolkit.analysis.metrics` declare them in a ``positions`` attribute (see
    :func:`mi_toolkit.analysis.metrics.reads`).
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


def blind_patches(
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


@dataclasses.dataclass
class Sweep:
    """An activation-patching sweep of one target over ``layers``, planned before any corrupted forward pass."""

    model: HookedTransformer
    spec: object
    """The target's :class:`~mi_toolkit.analysis.patching.targets._Target`."""
    layers: list[int]
    batch: int
    n_pos: int
    act_shape: tuple[int, ...]
    """Shape of one layer's activation of the target on the clean batch."""
    local: set[int]
    """Layers whose patches are position-local and run that layer on one position."""
    kept: list[str]
    """Corrupted activations the passes read."""
    restart: bool
    """Whether any pass restarts from the key-value cache."""
    chunks: list[tuple[int, Tensor]]
    """``(layer index, patch indices)`` of each forward pass."""
    blind: list[Tensor]
    """Per layer, the patches that cannot change what the metric reads."""

    @property
    def sizes(self) -> list[int]:
        return index_sizes(self.spec, self.act_shape)

    @property
    def per_layer(self) -> int:
        return math.prod(self.sizes)

    @property
    def per_pos(self) -> int:
        return self.per_layer // self.n_pos if self.spec.index[0] == "pos" else self.per_layer

    @classmethod
    def plan(cls, model: HookedTransformer, spec, layers: list[int], act_shape: tuple[int, ...], n_pos: int,
             metric: Metric, chunk_size: int | None, max_rows: int) -> "Sweep":
        """Plan the sweep; ``act_shape`` is the target's clean activation shape, ``n_pos`` the sequence length."""
        batch = act_shape[0]
        by_position = spec.index[0] == "pos"  # index order is (pos, ...): a chunk's first patch has its lowest pos
        last = model.cfg.n_layers - 1
        can_restart = supports(model, "kv_restart")
        # Position-local patches run their own layer on one position (needs a key-value cache unless it is the last).
        local = {layer for layer in layers if spec.act in LOCAL_ACTS and by_position and (can_restart or layer == last)}
        updatable = {layer: layer < last and supports(model, "attention_update", layer + 1) for layer in local}
        kept = {get_act_name(act, layer) for layer in local for act in (spec.act, "z", "resid_pre")}
        kept |= {get_act_name("resid_pre", layer + 1) for layer in local if layer < last}
        rotary = model.cfg.positional_embedding_type == "rotary"
        kept |= {get_act_name(act, layer + 1) for layer in local if updatable[layer]
                 for act in ("rot_q" if rotary else "q", "rot_k" if rotary else "k", "v", "attn_scores")}
        # Restarts from a key-value cache serve every pass but the last layer's local ones and the next-layer
        # updates that end at the last layer.
        restart = any(layer not in local or (layer < last and (layer + 1 < last or not updatable[layer]))
                      for layer in layers)
        sweep = cls(model, spec, layers, batch, n_pos, tuple(act_shape), local, sorted(kept), restart, [], [])
        per_layer, per_pos = sweep.per_layer, sweep.per_pos
        if chunk_size is None:
            # Restarting passes: the patches of a quarter of the positions, at most about 256 rows (copies x batch).
            # Bigger passes restart earlier than their later patches need; on 2 CPU cores 256 rows were the fastest.
            wanted = min(per_pos * math.ceil(n_pos / 4), max(per_pos, 256 // batch)) if by_position else per_layer
            # The last layer's position-local patches run one position each: no restart position to keep late.
            chunk_by_layer = [max(1, min(per_layer if layer == last and layer in local else wanted, max_rows // batch))
                              for layer in layers]
        else:
            chunk_by_layer = [chunk_size] * len(layers)
        read = read_positions(metric, n_pos) if by_position else None
        sweep.blind = [blind_patches(read, per_layer, per_pos, is_causal(model), layer == last and layer in local)
                       for layer in layers]
        sweep.chunks = [(i, index[s : s + chunk]) for i, chunk in enumerate(chunk_by_layer)
                        for index in [torch.arange(per_layer)[~sweep.blind[i]]] for s in range(0, len(index), chunk)]
        return sweep

    def logits(self, run: CorruptedRun, i: int, index: Tensor, clean: Tensor) -> Tensor:
        """Logits ``[copies * batch, pos, d_vocab_out]`` of one pass: copy ``c`` patches ``index[c]`` of layer
        ``layers[i]`` with its ``clean`` value."""
        model, spec, layer, per_pos = self.model, self.spec, self.layers[i], self.per_pos
        copies = len(index)
        onehot = torch.zeros(copies, self.per_layer, dtype=torch.bool)
        onehot[torch.arange(copies), index] = True  # copy c patches index[c]
        mask = onehot.reshape(copies, *mask_shape(spec, self.act_shape)).to(clean.device)  # (copy, 1, *axes)
        if layer in self.local:
            positions = (index // per_pos).to(clean.device)
            return local_patch_logits(model, run, spec.act, layer, clean, mask, positions)
        first_pos = int(index[0]) // per_pos if spec.index[0] == "pos" and run.kv is not None else 0
        # From the first patched position on (the pos axis is the first after batch for per-position targets).
        hook = patch_hook(clean[:, first_pos:], mask[:, :, first_pos:], copies)
        return run.logits_with(model, layer, first_pos, copies, [(get_act_name(spec.act, layer), hook)])
