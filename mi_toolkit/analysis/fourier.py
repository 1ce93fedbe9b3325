"""Fourier analysis of modular-arithmetic models (Nanda et al. 2023).

The Fourier basis of Z_p has p orthonormal rows: row 0 is constant, rows ``2k-1, 2k`` are ``cos(w_k x)``,
``sin(w_k x)`` with ``w_k = 2 pi k / p``, k = 1..(p-1)/2. Functions of the input pair (a, b) are analysed in the
2-D basis, the outer product of two such bases.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from mi_toolkit.core.activations import run_until
from mi_toolkit.core.forward import final_position_forward, supports_fast_path
from mi_toolkit.core.tl import HookedTransformer, get_act_name

__all__ = [
    "NeuronClusters",
    "LogitDecomposition",
    "fourier_basis",
    "fourier_basis_names",
    "frequency_norms",
    "embedding_fourier_norms",
    "unembedding_fourier_norms",
    "fourier_transform_2d",
    "neuron_activations",
    "neuron_frequency_fractions",
    "block_fractions",
    "neuron_clusters",
    "clusters_from_activations",
    "key_frequencies",
    "frequencies_from_clusters",
    "decompose_logits",
    "sum_frequency_directions",
    "logit_decomposition",
]


def _check_odd(p: int) -> None:
    if p < 3 or p % 2 == 0:
        raise ValueError(f"the Fourier analysis needs an odd modulus p >= 3, got {p}")


def fourier_basis(p: int, device: str | torch.device = "cpu") -> Float[Tensor, "p p"]:
    """Orthonormal Fourier basis of Z_p as rows: ``basis @ basis.T == I``.

    >>> b = fourier_basis(5)
    >>> torch.allclose(b @ b.T, torch.eye(5), atol=1e-6)
    True
    """
    _check_odd(p)
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return (basis / basis.norm(dim=1, keepdim=True)).float().to(device)


def fourier_basis_names(p: int) -> list[str]:
    """Labels of the rows of :func:`fourier_basis`: ``["const", "cos 1", "sin 1", ...]``."""
    return ["const"] + [f"{fn} {k}" for k in range(1, (p - 1) // 2 + 1) for fn in ("cos", "sin")]


def frequency_norms(component_norms: Float[Tensor, " p"]) -> Float[Tensor, " n_freq"]:
    """Combine the norms of the cos and sin rows of each frequency: ``sqrt(cos^2 + sin^2)``, k = 1..(p-1)/2."""
    return (component_norms[1::2] ** 2 + component_norms[2::2] ** 2).sqrt()


def embedding_fourier_norms(model: HookedTransformer, p: int) -> Float[Tensor, " p"]:
    """Norm of each Fourier component of the embedding of the p number tokens (``W_E[:p]``)."""
    return (fourier_basis(p, model.W_E.device) @ model.W_E[:p]).norm(dim=1)


def unembedding_fourier_norms(model: HookedTransformer, p: int) -> Float[Tensor, " p"]:
    """Norm of each Fourier component (over the output c) of ``W_L = W_out @ W_U`` (neuron-to-logit map)."""
    w_l = model.blocks[-1].mlp.W_out @ model.W_U[:, :p]  # (d_mlp, p)
    return (w_l @ fourier_basis(p, w_l.device).T).norm(dim=0)


def fourier_transform_2d(values: Float[Tensor, "p p *rest"], basis: Tensor | None = None) -> Float[Tensor, "p p *rest"]:
    """Coefficients of a function of (a, b) in the 2-D Fourier basis (first two axes: a, b), or in the outer
    product of another orthonormal ``basis`` (rows), such as a group's (:mod:`mi_toolkit.analysis.representations`)."""
    p, rest = values.shape[0], values.shape[2:]
    basis = fourier_basis(p, values.device) if basis is None else basis.to(values)
    # Two plain matmuls over flattened trailing axes (einsum over three operands is ~30x slower on CPU).
    over_a = (basis @ values.reshape(p, -1)).reshape(p, p, -1)  # (x, b, rest)
    both = basis @ over_a.transpose(0, 1).reshape(p, -1)  # (y, x * rest)
    return both.reshape(p, p, -1).transpose(0, 1).reshape(p, p, *rest)


