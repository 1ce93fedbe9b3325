"""Toy models of superposition (Elhage et al. 2022), many instances trained at once in one batched model.

A sparse input ``x`` in R^n (each feature is 0 with probability S = 1 - p, else uniform on [0, 1]) is squeezed
into m < n hidden dimensions and read back: ``h = W x``, ``x' = ReLU(W^T h + b)``, trained on the importance-
weighted squared error ``sum_i I_i (x_i - x'_i)^2``. The *neuron* variant puts a ReLU on the hidden layer too,
``h = ReLU(W x)``, so hidden dimensions become privileged neurons. Dense inputs give the m most important features
orthogonal directions and drop the rest; sparse inputs pack more features than dimensions (n = 5, m = 2: a
pentagon). Every instance has its own feature probability, so a whole sparsity sweep is one einsum per step.

Training is :func:`mi_toolkit.training.train_toy_model`; the geometry is :func:`mi_toolkit.analysis.superposition_metrics`.

>>> model = ToyModel(ToyModelConfig(n_features=5, d_hidden=2, feature_probability=(1.0, 0.05)))
>>> model.W.shape, model(model.sample(3, torch.Generator().manual_seed(0))).shape
(torch.Size([2, 2, 5]), torch.Size([3, 2, 5]))
"""

import dataclasses
import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

__all__ = ["ToyModel", "ToyModelConfig"]


@dataclasses.dataclass(frozen=True)
class ToyModelConfig:
    """A batch of toy models that differ only in how often their features are active."""

    n_features: int = 5
    """n: number of input features."""
    d_hidden: int = 2
    """m: number of hidden dimensions."""
    feature_probability: tuple[float, ...] = (1.0, 0.3, 0.1, 0.03, 0.01)
    """Probability that a feature is non-zero, one entry per instance (sparsity S = 1 - p)."""
    importance_decay: float = 0.9
    """Importance of feature i is ``importance_decay ** i`` (0.9 as in Elhage et al.); 1.0 makes all equal."""
    hidden_relu: bool = False
    """The neuron variant: a ReLU on the hidden layer as well as on the output."""
    lr: float = 1e-2
    """Adam learning rate (cosine-decayed to zero over training)."""
    batch_size: int = 1024
    """Inputs per instance per step."""
    steps: int = 1500
    """Optimiser steps."""
    seed: int = 0
    """Seed of the weight initialisation and of the sampled inputs."""

    def __post_init__(self):
        if self.n_features < 1 or self.d_hidden < 1:
            raise ValueError(f"n_features and d_hidden must be positive, got {self.n_features}, {self.d_hidden}")
        if not self.feature_probability or not all(0 < p <= 1 for p in self.feature_probability):
            raise ValueError(f"feature_probability must be non-empty values in (0, 1], got {self.feature_probability}")
        if self.importance_decay <= 0:
            raise ValueError(f"importance_decay must be positive, got {self.importance_decay}")
        if self.lr <= 0 or self.batch_size < 1 or self.steps < 0:
            raise ValueError("lr and batch_size must be positive and steps non-negative")

    @property
    def n_instances(self) -> int:
        return len(self.feature_probability)

    @property
    def importance(self) -> Float[Tensor, " n_features"]:
        return self.importance_decay ** torch.arange(self.n_features, dtype=torch.float32)


class ToyModel(nn.Module):
    """``n_instances`` independent toy models as one module; weights are ``W [instance d_hidden n_features]``."""

    def __init__(self, cfg: ToyModelConfig):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        shape = (cfg.n_instances, cfg.d_hidden, cfg.n_features)
        bound = math.sqrt(6 / (cfg.d_hidden + cfg.n_features))  # Xavier-uniform, per instance
        self.W = nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * bound)
        self.b_final = nn.Parameter(torch.zeros(cfg.n_instances, cfg.n_features))
        self.register_buffer("feature_probability", torch.tensor(cfg.feature_probability))
        self.register_buffer("importance", cfg.importance)

    def forward(self, x: Float[Tensor, "batch instance n_features"]) -> Float[Tensor, "batch instance n_features"]:
        """Reconstruct ``x`` through the ``d_hidden``-dimensional bottleneck of each instance."""
        # Batched matmuls over the instance axis; einsum's backward is ~2x slower at these tiny sizes.
        x = x.transpose(0, 1)  # (instance, batch, n_features)
        h = torch.bmm(x, self.W.transpose(1, 2))  # (instance, batch, d_hidden)
        if self.cfg.hidden_relu:
            h = F.relu(h)
        out = F.relu(torch.bmm(h, self.W) + self.b_final[:, None])  # (instance, batch, n_features)
        return out.transpose(0, 1)

    def sample(
        self, batch: int, generator: torch.Generator | None = None
    ) -> Float[Tensor, "batch instance n_features"]:
        """Inputs: each feature is ``U[0, 1]`` with its instance's feature probability, else 0."""
        shape = (batch, self.cfg.n_instances, self.cfg.n_features)
        u = torch.rand(shape, generator=generator).to(self.W.device)
        p = self.feature_probability[:, None]
        # u < p happens with probability p, and given that, u / p is uniform on [0, 1]: one draw does both.
        return torch.where(u < p, u / p, 0.0)

    def loss(self, x: Float[Tensor, "batch instance n_features"]) -> Float[Tensor, " instance"]:
        """Importance-weighted squared error, summed over features and averaged over the batch, per instance."""
        return (self.importance * (x - self(x)) ** 2).sum(-1).mean(0)
