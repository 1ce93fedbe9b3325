import math

import numpy as np
import pytest
import torch

from mi_toolkit.analysis.fourier import (
    clusters_from_activations,
    decompose_logits,
    fourier_basis,
    fourier_transform_2d,
    frequencies_from_clusters,
    frequency_norms,
    neuron_frequency_fractions,
    sum_frequency_directions,
)


@pytest.mark.parametrize("p", [3, 7, 113])
def test_basis_is_orthonormal_and_matches_numpy_dft(p):
    basis = fourier_basis(p).double()
    torch.testing.assert_close(basis @ basis.T, torch.eye(p, dtype=torch.float64), atol=1e-5, rtol=0)
    # Independent check: numpy's DFT of each cos/sin row has all its energy at frequency k.
    for k in range(1, (p - 1) // 2 + 1):
        for row in (basis[2 * k - 1], basis[2 * k]):
            spectrum = np.abs(np.fft.rfft(row.numpy()))
            assert spectrum.argmax() == k and spectrum[k] ** 2 > 0.999 * (spectrum**2).sum()


def test_even_modulus_rejected():
    with pytest.raises(ValueError, match="odd modulus"):
        fourier_basis(8)


def test_2d_transform_is_invertible_and_norm_preserving():
    p = 7
    f = torch.randn(p, p, 3)
    coef = fourier_transform_2d(f)
    b = fourier_basis(p)
    torch.testing.assert_close(torch.einsum("xa,yb,xyd->abd", b, b, coef), f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close((coef**2).sum(), (f**2).sum(), rtol=1e-5, atol=1e-5)


def test_frequency_fractions_of_synthetic_neurons():
    p, w = 13, lambda k: 2 * math.pi * k / p
    a = torch.arange(p).double()[:, None]
    b = torch.arange(p).double()[None, :]
    neurons = torch.stack([
        torch.cos(w(3) * (a + b)),  # pure frequency 3
        torch.sin(w(5) * a) + 0 * b + 2.0,  # frequency 5 in a only (constant offset removed by centring)
        torch.cos(w(2) * a) + torch.cos(w(6) * b),  # half frequency 2, half frequency 6
    ], dim=-1).float()
    frac = neuron_frequency_fractions(neurons)
    torch.testing.assert_close(frac[2, 0], torch.tensor(1.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(frac[4, 1], torch.tensor(1.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(frac[[1, 5], 2], torch.tensor([0.5, 0.5]), atol=1e-5, rtol=0)
    torch.testing.assert_close(frac.sum(0), torch.ones(3), atol=1e-5, rtol=0)
    clusters = clusters_from_activations(neurons)
    assert clusters.dominant[:2].tolist() == [3, 5]
    assert clusters.fraction_single_frequency(0.85) == pytest.approx(2 / 3)


def test_key_frequencies_need_enough_neurons():
    p = 13
    a = torch.arange(p).double()[:, None, None]
    b = torch.arange(p).double()[None, :, None]
    freqs = torch.tensor([4] * 30 + [6] * 30 + [1])  # 61 neurons; frequency 1 dominates a single one
    phase = torch.rand(len(freqs), generator=torch.Generator().manual_seed(0)) * 6
    acts = torch.cos(2 * math.pi * freqs * (a + b) / p + phase).float()
    dead = torch.zeros(p, p, 5)
    clusters = clusters_from_activations(torch.cat([acts, dead], dim=-1))
    assert int(clusters.dead.sum()) == 5
    assert frequencies_from_clusters(clusters) == [4, 6]
    assert frequencies_from_clusters(clusters, min_neuron_fraction=0.01) == [1, 4, 6]


def test_sum_directions_orthonormal_and_projection_idempotent():
    p = 11
    u = sum_frequency_directions(p, [1, 3, 4]).double()
    torch.testing.assert_close(u.T @ u, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)
    n = torch.randn(p * p, 5, dtype=torch.float64)
    once = u @ (u.T @ n)
    torch.testing.assert_close(u @ (u.T @ once), once)


def test_logit_decomposition_recovers_planted_coefficients():
    p = 17
    x = torch.arange(p).double()
    a, b, c = x[:, None, None], x[None, :, None], x[None, None, :]
    clean = 3.0 * torch.cos(2 * math.pi * 5 * (a + b - c) / p) + 1.5 * torch.cos(2 * math.pi * 7 * (a + b - c) / p)
    noise = 0.5 * torch.randn(p, p, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    logits = clean + noise + 4.0  # constant offsets do not count as variance
    fit = decompose_logits(logits, [5, 7])
    torch.testing.assert_close(fit.coefficients.double(), torch.tensor([3.0, 1.5], dtype=torch.float64), atol=0.03,
                               rtol=0)
    centred = logits - logits.mean(2, keepdim=True)
    centred = centred - centred.mean((0, 1), keepdim=True)
    expected = (clean**2).sum() / (centred**2).sum()  # independent: share of the planted signal
    assert fit.fraction_explained == pytest.approx(float(expected), abs=0.01)


def test_frequency_norms_combine_cos_and_sin():
    norms = torch.tensor([9.0, 3.0, 4.0, 0.0, 1.0])
    torch.testing.assert_close(frequency_norms(norms), torch.tensor([5.0, 1.0]))