def neuron_activations(model: HookedTransformer, tokens, *, layer: int = -1) -> Float[Tensor, "batch d_mlp"]:
    """Post-activation MLP neurons at the last position, for each row of ``tokens``."""
    layer = layer % model.cfg.n_layers
    if layer == model.cfg.n_layers - 1 and supports_fast_path(model):  # the last MLP at the last position only
        return final_position_forward(model, tokens).mlp_post
    name = get_act_name("post", layer)
    return run_until(model, tokens, [name])[name][:, -1]


def neuron_frequency_fractions(acts: Float[Tensor, "p p d_mlp"]) -> Float[Tensor, "n_freq d_mlp"]:
    """Fraction of each neuron's variance over (a, b) carried by each frequency k = 1..(p-1)/2.

    Frequency k owns the 2-D components whose a- and b-indices lie in {const, cos k, sin k} (not both const).
    """
    p = acts.shape[0]
    group = torch.arange(p, device=acts.device).add(1).div(2, rounding_mode="floor")  # 0 const, k for cos k, sin k
    return block_fractions(acts, fourier_basis(p, acts.device), group)


def block_fractions(acts: Float[Tensor, "n n d"], basis: Float[Tensor, "n n"], block: Tensor) -> Float[Tensor, "m d"]:
    """Fraction of each column's variance over an (x, y) grid carried by each block of an orthonormal basis.

    Args:
        acts: values over the grid, ``acts[x, y, i]``.
        basis: orthonormal rows (functions of one variable); row 0 must be the constant.
        block: ``[n]`` the block of each row, 0 for the constant's, 1..m for the others.

    Returns:
        ``[m, d]``: block j owns the 2-D components (row, row') with both rows in {0, j}, not both 0.
    """
    n, block = acts.shape[0], block.to(acts.device)
    centred = acts - acts.mean(dim=(0, 1), keepdim=True)
    power = fourier_transform_2d(centred, basis) ** 2  # (n, n, d)
    total = power.sum(dim=(0, 1)).clamp_min(1e-12)
    one_hot = F.one_hot(block, int(block.max()) + 1).to(power.dtype)  # (n, n_blocks)
    n_blocks, d = one_hot.shape[1], power.shape[-1]
    over_a = (one_hot.T @ power.reshape(n, -1)).reshape(n_blocks, n, d)  # (g, y, d)
    blocks = (one_hot.T @ over_a.transpose(0, 1).reshape(n, -1)).reshape(n_blocks, n_blocks, d)  # (h, g, d)
    own = blocks[0, 1:] + blocks[1:, 0] + blocks.diagonal(dim1=0, dim2=1).T[1:]  # (0, 0) is zero after centring
    return own / total


@dataclasses.dataclass(frozen=True)
class NeuronClusters:
    """Which frequency each MLP neuron follows."""

    fractions: Float[Tensor, "n_freq d_mlp"]
    """Fraction of each neuron's variance in each frequency (row k-1 is frequency k)."""
    dominant: Tensor
    """``(d_mlp,)`` the frequency (1-based) that explains most of each neuron's variance."""
    explained: Float[Tensor, " d_mlp"]
    """The fraction that dominant frequency explains."""
    dead: Tensor
    """``(d_mlp,)`` neurons that never fire (or are constant) over the whole input grid."""

    def fraction_single_frequency(self, threshold: float = 0.85) -> float:
        """Fraction of (live) neurons with more than ``threshold`` of their variance in one frequency."""
        live = ~self.dead
        return (self.explained[live] > threshold).float().mean().item() if live.any() else 0.0

    def cluster_sizes(self, threshold: float = 0.5) -> dict[int, int]:
        """``{frequency: number of live neurons it dominates with > threshold of their variance}``."""
        keep = (~self.dead) & (self.explained > threshold)
        freqs, counts = self.dominant[keep].unique(return_counts=True)
        return dict(zip(freqs.tolist(), counts.tolist()))


def neuron_clusters(model: HookedTransformer, task) -> NeuronClusters:
    """Cluster the last MLP layer's neurons by the frequency that dominates their activation over all (a, b)."""
    return clusters_from_activations(neuron_activations(model, task.tokens).reshape(task.p, task.p, -1))


def clusters_from_activations(acts: Float[Tensor, "p p d_mlp"], fractions: Tensor | None = None) -> NeuronClusters:
    """:func:`neuron_clusters` for activations already laid out over the (a, b) grid; ``fractions`` (default
    :func:`neuron_frequency_fractions`) may come from another basis, such as a group's irreps."""
    p = acts.shape[0]
    fractions = neuron_frequency_fractions(acts) if fractions is None else fractions
    explained, dominant = fractions.max(dim=0)
    dead = acts.reshape(p * p, -1).var(dim=0) < 1e-10
    return NeuronClusters(fractions, dominant + 1, explained, dead)


