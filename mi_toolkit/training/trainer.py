"""The one trainer of mi_toolkit: AdamW (or Adam, or Muon) with warmup and a learning-rate schedule, optional Grokfast
filters, metrics, checkpoints and resume. Every experiment's recipe is a :class:`TrainConfig` over it
(:mod:`mi_toolkit.training.recipes`); the toy models and SAEs train through it too.

It knows nothing about any model or task. A task is any object with

- ``train_batch(step) -> batch``: a deterministic function of ``step`` (so a resumed run sees the same data),
- ``loss(model, batch) -> Tensor``: a scalar,
- ``evaluate(model) -> dict[str, float]``: metrics, called every ``log_every`` steps under ``torch.no_grad()``,

and optionally ``after_backward(model, step)`` (after ``backward()``, before the gradient filter and the optimiser
step: e.g. project gradients) and ``after_step(model, step, optimizer)`` (after the optimiser step: e.g.
renormalise weights).

With a ``run_dir`` the trainer writes ``metrics.jsonl`` (one JSON object per logged step), weight snapshots
``checkpoints/step_XXXXXXX.safetensors`` and the state needed to resume (``checkpoints/resume.safetensors`` +
``resume.json``); calling :func:`train` again on the same directory continues from the last checkpoint and ends
with the same weights as an uninterrupted run.
"""

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mi_toolkit.core.tl import Embed, PosEmbed, Unembed
from mi_toolkit.training.checkpoints import TrainState, list_checkpoints
from mi_toolkit.training.grokfast import make_filter
from mi_toolkit.training.heap import large_blocks_on_heap
from mi_toolkit.training.muon import Muon, muon_param_groups, native_bfloat16

__all__ = ["Task", "TrainConfig", "TrainResult", "TrainingDivergedError", "list_checkpoints", "train"]


