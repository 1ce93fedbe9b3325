"""Grokfast gradient filters (Lee et al. 2024): amplify the slow component of the gradient.

EMA: ``mu_t = alpha * mu_{t-1} + (1 - alpha) * g_t`` (``mu_0 = g_0``), then use ``g_t + lamb * mu_t``.
MA: once ``window`` gradients have been seen, use ``g_t + lamb * mean(last window gradients)``.
Defaults are those of the reference code: EMA alpha 0.98, lambda 2.0; MA window 100, lambda 5.0.
"""

import torch
from torch import Tensor, nn

__all__ = ["GradientFilter", "GrokfastEMA", "GrokfastMA", "make_filter"]


class GradientFilter:
    """Rewrites ``p.grad`` of the trainable parameters in place after ``backward()``; state is plain tensors."""

    def __call__(self, model: nn.Module) -> None:
        raise NotImplementedError

    def state_tensors(self) -> dict[str, Tensor]:
        """The filter's state, for a checkpoint."""
        raise NotImplementedError

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        raise NotImplementedError


def _grads(model: nn.Module):
    return [(name, p.grad) for name, p in model.named_parameters() if p.requires_grad and p.grad is not None]


class GrokfastEMA(GradientFilter):
    def __init__(self, alpha: float = 0.98, lamb: float = 2.0):
        if not 0 <= alpha < 1:
            raise ValueError(f"EMA alpha must lie in [0, 1), got {alpha}")
        self.alpha, self.lamb = alpha, lamb
        self.mu: dict[str, Tensor] = {}

    def __call__(self, model: nn.Module) -> None:
        for name, grad in _grads(model):
            if name not in self.mu:
                self.mu[name] = grad.detach().clone()
            else:
                self.mu[name].mul_(self.alpha).add_(grad, alpha=1 - self.alpha)
            grad.add_(self.mu[name], alpha=self.lamb)

    def state_tensors(self) -> dict[str, Tensor]:
        return {f"mu.{name}": t for name, t in self.mu.items()}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.mu = {k.removeprefix("mu."): v.clone() for k, v in tensors.items() if k.startswith("mu.")}


class GrokfastMA(GradientFilter):
    def __init__(self, window: int = 100, lamb: float = 5.0):
        if window < 1:
            raise ValueError(f"MA window must be >= 1, got {window}")
        self.window, self.lamb = window, lamb
        self.buffer: dict[str, Tensor] = {}  # (window, *param_shape) ring buffer per parameter
        self.count = 0

    def __call__(self, model: nn.Module) -> None:
        slot = self.count % self.window
        for name, grad in _grads(model):
            if name not in self.buffer:
                self.buffer[name] = grad.new_zeros((self.window, *grad.shape))
            self.buffer[name][slot] = grad
            if self.count + 1 >= self.window:
                grad.add_(self.buffer[name].mean(0), alpha=self.lamb)
        self.count += 1

    def state_tensors(self) -> dict[str, Tensor]:
        state = {f"buffer.{name}": t for name, t in self.buffer.items()}
        state["count"] = torch.tensor(self.count)
        return state

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.count = int(tensors["count"])
        self.buffer = {k.removeprefix("buffer."): v.clone() for k, v in tensors.items() if k.startswith("buffer.")}


def make_filter(kind: str, *, ema_alpha=0.98, ma_window=100, lamb: float | None = None) -> GradientFilter | None:
    """``"none"`` -> None, ``"ema"`` -> :class:`GrokfastEMA`, ``"ma"`` -> :class:`GrokfastMA`."""
    if kind == "none":
        return None
    if kind == "ema":
        return GrokfastEMA(ema_alpha, 2.0 if lamb is None else lamb)
    if kind == "ma":
        return GrokfastMA(ma_window, 5.0 if lamb is None else lamb)
    raise ValueError(f"unknown gradient filter {kind!r}; expected 'none', 'ema' or 'ma'")