def key_frequencies(
    model: HookedTransformer, task, *, neuron_threshold: float = 0.5, min_neuron_fraction: float = 0.02
) -> list[int]:
    """The frequencies the model computes with, read off its MLP neurons (no hard-coded list).

    A frequency is key if it dominates (explains more than ``neuron_threshold`` of the variance of) at least
    ``min_neuron_fraction`` of the live neurons. Nanda et al. take the unique per-neuron argmax; the thresholds
    keep a few noisy neurons of an unconverged model from adding frequencies.

    Returns:
        Sorted frequencies in 1..(p-1)/2.
    """
    return frequencies_from_clusters(neuron_clusters(model, task), neuron_threshold, min_neuron_fraction)


def frequencies_from_clusters(
    clusters: NeuronClusters, neuron_threshold: float = 0.5, min_neuron_fraction: float = 0.02
) -> list[int]:
    """:func:`key_frequencies` from already computed clusters."""
    n_live = max(int((~clusters.dead).sum()), 1)
    sizes = clusters.cluster_sizes(neuron_threshold)
    return sorted(k for k, n in sizes.items() if n >= min_neuron_fraction * n_live)


def sum_frequency_directions(p: int, freqs, device: str | torch.device = "cpu") -> Float[Tensor, "pairs two_k"]:
    """Orthonormal columns ``cos(w_k (a + b))``, ``sin(w_k (a + b))`` over the p^2 pairs (row ``a * p + b``)."""
    _check_odd(p)
    s = (torch.arange(p).repeat_interleave(p) + torch.arange(p).repeat(p)).to(torch.float64)
    cols = []
    for k in freqs:
        if not 1 <= k <= (p - 1) // 2:
            raise ValueError(f"frequency {k} out of range 1..{(p - 1) // 2}")
        w = 2 * math.pi * k / p
        cols += [torch.cos(w * s), torch.sin(w * s)]
    if not cols:
        return torch.zeros(p * p, 0, device=device)
    u = torch.stack(cols, dim=1)
    return (u / u.norm(dim=0, keepdim=True)).float().to(device)


@dataclasses.dataclass(frozen=True)
class LogitDecomposition:
    """Logits fitted by ``sum_k alpha_k cos(w_k (a + b - c))``."""

    freqs: list[int]
    coefficients: Float[Tensor, " n_key"]
    """Least-squares ``alpha_k`` per frequency (in logit units)."""
    fraction_explained: float
    """Share of the logits' variance (centred over c and over inputs) the fit explains."""
    fraction_per_freq: Float[Tensor, " n_key"]


def logit_decomposition(model: HookedTransformer, task, freqs) -> LogitDecomposition:
    """Fit the model's logits over all (a, b, c) by ``sum_k alpha_k cos(w_k (a + b - c))``, k in ``freqs``."""
    with torch.no_grad():
        logits = model(task.tokens)[:, -1, : task.p]
    return decompose_logits(logits.reshape(task.p, task.p, task.p), freqs)


def decompose_logits(logits: Float[Tensor, "p p p"], freqs) -> LogitDecomposition:
    """Project logits laid out as ``[a, b, c]`` onto ``cos(w_k (a + b - c))`` for each k in ``freqs``.

    Logits are centred over c and over inputs first; the directions for different k are orthogonal (and centred),
    so the least-squares fit is one projection per frequency.
    """
    p = logits.shape[0]
    logits = logits.reshape(p * p, p).double()
    logits = logits - logits.mean(dim=1, keepdim=True)  # centre over c
    logits = logits - logits.mean(dim=0, keepdim=True)  # and over inputs
    total = (logits**2).sum().clamp_min(1e-30)
    x = torch.arange(p, device=logits.device, dtype=torch.float64)
    s = (x.repeat_interleave(p) + x.repeat(p))[:, None]  # a + b for row a * p + b
    coefs, shares = [], []
    for k in freqs:
        direction = torch.cos(2 * math.pi * k / p * (s - x[None, :]))
        alpha = (logits * direction).sum() / (direction**2).sum()
        coefs.append(float(alpha))
        shares.append(float(alpha**2 * (direction**2).sum() / total))
    return LogitDecomposition(list(freqs), torch.tensor(coefs), float(sum(shares)), torch.tensor(shares))
