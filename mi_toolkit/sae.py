"""Sparse autoencoders (SAEs): take a hook point's activations out of superposition into sparse features.

``f = act(W_enc^T (x - b_dec) + b_enc)``, ``x_hat = W_dec^T f + b_dec``, with ``act`` either ReLU (trained on
``||x - x_hat||^2 + l1 * ||f||_1``) or TopK (keep the k largest pre-activations, trained on the squared error
alone). Decoder rows are kept at unit norm so the L1 penalty cannot be dodged by shrinking ``f``; features that
stop firing are resampled towards badly reconstructed inputs (Bricken et al. 2023). Train on a tensor of
activations or straight from a model with :class:`ActivationStream`; save and load as safetensors + JSON.

>>> x = torch.randn(2048, 8)
>>> sae = train_sae(x, SAEConfig(d_in=8, d_sae=16, activation="topk", k=4, steps=20), progress=False)
>>> sae.encode(x[:3]).shape, sae(x[:3]).shape
(torch.Size([3, 16]), torch.Size([3, 8]))
"""

import dataclasses
import difflib
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from mi_toolkit._tl import HookedTransformer
from mi_toolkit.checkpoints import CheckpointError, load_json, load_tensors, save_json, save_tensors

__all__ = ["SAE", "ActivationStream", "SAEConfig", "apply_at_positions", "check_hook_name", "collect_activations",
           "select_positions", "train_sae"]

Positions = int | slice | None
"""Which sequence positions an SAE reads: one index (e.g. -1, the last), a slice, or None for all."""


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Architecture and training settings of a sparse autoencoder."""

    d_in: int
    """Size of the activations the SAE reads (trailing dimensions of the hook's activation, flattened)."""
    d_sae: int
    """Number of features (dictionary size)."""
    activation: Literal["relu", "topk"] = "relu"
    """``"relu"``: ReLU with an L1 penalty; ``"topk"``: keep the ``k`` largest pre-activations (ReLU-ed)."""
    l1_coefficient: float = 1.0
    """ReLU only: weight of ``||f||_1`` against the squared error ``||x - x_hat||^2`` (both per input, on normalised
    activations). Representing a feature pays when its activation exceeds about this value."""
    k: int = 16
    """Active features per input (TopK only)."""
    lr: float = 3e-3
    """Adam learning rate; constant, then decayed linearly to zero over the last ``lr_decay_fraction`` of steps."""
    lr_decay_fraction: float = 0.2
    """Fraction of training over which the learning rate decays to zero."""
    batch_size: int = 1024
    """Activations per optimiser step."""
    steps: int = 3000
    """Optimiser steps."""
    unit_norm_decoder: bool = True
    """Keep every row of ``W_dec`` at unit norm (gradients projected, rows renormalised after each step)."""
    normalize_activations: bool = True
    """Train on activations scaled so that ``E||x||^2 = d_in``; the scale is folded back into the biases after
    training, so the returned SAE works on raw activations and its decoder rows keep unit norm."""
    resample_every: int = 500
    """Every this many steps, features that have not fired since the last check are re-initialised towards
    inputs with a large reconstruction error (never in the last ``resample_every`` steps); 0 disables it."""
    buffer_size: int = 65536
    """Activations held (and shuffled) at once when training from an :class:`ActivationStream`."""
    seed: int = 0
    """Seed of the initialisation, the batch order and the resampling."""

    def __post_init__(self):
        if self.d_in < 1 or self.d_sae < 1:
            raise ValueError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        if self.activation not in ("relu", "topk"):
            raise ValueError(f"activation must be 'relu' or 'topk', got {self.activation!r}")
        if not self.l1_coefficient > 0:
            raise ValueError(f"l1_coefficient must be positive, got {self.l1_coefficient}")
        if self.k < 1 or (self.activation == "topk" and self.k > self.d_sae):
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        if not self.lr > 0 or not 0 <= self.lr_decay_fraction <= 1:
            raise ValueError(f"need lr > 0 and lr_decay_fraction in [0, 1], got {self.lr}, {self.lr_decay_fraction}")
        if self.batch_size < 1 or self.steps < 0 or self.resample_every < 0 or self.buffer_size < self.batch_size:
            raise ValueError("need batch_size >= 1, steps >= 0, resample_every >= 0 and buffer_size >= batch_size")


class SAE(nn.Module):
    """A sparse autoencoder; ``forward`` returns the reconstruction, ``encode`` the feature activations."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        W_dec = F.normalize(torch.randn(cfg.d_sae, cfg.d_in, generator=generator), dim=-1)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())  # tied initialisation: each feature starts reading its direction
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))

    def pre_activations(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """``W_enc^T (x - b_dec) + b_enc``."""
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations (non-negative; at most ``k`` non-zero for TopK)."""
        if self.cfg.activation == "relu":
            return F.relu(self.pre_activations(x))
        values, indices = self.topk(x)
        return torch.zeros(*x.shape[:-1], self.cfg.d_sae, dtype=values.dtype, device=x.device).scatter(
            -1, indices, values
        )

    def topk(self, x: Float[Tensor, "... d_in"]) -> tuple[Float[Tensor, "... k"], Int[Tensor, "... k"]]:
        """TopK only: the ``k`` largest (ReLU-ed) feature activations of each input and their feature indices."""
        values, indices = self.pre_activations(x).topk(self.cfg.k, dim=-1)
        return F.relu(values), indices

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction ``W_dec^T f + b_dec``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction of ``x`` through the features."""
        if self.cfg.activation == "relu":
            return self.decode(self.encode(x))
        values, indices = self.topk(x)
        return self._decode_topk(values, indices)

    def _decode_topk(self, values: Tensor, indices: Tensor) -> Tensor:
        # Sum k decoder rows per input instead of a dense (d_sae, d_in) matmul: ~2x faster training on CPU.
        flat_values, flat_indices = values.reshape(-1, self.cfg.k), indices.reshape(-1, self.cfg.k)
        x_hat = F.embedding_bag(flat_indices, self.W_dec, per_sample_weights=flat_values, mode="sum")
        return x_hat.view(*values.shape[:-1], self.cfg.d_in) + self.b_dec

    def save(self, directory: str | Path) -> Path:
        """Write ``sae.safetensors`` (weights) and ``config.json`` into ``directory`` (created if missing).

        Returns:
            The directory.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors(directory / "sae.safetensors", dict(self.named_parameters()))
        save_json(directory / "config.json", dataclasses.asdict(self.cfg))
        return directory

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device = "cpu") -> "SAE":
        """Load an SAE written by :meth:`save`, checking the weights against the config.

        Raises:
            CheckpointError: (a ``ValueError``) a file is missing or corrupt, or the weights do not fit the config.
        """
        directory = Path(directory)
        fields = load_json(directory / "config.json")
        try:
            cfg = SAEConfig(**fields)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{directory / 'config.json'} is not a valid SAE config: {error}") from error
        tensors, _ = load_tensors(directory / "sae.safetensors")
        sae = cls(cfg)
        expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
        found = {name: tuple(t.shape) for name, t in tensors.items()}
        if found != expected:
            raise CheckpointError(
                f"{directory / 'sae.safetensors'} holds {found}, but config.json describes {expected}"
            )
        sae.load_state_dict(tensors)
        return sae.to(device)