@runtime_checkable
class Task(Protocol):
    def train_batch(self, step: int) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> Tensor: ...

    def evaluate(self, model: nn.Module) -> dict[str, float]: ...


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, filter, logging and checkpoint settings of :func:`train` (frozen; ``replace`` copies)."""

    steps: int = 10_000
    """Total optimiser steps (a resumed run continues up to this number)."""
    lr: float = 1e-3
    """Peak learning rate of AdamW."""
    weight_decay: float = 1.0
    """AdamW's decoupled weight decay, applied to every trainable parameter."""
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 10
    """Linear warmup: the learning rate at step s (0-based) is ``lr * min(1, (s + 1) / warmup_steps)``."""
    optimizer: str = "adamw"
    """``"adamw"`` (decoupled weight decay), ``"adam"`` (``weight_decay`` as an L2 term) or ``"muon"``
    (:class:`~mi_toolkit.training.muon.Muon`: orthogonalised momentum at ``muon_lr`` for the hidden weight matrices,
    AdamW at ``lr`` for the rest; decoupled weight decay on both)."""
    muon_lr: float = 0.04
    """``"muon"`` only: the peak learning rate of the hidden weight matrices (the schedule scales it as ``lr``)."""
    lr_schedule: str = "constant"
    """After warmup: ``"constant"``; ``"cosine"`` (``0.5 (1 + cos(pi s / steps))``); or ``"linear_decay"``
    (constant, then linearly to zero over the last ``decay_fraction`` of the steps)."""
    decay_fraction: float = 0.2
    """``"linear_decay"`` only: the fraction of the steps over which the learning rate falls to zero."""
    grad_filter: str = "none"
    """``"none"``, ``"ema"`` or ``"ma"``: Grokfast gradient filter (see :mod:`mi_toolkit.training.grokfast`)."""
    ema_alpha: float = 0.98
    ma_window: int = 100
    filter_lambda: float | None = None
    """Amplification of the slow gradient; None takes the filter's default (EMA 2.0, MA 5.0)."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value (after the filter); None: no clipping."""
    autocast: str | None = None
    """``"bf16"``: compute the training loss under ``torch.autocast`` in bfloat16 (weights, optimizer and evaluation
    stay float32); on CPUs with AVX512-BF16 about 1.3-1.9x faster steps for the Othello models. ``"auto"``: bfloat16
    where the device computes in it natively (:func:`~mi_toolkit.training.muon.native_bfloat16`: CUDA from compute
    capability 8.0, CPUs with AVX512-BF16 or AMX), float32 elsewhere: on an AVX2-only CPU, where PyTorch emulates
    bfloat16, an Othello step took 13x as long as in float32 (``"bf16"`` there warns). None: float32. A run may
    resume under another setting (only the rounding changes)."""
    compile: bool = False
    """Run the training forward and backward passes through ``torch.compile`` of the model's forward (evaluation
    stays eager): 1.6x faster bfloat16 steps for the Othello model on 2 CPU cores (``benchmarks/othello.py``) after
    5-10 s of compilation, which fuses the elementwise work that dominates small models. Needs a C++ compiler on
    CPU; if compilation fails the run warns and trains eagerly. Numbers differ from eager ones by float rounding;
    the same seed gives the same numbers from one compiled run to the next. A run may resume with or without it."""
    log_every: int = 100
    """Evaluate and record metrics every this many steps (and at step 0 and the last step)."""
    checkpoint_every: int = 1000
    """Write a weight snapshot and the resume state every this many steps (and at the last step)."""

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0 <= b < 1 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("warmup_steps must be >= 0 and log_every, checkpoint_every >= 1")
        if self.optimizer not in ("adamw", "adam", "muon"):
            raise ValueError(f"optimizer must be 'adamw', 'adam' or 'muon', got {self.optimizer!r}")
        if not 0 < self.muon_lr < math.inf:
            raise ValueError(f"muon_lr must be a positive number, got {self.muon_lr}")
        if self.optimizer == "muon" and not self.muon_lr * self.weight_decay < 1:
            raise ValueError(f"muon_lr * weight_decay = {self.muon_lr * self.weight_decay:g} must be < 1: Muon's "
                             "matrices shrink by that fraction a step (decoupled weight decay)")
        if self.autocast not in (None, "bf16", "auto"):
            raise ValueError(f"autocast must be None, 'bf16' or 'auto', got {self.autocast!r}")
        if self.lr_schedule not in ("constant", "cosine", "linear_decay"):
            raise ValueError(f"lr_schedule must be 'constant', 'cosine' or 'linear_decay', got {self.lr_schedule!r}")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must lie in [0, 1], got {self.decay_fraction}")
        make_filter(self.grad_filter, ema_alpha=self.ema_alpha, ma_window=self.ma_window)  # validates
        object.__setattr__(self, "betas", tuple(self.betas))

    def replace(self, **changes) -> "TrainConfig":
        """A copy with ``changes``, validated: ``GROKKING_FAST.replace(steps=600)``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def lr_factor(self, step: int) -> float:
        """The learning rate at ``step`` (0-based) as a fraction of ``lr``: warmup times the schedule."""
        factor = min(1.0, (step + 1) / max(self.warmup_steps, 1))
        if self.lr_schedule == "cosine":
            factor *= 0.5 * (1 + math.cos(math.pi * step / self.steps))
        elif self.lr_schedule == "linear_decay":
            decay_start = self.steps * (1 - self.decay_fraction)
            factor *= min(1.0, (self.steps - step) / max(self.steps - decay_start, 1))
        return factor


@dataclasses.dataclass
class TrainResult:
    history: list[dict]
    """One record per logged step: ``{"step": s, "lr": ..., "loss": ..., **task.evaluate(model)}``."""
    final_step: int
    """The last step trained (``config.steps``, or earlier where ``stop`` ended the run)."""
    stopped_early: bool
    """Whether ``stop`` ended the run before ``config.steps``."""
    resumed_from: int | None
    """The step the run resumed from, or None for a fresh run."""
    seconds: float
    """Wall time of this call."""
    precision: dict[str, str] = dataclasses.field(default_factory=dict)
    """What this call computed in: ``"loss"`` (the training forward and backward: ``"bfloat16"`` under autocast,
    else the parameters' dtype) and, with Muon, ``"newton_schulz"``; the device decides both where the config does
    not (``autocast="auto"``, ``Muon(ns_dtype=None)``), so a run records them."""


def train(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    progress: bool = True,
    measures: Callable[[nn.Module], dict[str, float]] | None = None,
    measures_every: int | None = None,
    stop: Callable[[dict], bool] | None = None,
    lr_scale: Callable[[int], float] | None = None,
    embedding_decay_scale: Callable[[int], float] | None = None,
) -> TrainResult:
    """Train ``model`` on ``task`` in place; resume from ``run_dir`` if it holds a checkpoint.

    On a CPU under glibc, blocks of up to 1 GiB stay on the heap while it trains, a process-wide allocator setting
    (:mod:`~mi_toolkit.training.heap`: the language model's steps 1.5x faster, the same numbers).

    Args:
        model: the model (its parameters with ``requires_grad`` are trained).
        task: see the module docstring.
        config: optimiser, schedule, filter, logging and checkpoint settings.
        run_dir: where to write metrics and checkpoints (created if missing); None keeps everything in memory.
        progress: show a progress bar.
        measures: ``measures(model) -> dict``, more metrics recorded beside ``task.evaluate``'s at every logged
            step (e.g. :func:`mi_toolkit.analysis.progress.grokking_measures`).
        measures_every: take ``measures`` only at steps that are multiples of this (and the last, and where ``stop``
            ends the run); default every logged step.
        stop: ``stop(record) -> bool``, called on every logged record before it is written (it may add fields to
            it); True ends the run there, with a checkpoint, so that ``config.steps`` is only a cap. A resumed run
            whose last record already says stop trains no further.
        lr_scale: ``lr_scale(step) -> float`` multiplies the schedule's learning rate at each step; it is asked
            afresh at every step, so it may follow what ``stop`` has seen (a cool-down once a run is done).
        embedding_decay_scale: ``embedding_decay_scale(step) -> float`` multiplies the weight decay of the
            embeddings, positional embeddings and unembedding (TransformerLens's ``Embed``, ``PosEmbed`` and
            ``Unembed``), which then form the optimiser's second parameter group; asked afresh at every step like
            ``lr_scale``. AdamW and Adam only.

    Returns:
        The metrics history and where the run started and ended.

    Raises:
        TrainingDivergedError: the loss became NaN/inf (the last checkpoint in ``run_dir`` stays intact).
        CheckpointError: ``run_dir`` holds a checkpoint of a different configuration or a corrupt one.
    """
    with _deterministic_algorithms(), large_blocks_on_heap(_device(model)):
        return _train(model, task, config, run_dir, progress, measures, measures_every, stop, lr_scale,
                      embedding_decay_scale)


@contextlib.contextmanager
def _deterministic_algorithms():
    """Deterministic kernels while training (restored afterwards): with more than one CPU thread some backward
    kernels otherwise accumulate in a thread-dependent order (measured: a 2-layer rotary attention-only model
    drifted by 7e-6 in 30 steps), and the same seed would not give the same weights. ``warn_only`` keeps CUDA ops
    that have no deterministic version running."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _device(model: nn.Module) -> torch.device:
    """Where ``model``'s first trainable parameter lives (the CPU for a model with none)."""
    return next((p.device for p in model.parameters() if p.requires_grad), torch.device("cpu"))


def _embedding_parameters(model: nn.Module) -> list[Tensor]:
    """The trainable parameters of ``model``'s embedding, positional-embedding and unembedding modules."""
    return [param for module in model.modules() if isinstance(module, (Embed, PosEmbed, Unembed))
            for param in module.parameters(recurse=False) if param.requires_grad]


def _train(model: nn.Module, task: Task, config: TrainConfig, run_dir: str | Path | None, progress: bool,
           measures, measures_every, stop, lr_scale, embedding_decay_scale) -> TrainResult:
    started = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    device = _device(model)
    device_type = device.type
    if config.autocast == "bf16" and device_type not in ("cpu", "cuda"):
        raise ValueError(f"autocast={config.autocast!r} is supported on cpu and cuda, not {device_type}")
    bfloat16 = _autocast_bfloat16(config.autocast, device)
    embeddings = _embedding_parameters(model) if embedding_decay_scale is not None else []
    if embedding_decay_scale is not None and (config.optimizer == "muon" or not embeddings):
        raise ValueError("embedding_decay_scale needs the AdamW or Adam optimiser and a model with TransformerLens "
                         f"embedding modules (optimizer={config.optimizer!r}, {len(embeddings)} such parameters)")
    if config.optimizer == "muon":
        optimizer = Muon(muon_param_groups(model, lr=config.lr, muon_lr=config.muon_lr,
                                           weight_decay=config.weight_decay, betas=config.betas))
    else:
        optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        embedding_ids = {id(p) for p in embeddings}
        groups = params if not embeddings else [  # embeddings second: param_groups[0]'s learning rate is logged
            {"params": [p for p in params if id(p) not in embedding_ids]}, {"params": embeddings}]
        optimizer = optimizer_class(groups, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: config.lr_factor(s) * (1.0 if lr_scale is None else lr_scale(s)))
    after_backward, after_step = getattr(task, "after_backward", None), getattr(task, "after_step", None)
    grad_filter = make_filter(
        config.grad_filter, ema_alpha=config.ema_alpha, ma_window=config.ma_window, lamb=config.filter_lambda
    )
    state = TrainState(model, optimizer, scheduler, grad_filter, config, run_dir)
    start = state.resume()
    history = state.history

    def log(step: int, loss: float | None) -> bool:
        """Record the metrics at ``step``; return whether ``stop`` ends the run here."""
        was_training = model.training
        model.eval()
        with torch.no_grad():
            record = {"step": step, "lr": optimizer.param_groups[0]["lr"], "loss": loss, **task.evaluate(model)}
            stopping = stop is not None and stop(record)
            if measures is not None and (measures_every is None or step % measures_every == 0
                                         or step == config.steps or stopping):
                record.update(measures(model))
        model.train(was_training)
        history.append(record)
        state.append_metrics(record)
        bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                         if k in ("loss", "test_loss", "test_acc", "l0") and v is not None})
        return stopping

    compiled = torch.compile(model.forward, dynamic=False) if config.compile else None
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc=getattr(task, "name", "train"),
               dynamic_ncols=True)
    done, stopping = start, False
    if start > 0 and stop is not None and history:
        with torch.no_grad():
            stopping = stop(history[-1])  # the interrupted run had already finished
    try:
        if start == 0:
            stopping = log(0, None)
        for step in range(start, start if stopping else config.steps):
            batch = task.train_batch(step)
            try:
                loss = _forward_backward(task, model, batch, optimizer, device_type, bfloat16, compiled)
            except Exception as error:
                if compiled is None:
                    raise
                # The same step eagerly: an error of the task's own is raised from there, without the warning.
                loss = _forward_backward(task, model, batch, optimizer, device_type, bfloat16, None)
                warnings.warn(f"torch.compile failed ({type(error).__name__}: {str(error)[:300]}); training eagerly "
                              "instead", RuntimeWarning, stacklevel=3)
                compiled = None
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                last = state.last_checkpoint_step
                raise TrainingDivergedError(
                    f"loss became {loss_value} at step {step}; stopping. "
                    + (f"The last good checkpoint is step {last} in {run_dir}." if last else "No checkpoint written.")
                    + " Try a lower learning rate or a gradient clip."
                )
            if after_backward is not None:
                after_backward(model, step)
            if grad_filter is not None:
                grad_filter(model)
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            if embeddings:
                optimizer.param_groups[1]["weight_decay"] = config.weight_decay * embedding_decay_scale(step)
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step(model, step, optimizer)
            done = step + 1
            bar.update(1)
            if done % config.log_every == 0 or done == config.steps:
                stopping = log(done, loss_value)
            if stopping or done % config.checkpoint_every == 0 or done == config.steps:
                state.save(done)
            if stopping:
                break
    finally:
        bar.close()
    precision = {"loss": "bfloat16" if bfloat16 else str(params[0].dtype if params else torch.float32)[6:]}
    if isinstance(optimizer, Muon):
        precision["newton_schulz"] = str(optimizer.ns_dtype_on(device))[6:]
    return TrainResult(history, done, stopping and done < config.steps, start or None, time.perf_counter() - started,
                       precision)


