"""Sparse autoencoders (SAEs): take a hook point's activations out of superposition into sparse features.

``f = act(W_enc^T (x - b_dec) + b_enc)``, ``x_hat = W_dec^T f + b_dec``, with ``act`` ReLU (trained on
``||x - x_hat||^2 + l1 * ||f||_1``), TopK (keep the k largest pre-activations, trained on the squared error
alone) or JumpReLU (``pre * (pre > threshold)`` with a learnt per-feature threshold, trained on the squared error
plus ``l0 * ||f||_0``; Rajamanoharan et al. 2024) or BatchTopK (the ``k x batch`` largest pre-activations of a
training batch, then a JumpReLU with one threshold at inference; Bussmann et al. 2024). Decoder rows are kept at
unit norm so the L1 penalty cannot be dodged by shrinking ``f``; features that stop firing are resampled towards
badly reconstructed inputs (Bricken et al. 2023). Training is :func:`mi_toolkit.training.train_sae`. An SAE saves
as safetensors + JSON, or in SAELens's or Gemma Scope's format (:meth:`SAE.save`); :func:`load_sae` reads all three
(:mod:`mi_toolkit.models.sae_formats`).

>>> sae = SAE(SAEConfig(d_in=8, d_sae=16, activation="topk", k=4))
>>> x = torch.randn(3, 8)
>>> sae.encode(x).shape, sae(x).shape
(torch.Size([3, 16]), torch.Size([3, 8]))
"""

import dataclasses
import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from mi_toolkit.core.io import CheckpointError, load_json, load_tensors, save_json, save_tensors
from mi_toolkit.models import sae_formats

__all__ = ["SAE", "SAEConfig", "load_sae"]


@dataclasses.dataclass(frozen=True)
class SAEConfig:
    """Architecture and training settings of a sparse autoencoder."""

    d_in: int
    """Size of the activations the SAE reads (trailing dimensions of the hook's activation, flattened)."""
    d_sae: int
    """Number of features (dictionary size)."""
    activation: Literal["relu", "topk", "jumprelu", "batchtopk"] = "relu"
    """``"relu"``: ReLU with an L1 penalty; ``"topk"``: keep the ``k`` largest pre-activations (ReLU-ed);
    ``"jumprelu"``: ``pre * (pre > threshold)`` with a per-feature threshold, trained with an L0 penalty;
    ``"batchtopk"``: in training keep the ``k x batch`` largest pre-activations of the whole batch (so ``k`` on
    average per input, more for some inputs and fewer for others), and encode as a JumpReLU whose threshold, the
    same for every feature, is the running mean of the smallest activation kept (Bussmann et al. 2024). Foreign
    formats store it as the JumpReLU it is at inference, as SAELens does."""
    apply_b_dec_to_input: bool = True
    """Subtract ``b_dec`` from the input before encoding (the toolkit's and SAELens's default); False for SAEs such as
    Gemma Scope's, whose encoder reads ``x @ W_enc + b_enc``."""
    l1_coefficient: float = 1.0
    """ReLU only: weight of ``||f||_1`` against the squared error ``||x - x_hat||^2`` (both per input, on normalised
    activations). Representing a feature pays when its activation exceeds about this value."""
    k: int = 16
    """Active features per input (TopK; BatchTopK: on average over a training batch)."""
    aux_k: int = 0
    """TopK only: the auxiliary loss of Gao et al. (2024), "AuxK". Each step, the ``aux_k`` largest pre-activations
    among the features dead for :attr:`dead_steps` steps reconstruct the error of the main reconstruction, which
    gives dead features a gradient towards what the live ones miss (they suggest ``d_in // 2``). 0: off."""
    aux_coefficient: float = 1 / 32
    """TopK with ``aux_k``: weight of the auxiliary loss, relative to the squared error (Gao et al.'s 1/32)."""
    dead_steps: int = 100
    """TopK with ``aux_k``: a feature that has not fired for this many steps counts as dead."""
    l0_coefficient: float = 1.0
    """JumpReLU only: weight of ``||f||_0`` against the squared error (on normalised activations): representing a
    feature pays when it lowers the squared error by more than this."""
    initial_threshold: float = 0.5
    """JumpReLU only: every feature's threshold at initialisation, in normalised units."""
    bandwidth: float = 0.1
    """JumpReLU only: width of the rectangle kernel of the straight-through estimator that gives the threshold its
    gradient (Rajamanoharan et al. 2024), in normalised units."""
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
        if self.activation not in ("relu", "topk", "jumprelu", "batchtopk"):
            raise ValueError(f"activation must be 'relu', 'topk', 'jumprelu' or 'batchtopk', got {self.activation!r}")
        if not self.l1_coefficient > 0 or not self.l0_coefficient > 0:
            raise ValueError(f"l1_coefficient and l0_coefficient must be positive, got {self.l1_coefficient}, "
                             f"{self.l0_coefficient}")
        if not self.initial_threshold > 0 or not self.bandwidth > 0:
            raise ValueError(f"initial_threshold and bandwidth must be positive, got {self.initial_threshold}, "
                             f"{self.bandwidth}")
        if self.k < 1 or (self.activation in ("topk", "batchtopk") and self.k > self.d_sae):
            raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        if self.aux_k < 0 or self.aux_k > self.d_sae or not self.aux_coefficient > 0 or self.dead_steps < 1:
            raise ValueError(f"need aux_k in [0, d_sae={self.d_sae}], aux_coefficient > 0 and dead_steps >= 1, got "
                             f"{self.aux_k}, {self.aux_coefficient}, {self.dead_steps}")
        if self.aux_k and self.activation != "topk":
            raise ValueError(f"aux_k (AuxK) applies to TopK SAEs only, got activation={self.activation!r}")
        if not self.lr > 0 or not 0 <= self.lr_decay_fraction <= 1:
            raise ValueError(f"need lr > 0 and lr_decay_fraction in [0, 1], got {self.lr}, {self.lr_decay_fraction}")
        if self.batch_size < 1 or self.steps < 0 or self.resample_every < 0 or self.buffer_size < self.batch_size:
            raise ValueError("need batch_size >= 1, steps >= 0, resample_every >= 0 and buffer_size >= batch_size")