@dataclasses.dataclass(frozen=True)
class ActivationStream:
    """Activations of ``model`` at ``hook_name``, computed batch by batch from token sequences.

    Iterating gives one ``[n, d_in]`` tensor per token batch: the activation at ``positions`` of every sequence,
    its trailing dimensions flattened (e.g. ``hook_z``'s ``head_index d_head``). The model runs only until the hook.
    """

    model: HookedTransformer = dataclasses.field(repr=False)
    """The model to read from (run under ``torch.no_grad``)."""
    hook_name: str
    """A hook point of ``model``, e.g. ``"blocks.0.mlp.hook_post"``."""
    tokens: Int[Tensor, "batch pos"] | Sequence[Int[Tensor, "batch pos"]] = dataclasses.field(repr=False)
    """Token sequences, or a re-iterable collection of token batches (a list, a DataLoader)."""
    positions: Positions = None
    """Which positions to read; None for all."""
    batch_size: int = 256
    """Sequences per forward pass when ``tokens`` is one tensor."""

    def __post_init__(self):
        check_hook_name(self.model, self.hook_name)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")

    def token_batches(self) -> Iterator[Int[Tensor, "batch pos"]]:
        """One pass over the token batches."""
        if isinstance(self.tokens, Tensor):
            yield from self.tokens.split(self.batch_size)
        else:
            yield from self.tokens

    def activations(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "n d_in"]:
        """The selected activations of one token batch."""
        captured = []

        def capture(activation: Tensor, hook) -> None:
            captured.append(activation)
            raise _StopForward  # nothing after the hook is needed

        with torch.no_grad(), self.model.hooks(fwd_hooks=[(self.hook_name, capture)]):
            try:
                self.model(tokens.to(self.model.cfg.device), return_type=None)
            except _StopForward:
                pass
        return select_positions(captured[0], self.positions)

    @property
    def d_in(self) -> int:
        """Size of one activation vector (computed from the first sequence)."""
        return self.activations(next(self.token_batches())[:1]).shape[-1]

    def __iter__(self) -> Iterator[Float[Tensor, "n d_in"]]:
        return map(self.activations, self.token_batches())


