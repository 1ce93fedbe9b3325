"""Sparse autoencoders (SAEs): take a hook point's activations out of superposition into sparse features.

``f = act(W_enc^T (x - b_dec) + b_enc)``, ``x_hat = W_dec^T f + b_dec``, with ``act`` either ReLU (trained on
``||x - x_hat||^2 + l1 * ||f||_1``) or TopK (keep the k largest pre-activations, trained on the squared error
alone). Decoder rows are kept at unit norm so the L1 penalty cannot be dodged by shrinking ``f``; features that
stop firing are resampled towards badly reconstructed inputs (Bricken et al. 2023). Training is
:func:`mi_toolkit.training.train_sae`; the SAE saves and loads as safetensors + JSON.

>>> sae = SAE(SAEConfig(d_in=8, d_sae=16, activation="topk", k=4))
>>> x = torch.randn(3, 8)
>>> sae.encode(x).shape, sae(x).shape
(torch.Size([3, 16]), torch.Size([3, 8]))
"""

import dataclasses
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from mi_toolkit.core.io import CheckpointError, load_json, load_tensors, save_json, save_tensors

__all__ = ["SAE", "SAEConfig"]


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
