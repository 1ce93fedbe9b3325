"""Training sparse autoencoders through the one trainer: from a tensor of activations or straight from a model hook
through a shuffled activation buffer; ReLU + L1, TopK, JumpReLU + L0 (the threshold learnt through a
straight-through estimator, Rajamanoharan et al. 2024), or BatchTopK (Bussmann et al. 2024); unit-norm decoder,
dead-feature resampling.

>>> x = torch.randn(2048, 8)
>>> sae = train_sae(x, SAEConfig(d_in=8, d_sae=16, activation="topk", k=4, steps=20), progress=False)
>>> sae.encode(x[:3]).shape, sae(x[:3]).shape
(torch.Size([3, 16]), torch.Size([3, 8]))
"""

import itertools
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from mi_toolkit.core.activations import ActivationStream
from mi_toolkit.core.compat import renamed_kwargs
from mi_toolkit.models.sae import SAE, SAEConfig
from mi_toolkit.training.trainer import TrainConfig, train

__all__ = ["SAETraining", "sae_train_config", "train_sae"]


def _cycle(stream: ActivationStream) -> Iterator[Float[Tensor, "n d_in"]]:
    while True:
        yield from stream


class _Buffer:
    """Shuffled batches of activations; a stream larger than the buffer is refilled half a buffer at a time."""

    def __init__(self, source: Tensor | ActivationStream, config: SAEConfig, generator: torch.Generator):
        self.batch_size, self.generator = config.batch_size, generator
        self.chunks: Iterator[Tensor] | None = None
        if isinstance(source, Tensor):
            self.data = source.detach().reshape(-1, source.shape[-1])
        else:
            rows, first_pass = [], iter(source)
            for chunk in first_pass:
                rows.append(chunk)
                if sum(len(r) for r in rows) >= config.buffer_size:
                    self.chunks = itertools.chain(first_pass, _cycle(source))
                    break
            # else the whole stream fits in the buffer: keep it and reuse it every epoch
            self.data = torch.cat(rows)[: config.buffer_size]
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