class _StopForward(Exception):
    pass


def check_hook_name(model: HookedTransformer, hook_name: str) -> None:
    """Raise a ``ValueError`` naming the closest hook points when ``hook_name`` is not one of ``model``'s."""
    if hook_name not in model.hook_dict:
        close = difflib.get_close_matches(hook_name, list(model.hook_dict), n=5, cutoff=0.5)
        hint = f"; close matches: {close}" if close else ""
        raise ValueError(f"model has no hook point {hook_name!r}{hint}")


def select_positions(activation: Float[Tensor, "batch pos *rest"], positions: Positions) -> Float[Tensor, "n d_in"]:
    """The activations at ``positions`` as rows, trailing dimensions flattened."""
    if positions is None:
        positions = slice(None)
    selected = activation[:, positions]
    d_in = math.prod(activation.shape[2:])
    return selected.reshape(-1, d_in)


def apply_at_positions(
    activation: Float[Tensor, "batch pos *rest"],
    positions: Positions,
    fn: Callable[[Float[Tensor, "n d_in"]], Float[Tensor, "n d_in"]],
) -> Float[Tensor, "batch pos *rest"]:
    """A copy of ``activation`` with ``fn`` applied to the rows :func:`select_positions` would give."""
    if positions is None:
        positions = slice(None)
    out = activation.clone()
    selected = out[:, positions]
    out[:, positions] = fn(select_positions(activation, positions)).view(selected.shape).to(out.dtype)
    return out


def collect_activations(
    model: HookedTransformer,
    hook_name: str,
    tokens: Int[Tensor, "batch pos"] | Sequence[Int[Tensor, "batch pos"]],
    *,
    positions: Positions = None,
    batch_size: int = 256,
) -> Float[Tensor, "n d_in"]:
    """All activations of ``model`` at ``hook_name`` over ``tokens`` (see :class:`ActivationStream`), as rows."""
    return torch.cat(list(ActivationStream(model, hook_name, tokens, positions, batch_size)))


def _cycle(stream: ActivationStream) -> Iterator[Float[Tensor, "n d_in"]]:
    while True:
        yield from stream


class _Buffer:
    """Shuffled batches of activations; a stream larger than the buffer is refilled half a buffer at a time."""

    def __init__(self, source: Tensor | ActivationStream, cfg: SAEConfig, generator: torch.Generator):
        self.batch_size, self.generator = cfg.batch_size, generator
        self.chunks: Iterator[Tensor] | None = None
        if isinstance(source, Tensor):
            self.data = source.detach().reshape(-1, source.shape[-1])
        else:
            rows, first_pass = [], iter(source)
            for chunk in first_pass:
                rows.append(chunk)
                if sum(len(r) for r in rows) >= cfg.buffer_size:
                    self.chunks = itertools.chain(first_pass, _cycle(source))
                    break
            # else the whole stream fits in the buffer: keep it and reuse it every epoch
            self.data = torch.cat(rows)[: cfg.buffer_size]
        self._shuffle()

    def _shuffle(self) -> None:
        self.order = torch.randperm(len(self.data), generator=self.generator).to(self.data.device)
        self.served = 0

    def next_batch(self) -> Float[Tensor, "batch d_in"]:
        if self.served + self.batch_size > len(self.order):
            if self.chunks is not None:  # replace the used half with fresh activations
                half = len(self.data) // 2
                fresh = []
                while sum(len(r) for r in fresh) < half:
                    fresh.append(next(self.chunks))
                self.data = torch.cat([self.data[self.order[half:]], torch.cat(fresh)[:half]])
            self._shuffle()
        batch = self.data[self.order[self.served : self.served + self.batch_size]]
        self.served += self.batch_size
        return batch


