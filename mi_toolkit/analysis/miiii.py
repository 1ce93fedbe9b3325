"""Measures of multi-task modular arithmetic (Syrkis, "miiii"): the omega spike of active frequencies in the
neurons, and each task's frequencies in the basis matched to its modulus."""

import math

import torch
from jaxtyping import Float
from torch import Tensor

from mi_toolkit.analysis.fourier import neuron_activations
from mi_toolkit.core.tl import HookedTransformer

__all__ = ["active_frequencies", "neuron_spectrum", "omega", "task_frequency_shares"]


def neuron_spectrum(model: HookedTransformer, task) -> Float[Tensor, "p p"]:
    """``|FFT2|`` of the last MLP's neurons over the (x0, x1) grid, averaged over neurons (entry (0, 0) is the
    mean, which carries no frequency)."""
    p = task.p
    with torch.no_grad():
        acts = neuron_activations(model, task.tokens).reshape(p, p, -1).double()
    return torch.fft.fft2(acts, dim=(0, 1)).abs().mean(-1)


def active_frequencies(spectrum: Float[Tensor, "p p"], k: float = 2.0) -> Tensor:
    """Boolean ``[p, p]``: the 2-D frequencies whose magnitude exceeds mean + ``k`` standard deviations of the
    non-constant entries (the constant entry is never active)."""
    values = spectrum.clone()
    values[0, 0] = float("nan")
    rest = values[~values.isnan()]
    active = values > rest.mean() + k * rest.std()
    active[0, 0] = False
    return active


def omega(model: HookedTransformer, task, ks=(2.0, 1.0)) -> dict[str, int]:
    """The number of active frequencies for each threshold ``mean + k std``: ``{"omega_k2": n, "omega_k1": m}``.

    The paper's text uses k = 2 and its figure code k = 1; both are reported.
    """
    spectrum = neuron_spectrum(model, task)
    return {f"omega_k{k:g}": int(active_frequencies(spectrum, k).sum()) for k in ks}


def task_frequency_shares(model: HookedTransformer, task) -> dict[int, Float[Tensor, " n_freq"]]:
    """For each task q, the share of its (centred) logit variance along ``cos(2 pi k (n - c) / q)``, k = 1..q//2,
    with ``n = x0 + p x1`` (n mod q is not periodic in x0 with period p, so the basis is matched to q)."""
    with torch.no_grad():
        logits = model(task.tokens)[:, -1].double()
    x0, x1 = task.tokens[:, 0].double(), task.tokens[:, 1].double()
    n = x0 + task.p * x1
    out = {}
    for q, start, end in task.blocks:
        block = logits[:, start:end]
        block = block - block.mean(dim=1, keepdim=True)
        block = block - block.mean(dim=0, keepdim=True)
        total = block.pow(2).sum().clamp_min(1e-30)
        c = torch.arange(q, dtype=torch.float64, device=block.device)
        shares = []
        for k in range(1, q // 2 + 1):
            direction = torch.cos(2 * math.pi * k * (n[:, None] - c[None, :]) / q)
            direction = direction - direction.mean(dim=1, keepdim=True)
            direction = direction - direction.mean(dim=0, keepdim=True)
            norm = direction.pow(2).sum()
            shares.append(float((block * direction).sum() ** 2 / (norm * total)) if norm > 1e-12 else 0.0)
        out[q] = torch.tensor(shares)
    return out