def _rectangle(z: Tensor) -> Tensor:
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """``pre * (pre > threshold)``; the threshold's gradient is the straight-through estimate
    ``-(threshold / bandwidth) K((pre - threshold) / bandwidth)`` with the rectangle kernel K, the pre-activation's
    the exact one, ``1{pre > threshold}`` (Rajamanoharan et al. 2024, eq. 11)."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        kernel = _rectangle((pre - threshold) / ctx.bandwidth)
        threshold_grad = -(threshold / ctx.bandwidth) * kernel * grad
        return (pre > threshold) * grad, threshold_grad.reshape(-1, threshold.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """``1{pre > threshold}``, whose sum is the L0; only the threshold gets a (straight-through) gradient,
    ``-(1 / bandwidth) K((pre - threshold) / bandwidth)``."""

    @staticmethod
    def forward(ctx, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        pre, threshold = ctx.saved_tensors
        threshold_grad = -(1 / ctx.bandwidth) * _rectangle((pre - threshold) / ctx.bandwidth) * grad
        return None, threshold_grad.reshape(-1, threshold.shape[-1]).sum(0), None


def sae_train_config(config: SAEConfig) -> TrainConfig:
    """The recipe of :func:`train_sae`: Adam, constant learning rate then linear decay to zero, no weight decay."""
    return TrainConfig(steps=config.steps, lr=config.lr, weight_decay=0.0, betas=(0.9, 0.999), warmup_steps=0,
                       optimizer="adam", lr_schedule="linear_decay", decay_fraction=config.lr_decay_fraction,
                       log_every=100, checkpoint_every=config.steps)


class SAETraining:
    """An SAE's training as a task of :func:`mi_toolkit.training.train`: batches from the buffer (in step order, so a
    run is reproducible from the start, not resumable mid-way), the SAE loss, and the SAE's own step rules (decoder
    gradients projected and rows renormalised, dead features resampled)."""

    name = "SAE"

    def __init__(self, buffer: "_Buffer", config: SAEConfig, scale: float, generator: torch.Generator,
                 callback: Callable[[int, SAE], None] | None):
        self.buffer, self.config, self.scale, self.generator, self.callback = buffer, config, scale, generator, callback
        # Steps since each feature last fired: AuxK's dead features, and the resampler's (none fired since its last
        # check, every resample_every steps).
        self.since_fired = torch.zeros(config.d_sae, dtype=torch.long, device=buffer.data.device)
        self.x: Tensor | None = None
        self.active: Tensor | None = None
        self.smallest_kept: Tensor | None = None  # BatchTopK: the batch's smallest kept activation
        self.threshold_steps = 0

    def train_batch(self, step: int) -> Float[Tensor, "batch d_in"]:
        return self.buffer.next_batch().float() * self.scale

    def loss(self, sae: SAE, x: Float[Tensor, "batch d_in"]) -> Float[Tensor, ""]:
        config = self.config
        if config.activation == "relu":
            f = sae.encode(x)
            loss = (sae.decode(f) - x).pow(2).sum(-1).mean() + config.l1_coefficient * f.sum(-1).mean()
            active = f > 0
        elif config.activation == "jumprelu":
            pre, threshold = sae.pre_activations(x), sae.threshold
            f = _JumpReLU.apply(pre, threshold, config.bandwidth)
            l0 = _Step.apply(pre, threshold, config.bandwidth).sum(-1).mean()
            loss = (sae.decode(f) - x).pow(2).sum(-1).mean() + config.l0_coefficient * l0
            active = f > 0
        elif config.activation == "batchtopk":
            f = self._batch_topk(F.relu(sae.pre_activations(x)))
            loss = (sae.decode(f) - x).pow(2).sum(-1).mean()
            active = f > 0
        else:
            pre = sae.pre_activations(x)
            values, indices = sae._topk(pre)
            x_hat = sae._decode_topk(values, indices)
            loss = (x_hat - x).pow(2).sum(-1).mean()
            active = torch.zeros(len(x), config.d_sae, dtype=torch.bool, device=x.device).scatter(
                -1, indices, values > 0)
            if config.aux_k:
                loss = loss + config.aux_coefficient * self._aux_loss(sae, pre, (x - x_hat).detach())
        self.x, self.active = x, active
        return loss

    def _batch_topk(self, acts: Float[Tensor, "batch d_sae"]) -> Float[Tensor, "batch d_sae"]:
        """Keep the ``k x batch`` largest activations of the whole batch; note the smallest positive one kept."""
        values, indices = acts.flatten().topk(self.config.k * len(acts))
        positive = values[values > 0]
        self.smallest_kept = positive.min().detach() if len(positive) else None
        return torch.zeros_like(acts.flatten()).scatter(0, indices, values).view_as(acts)

    def _aux_loss(self, sae: SAE, pre: Tensor, error: Float[Tensor, "batch d_in"]) -> Tensor:
        """AuxK: the squared error of reconstructing ``error`` from the ``aux_k`` largest pre-activations of the
        dead features (zero while none is dead)."""
        dead = self.since_fired >= self.config.dead_steps
        n = min(self.config.aux_k, int(dead.sum()))
        if n == 0:
            return pre.new_zeros(())
        values, indices = pre.masked_fill(~dead, float("-inf")).topk(n, dim=-1)
        estimate = F.embedding_bag(indices, sae.W_dec, per_sample_weights=F.relu(values), mode="sum")
        return (estimate - error).pow(2).sum(-1).mean()

    def after_backward(self, sae: SAE, step: int) -> None:
        if self.config.unit_norm_decoder:
            _project_decoder_grad(sae)

    def after_step(self, sae: SAE, step: int, optimizer: torch.optim.Optimizer) -> None:
        config = self.config
        with torch.no_grad():
            if config.unit_norm_decoder:
                sae.W_dec.copy_(F.normalize(sae.W_dec, dim=-1))
            if config.activation == "batchtopk" and self.smallest_kept is not None:
                # The inference threshold: a running mean of the smallest kept activation (the mean of the batches
                # so far for the first 100 steps, then an exponential average over about the last 100).
                self.threshold_steps += 1  # the first step's rate is 1: the threshold becomes that batch's
                rate = max(1 / self.threshold_steps, 0.01)
                sae.log_threshold.copy_(sae.threshold.lerp(self.smallest_kept, rate).log())
            self.since_fired = (self.since_fired + 1).masked_fill(self.active.any(0), 0)
        if (config.resample_every and (step + 1) % config.resample_every == 0
                and step + 1 + config.resample_every <= config.steps):
            dead = self.since_fired >= config.resample_every
            _resample_dead(sae, optimizer, dead, self.x, self.generator)
            self.since_fired.masked_fill_(dead, 0)  # fresh features: counted from now
        if self.callback is not None:
            self.callback(step, sae)

    def evaluate(self, sae: SAE) -> dict[str, float]:
        """L0 of the last training batch."""
        return {} if self.active is None else {"l0": self.active.sum(-1).float().mean().item()}


@renamed_kwargs(cfg="config")
def train_sae(
    source: Float[Tensor, "n d_in"] | ActivationStream | tuple,
    config: SAEConfig,
    *,
    progress: bool = True,
    callback: Callable[[int, SAE], None] | None = None,
) -> SAE:
    """Train a sparse autoencoder.

    Args:
        source: activations ``[n, d_in]``; an :class:`~mi_toolkit.core.activations.ActivationStream`; or a tuple of
            its arguments, ``(model, hook_name, tokens)`` or ``(model, hook_name, tokens, positions)``.
        config: architecture and training settings; ``config.d_in`` must match the activations.
        progress: show a tqdm progress bar with the loss and L0.
        callback: called as ``callback(step, sae)`` after every optimiser step (e.g. to log MMCS); until training
            ends the biases are in normalised units (see ``SAEConfig.normalize_activations``).

    Returns:
        The trained SAE, in eval mode, on the activations' device.

    Raises:
        ValueError: ``config.d_in`` does not match the activations, or the hook name is unknown (before any
            training).
    """
    if isinstance(source, tuple):
        source = ActivationStream(*source)
    d_in = source.shape[-1] if isinstance(source, Tensor) else source.d_in
    if d_in != config.d_in:
        where = "each activation" if isinstance(source, Tensor) else f"the activation at hook {source.hook_name!r}"
        raise ValueError(f"cfg.d_in = {config.d_in} but {where} has size {d_in}")
    generator = torch.Generator().manual_seed(config.seed)
    buffer = _Buffer(source, config, generator)
    device = buffer.data.device
    scale = 1.0
    if config.normalize_activations:
        scale = (config.d_in / buffer.data.float().pow(2).sum(-1).mean()).sqrt().item()
    sae = SAE(config).to(device)
    with torch.no_grad():
        sae.b_dec.copy_(buffer.data.float().mean(0) * scale)
    if config.steps:
        train(sae, SAETraining(buffer, config, scale, generator, callback), sae_train_config(config), progress=progress)
    with torch.no_grad():  # f_raw = f / scale: divide both biases by the scale (see SAEConfig.normalize_activations)
        sae.b_enc.div_(scale)
        sae.b_dec.div_(scale)
        if config.activation in ("jumprelu", "batchtopk"):  # and the thresholds the pre-activations are compared to
            sae.log_threshold.sub_(math.log(scale))
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
    resampled = [(sae.W_dec, dead), (sae.W_enc, (slice(None), dead)), (sae.b_enc, dead)]
    if sae.cfg.activation == "jumprelu":
        sae.log_threshold.data[dead] = math.log(sae.cfg.initial_threshold)
        resampled.append((sae.log_threshold, dead))
    for param, index in resampled:
        state = optimiser.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][index] = 0.0