def train_sae(
    source: Float[Tensor, "n d_in"] | ActivationStream | tuple,
    cfg: SAEConfig,
    *,
    progress: bool = True,
    callback: Callable[[int, SAE], None] | None = None,
) -> SAE:
    """Train a sparse autoencoder.

    Args:
        source: activations ``[n, d_in]``; an :class:`ActivationStream`; or a tuple of its arguments,
            ``(model, hook_name, tokens)`` or ``(model, hook_name, tokens, positions)``.
        cfg: architecture and training settings; ``cfg.d_in`` must match the activations.
        progress: show a tqdm progress bar with the loss and L0.
        callback: called as ``callback(step, sae)`` after every optimiser step (e.g. to log MMCS); until training
            ends the biases are in normalised units (see ``SAEConfig.normalize_activations``).

    Returns:
        The trained SAE, in eval mode, on the activations' device.

    Raises:
        ValueError: ``cfg.d_in`` does not match the activations, or the hook name is unknown (before any training).
    """
    if isinstance(source, tuple):
        source = ActivationStream(*source)
    d_in = source.shape[-1] if isinstance(source, Tensor) else source.d_in
    if d_in != cfg.d_in:
        where = "each activation" if isinstance(source, Tensor) else f"the activation at hook {source.hook_name!r}"
        raise ValueError(f"cfg.d_in = {cfg.d_in} but {where} has size {d_in}")
    generator = torch.Generator().manual_seed(cfg.seed)
    buffer = _Buffer(source, cfg, generator)
    device = buffer.data.device
    scale = (cfg.d_in / buffer.data.float().pow(2).sum(-1).mean()).sqrt().item() if cfg.normalize_activations else 1.0
    sae = SAE(cfg).to(device)
    with torch.no_grad():
        sae.b_dec.copy_(buffer.data.float().mean(0) * scale)
    optimiser = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    decay_start = cfg.steps * (1 - cfg.lr_decay_fraction)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (cfg.steps - s) / max(cfg.steps - decay_start, 1))
    )
    fired = torch.zeros(cfg.d_sae, dtype=torch.bool, device=device)
    bar = tqdm(range(cfg.steps), desc="SAE", disable=not progress)
    for step in bar:
        x = buffer.next_batch().float() * scale
        if cfg.activation == "relu":
            f = sae.encode(x)
            loss = (sae.decode(f) - x).pow(2).sum(-1).mean() + cfg.l1_coefficient * f.sum(-1).mean()
            active = f > 0
        else:
            values, indices = sae.topk(x)
            loss = (sae._decode_topk(values, indices) - x).pow(2).sum(-1).mean()
            active = torch.zeros(len(x), cfg.d_sae, dtype=torch.bool, device=device).scatter(-1, indices, values > 0)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.unit_norm_decoder:
            _project_decoder_grad(sae)
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            if cfg.unit_norm_decoder:
                sae.W_dec.copy_(F.normalize(sae.W_dec, dim=-1))
            fired |= active.any(0)
        if cfg.resample_every and (step + 1) % cfg.resample_every == 0:
            if step + 1 + cfg.resample_every <= cfg.steps:
                _resample_dead(sae, optimiser, ~fired, x, generator)
            fired.zero_()
        if progress and step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4g}", l0=f"{active.sum(-1).float().mean().item():.1f}")
        if callback is not None:
            callback(step, sae)
    with torch.no_grad():  # f_raw = f / scale: divide both biases by the scale (see SAEConfig.normalize_activations)
        sae.b_enc.div_(scale)
        sae.b_dec.div_(scale)
    return sae.eval()


def _project_decoder_grad(sae: SAE) -> None:
    # Remove the part of each decoder row's gradient that would only change the row's norm.
    W, grad = sae.W_dec.data, sae.W_dec.grad
    grad -= (grad * W).sum(-1, keepdim=True) * W


@torch.no_grad()
def _resample_dead(
    sae: SAE, optimiser: torch.optim.Adam, dead: Tensor, x: Float[Tensor, "batch d_in"], generator: torch.Generator
) -> None:
    """Point dead features at inputs drawn with probability proportional to their squared reconstruction error."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return
    errors = (sae(x) - x).pow(2).sum(-1)
    picked = torch.multinomial(errors.cpu() + 1e-12, n_dead, replacement=n_dead > len(x), generator=generator)
    directions = F.normalize(x[picked.to(x.device)] - sae.b_dec, dim=-1)  # (n_dead, d_in)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec.data[dead] = directions
    sae.W_enc.data[:, dead] = directions.T * enc_norm * 0.2  # 0.2 x the live encoder norm (Bricken et al. 2023)
    sae.b_enc.data[dead] = 0.0
    for param, index in ((sae.W_dec, dead), (sae.W_enc, (slice(None), dead)), (sae.b_enc, dead)):
        state = optimiser.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0