def _autocast_bfloat16(autocast: str | None, device: torch.device) -> bool:
    """Whether the training loss runs under bfloat16 autocast: ``"bf16"`` always (with a warning where bfloat16 is
    emulated), ``"auto"`` where the device computes in it natively."""
    if autocast is None:
        return False
    native = native_bfloat16(device)
    if autocast == "bf16" and not native:
        warnings.warn(f"autocast='bf16' on {device}, which has no native bfloat16 arithmetic (no AVX512-BF16 or AMX "
                      "on a CPU, compute capability < 8.0 on a GPU): PyTorch emulates it, and an Othello step took 13x "
                      "as long as in float32 on an AVX2-only CPU. autocast='auto' trains in float32 there.",
                      RuntimeWarning, stacklevel=4)
    return autocast == "bf16" or native


def _forward_backward(task: Task, model: nn.Module, batch, optimizer, device_type: str, bfloat16: bool,
                      compiled_forward: Callable | None) -> Tensor:
    """The training loss on ``batch``, with its gradients; through ``compiled_forward`` (``torch.compile`` of the
    model's ``forward``) where given. That forward is set on the model itself, for this loss only, so the task
    still receives the model (its type, hooks and attributes) and evaluation stays eager."""
    optimizer.zero_grad(set_to_none=True)
    if compiled_forward is not None:
        model.forward = compiled_forward  # an instance attribute over the class's method
    try:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bfloat16):
            loss = task.loss(model, batch)
        loss.backward()
    finally:
        if compiled_forward is not None:
            del model.forward
    return loss
