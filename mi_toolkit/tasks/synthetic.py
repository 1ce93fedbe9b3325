"""Synthetic activations with known features, and how well a dictionary recovers them (Sharkey et al. 2022).

Each sample is ``x = sum_i c_i d_i`` over ``n_features`` random unit directions ``d_i`` in ``d`` dimensions, with
sparse non-negative coefficients: feature i is active with probability ``feature_probability`` and then has a
``U[0, 1]`` coefficient. Optional correlation makes features fire together: a latent Gaussian
``z_i = sqrt(1 - rho) g_i + sqrt(rho) (F h)_i`` (``F`` a fixed random matrix with unit rows, ``g``, ``h`` standard
normal) decides which are active (``z_i`` below the ``feature_probability`` quantile), so each feature keeps its
firing rate while features whose rows of ``F`` align co-occur. The mean max cosine similarity (MMCS) scores a learnt
dictionary against the true directions.

>>> data = GroundTruth(n_features=8, d=4, feature_probability=0.25, seed=0)
>>> x = data.sample(100)
>>> x.shape, round(mmcs(data.features, data.features), 4)
(torch.Size([100, 4]), 1.0)
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

__all__ = ["GroundTruth", "mmcs"]


class GroundTruth:
    """A source of activations built from known unit feature directions.

    Args:
        n_features: number of true features.
        d: dimension of the activations.
        feature_probability: probability that a feature is active in a sample (its expected firing rate).
        correlation: rho in [0, 1): 0 gives independent features.
        n_factors: number of shared latent factors behind the correlation.
        seed: seed of the directions, the correlation structure and the samples.
    """

    def __init__(
        self,
        n_features: int = 512,
        d: int = 256,
        feature_probability: float = 0.01,
        *,
        correlation: float = 0.0,
        n_factors: int = 16,
        seed: int = 0,
    ):
        if n_features < 1 or d < 1:
            raise ValueError(f"n_features and d must be positive, got {n_features}, {d}")
        if not 0 < feature_probability <= 1:
            raise ValueError(f"feature_probability must be in (0, 1], got {feature_probability}")
        if not 0 <= correlation < 1:
            raise ValueError(f"correlation must be in [0, 1), got {correlation}")
        self.feature_probability = feature_probability
        self.correlation = correlation
        self.generator = torch.Generator().manual_seed(seed)
        self.features: Float[Tensor, "n_features d"] = F.normalize(
            torch.randn(n_features, d, generator=self.generator), dim=-1
        )
        self.factors: Float[Tensor, "n_features n_factors"] = F.normalize(
            torch.randn(n_features, n_factors, generator=self.generator), dim=-1
        )

    def coefficients(self, n: int) -> Float[Tensor, "n n_features"]:
        """Sparse non-negative feature coefficients of ``n`` new samples."""
        n_features, n_factors = self.factors.shape
        values = torch.rand(n, n_features, generator=self.generator)
        if self.correlation == 0:
            active = torch.rand(n, n_features, generator=self.generator) < self.feature_probability
        else:
            g = torch.randn(n, n_features, generator=self.generator)
            h = torch.randn(n, n_factors, generator=self.generator)
            z = math.sqrt(1 - self.correlation) * g + math.sqrt(self.correlation) * h @ self.factors.T
            active = z < torch.special.ndtri(torch.tensor(self.feature_probability))  # z_i ~ N(0, 1)
        return values * active

    def sample(self, n: int) -> Float[Tensor, "n d"]:
        """``n`` new activations ``coefficients @ features``."""
        return self.coefficients(n) @ self.features


def mmcs(
    learnt: Float[Tensor, "n_learnt d"],
    true_features: Float[Tensor, "n_features d"],
) -> float:
    """Mean over true features of the max cosine similarity with any learnt direction.

    Args:
        learnt: learnt directions, one per row (e.g. an SAE's ``W_dec``); need not be normalised.
        true_features: the true directions, one per row.

    Returns:
        MMCS in [-1, 1]; 1 when every true feature has an exact match.
    """
    cos = F.normalize(true_features.float(), dim=-1) @ F.normalize(learnt.detach().float(), dim=-1).T
    return cos.max(dim=1).values.mean().item()
