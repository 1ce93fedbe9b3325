"""How toy models of superposition represent their features: norms, interference, dimensions per feature
(Elhage et al. 2022)."""

import dataclasses

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.models.toy import ToyModel

__all__ = ["SuperpositionMetrics", "superposition_metrics"]


@dataclasses.dataclass(frozen=True)
class SuperpositionMetrics:
    """How each instance of a toy model represents its features."""

    feature_probability: Float[Tensor, " instance"]
    """Feature probability of each instance (sparsity is ``1 - feature_probability``)."""
    norms: Float[Tensor, "instance n_features"]
    """``||W_i||``: about 1 for a represented feature, about 0 for a dropped one."""
    interference: Float[Tensor, "instance n_features"]
    """``sum_{j != i} (W_i_hat . W_j)^2``: how much other features leak into feature i's direction."""
    dimensions_per_feature: Float[Tensor, "instance n_features"]
    """``D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2`` (1 for an orthogonal feature, 1/2 for an antipodal pair)."""
    n_represented: Int[Tensor, " instance"]
    """Features with ``||W_i|| > 0.5``."""
    d_hidden: int
    """m, so that ``n_represented / d_hidden`` is features per dimension."""


def superposition_metrics(model: ToyModel, *, norm_threshold: float = 0.5) -> SuperpositionMetrics:
    """Per-feature norm, interference and dimensionality of every instance.

    Args:
        model: a (trained) toy model.
        norm_threshold: a feature counts as represented when its column of W is longer than this.

    Returns:
        A :class:`SuperpositionMetrics`.
    """
    W = model.W.detach().float().cpu()  # (instance, d_hidden, n_features)
    norms = W.norm(dim=1)
    W_hat = W / norms.clamp_min(1e-8)[:, None, :]
    overlaps = torch.einsum("ihn,ihk->ink", W_hat, W) ** 2  # (W_i_hat . W_j)^2 as (instance, i, j)
    interference = overlaps.sum(-1) - overlaps.diagonal(dim1=1, dim2=2)
    dims = norms**2 / overlaps.sum(-1).clamp_min(1e-12)
    return SuperpositionMetrics(
        feature_probability=model.feature_probability.detach().cpu(),
        norms=norms,
        interference=interference,
        dimensions_per_feature=dims,
        n_represented=(norms > norm_threshold).sum(-1),
        d_hidden=model.cfg.d_hidden,
    )