class SAE(nn.Module):
    """A sparse autoencoder; ``forward`` returns the reconstruction, ``encode`` the feature activations.

    Parameters: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]`` (the layout of
    SAELens and Gemma Scope), and for JumpReLU ``log_threshold [d_sae]`` (the threshold is ``exp(log_threshold)``, as
    Rajamanoharan et al. train it, so it stays positive); BatchTopK keeps its running threshold there too, set by the
    training steps rather than by gradients.
    """

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        generator = torch.Generator().manual_seed(cfg.seed)
        W_dec = F.normalize(torch.randn(cfg.d_sae, cfg.d_in, generator=generator), dim=-1)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone())  # tied initialisation: each feature starts reading its direction
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.activation in ("jumprelu", "batchtopk"):
            self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.initial_threshold)),
                                              requires_grad=cfg.activation == "jumprelu")

    @property
    def threshold(self) -> Float[Tensor, " d_sae"]:
        """JumpReLU and BatchTopK only: the per-feature threshold ``exp(log_threshold)``."""
        return self.log_threshold.exp()

    def pre_activations(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """``W_enc^T (x - b_dec) + b_enc`` (``W_enc^T x + b_enc`` where ``cfg.apply_b_dec_to_input`` is False)."""
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations (non-negative; at most ``k`` non-zero for TopK)."""
        if self.cfg.activation == "relu":
            return F.relu(self.pre_activations(x))
        if self.cfg.activation in ("jumprelu", "batchtopk"):
            pre = self.pre_activations(x)
            return pre * (pre > self.threshold)
        values, indices = self.topk(x)
        return torch.zeros(*x.shape[:-1], self.cfg.d_sae, dtype=values.dtype, device=x.device).scatter(
            -1, indices, values
        )

    def topk(self, x: Float[Tensor, "... d_in"]) -> tuple[Float[Tensor, "... k"], Int[Tensor, "... k"]]:
        """TopK only: the ``k`` largest (ReLU-ed) feature activations of each input and their feature indices."""
        return self._topk(self.pre_activations(x))

    def _topk(self, pre: Float[Tensor, "... d_sae"]) -> tuple[Float[Tensor, "... k"], Int[Tensor, "... k"]]:
        values, indices = pre.topk(self.cfg.k, dim=-1)
        return F.relu(values), indices

    def decode(self, f: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction ``W_dec^T f + b_dec``."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """Reconstruction of ``x`` through the features."""
        if self.cfg.activation != "topk":
            return self.decode(self.encode(x))
        values, indices = self.topk(x)
        return self._decode_topk(values, indices)

    def _decode_topk(self, values: Tensor, indices: Tensor) -> Tensor:
        # Sum k decoder rows per input instead of a dense (d_sae, d_in) matmul: ~2x faster training on CPU.
        flat_values, flat_indices = values.reshape(-1, self.cfg.k), indices.reshape(-1, self.cfg.k)
        x_hat = F.embedding_bag(flat_indices, self.W_dec, per_sample_weights=flat_values, mode="sum")
        return x_hat.view(*values.shape[:-1], self.cfg.d_in) + self.b_dec

    def save(self, path: str | Path, *, format: Literal["toolkit", "saelens", "gemma_scope"] = "toolkit") -> Path:
        """Write the SAE in one of three formats.

        Args:
            path: ``"toolkit"``: a directory (created if missing) with ``sae.safetensors`` and ``config.json``;
                ``"saelens"``: a directory with SAELens 6.x's ``cfg.json`` and ``sae_weights.safetensors`` (standard,
                TopK and JumpReLU architectures); ``"gemma_scope"``: a ``params.npz`` file (a directory is given
                ``params.npz`` inside it), JumpReLU only in that format, so a ReLU SAE is written with threshold 0.
            format: one of the three.

        Returns:
            The directory (toolkit, SAELens) or the ``.npz`` file (Gemma Scope).

        Raises:
            ValueError: the SAE cannot be written in that format (TopK as Gemma Scope), or an unknown format.
        """
        path = Path(path)
        if format == "toolkit":
            path.mkdir(parents=True, exist_ok=True)
            save_tensors(path / "sae.safetensors", dict(self.named_parameters()))
            save_json(path / "config.json", dataclasses.asdict(self.cfg))
            return path
        if format not in ("saelens", "gemma_scope"):
            raise ValueError(f"format must be 'toolkit', 'saelens' or 'gemma_scope', got {format!r}")
        weights = {name: p.detach() for name, p in self.named_parameters() if name != "log_threshold"}
        fields = dataclasses.asdict(self.cfg)
        if self.cfg.activation in ("jumprelu", "batchtopk"):
            weights["threshold"] = self.threshold.detach()
            fields["activation"] = "jumprelu"  # what BatchTopK is at inference (SAELens writes it so too)
        if format == "saelens":
            return sae_formats.write_saelens(path, fields, weights)
        return sae_formats.write_gemma_scope(path, fields, weights)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "SAE":
        """Load an SAE in any format :func:`load_sae` reads (the format is detected from the path's contents)."""
        return load_sae(path, device=device)


def load_sae(path: str | Path, *, device: str | torch.device = "cpu") -> SAE:
    """Load an SAE saved by the toolkit, by SAELens (6.x) or by Gemma Scope, detected from the path's contents.

    Args:
        path: a toolkit SAE directory (``config.json`` + ``sae.safetensors``); a SAELens directory (``cfg.json`` +
            ``sae_weights.safetensors``; architectures standard, topk, jumprelu); or Gemma Scope's ``params.npz``
            (or a directory holding it). Foreign SAEs reproduce their own ``encode`` and ``decode`` exactly: their
            conventions are carried by ``cfg.apply_b_dec_to_input`` and the JumpReLU threshold.
        device: where to put the SAE.

    Returns:
        The SAE in eval mode. Settings a foreign format does not record (learning rate, steps, ...) take their
        defaults.

    Raises:
        CheckpointError: (a ``ValueError``) the path is missing or is none of the three formats, a file is corrupt,
            keys are missing, or the shapes disagree with the config; the message names the file.
    """
    path = Path(path)
    kind = sae_formats.detect_format(path)
    if kind == "toolkit":
        fields = load_json(path / "config.json")
        source = path / "config.json"
        tensors, _ = load_tensors(path / "sae.safetensors")
        weights_file = path / "sae.safetensors"
    else:
        read = sae_formats.read_saelens if kind == "saelens" else sae_formats.read_gemma_scope
        fields, tensors, source, weights_file = read(path)
    try:
        cfg = SAEConfig(**fields)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source} is not a valid SAE config: {error}") from error
    if "threshold" in tensors:  # foreign JumpReLU: the toolkit keeps log(threshold), computed in float64
        tensors["log_threshold"] = tensors.pop("threshold").double().log().float()
    sae = SAE(cfg)
    expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    if found != expected:
        raise CheckpointError(f"{weights_file} holds {found}, but {source.name} describes {expected}")
    sae.load_state_dict({name: t.float() for name, t in tensors.items()})
    return sae.to(device).eval()
