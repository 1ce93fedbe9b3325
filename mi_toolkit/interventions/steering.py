"""Interventions with SAE features: splice an SAE in, clamp or scale a feature, add a direction.

Every factory returns a forward hook ``fn(activation, hook) -> activation`` (the same form as the ablation and
patching hooks), to attach with ``model.hooks(fwd_hooks=[(hook_name, fn)])`` or ``model.run_with_hooks``; several
hooks, at one point or many, compose by listing them. ``positions`` picks the sequence positions to edit (an index,
a slice, or None for all), as in :class:`mi_toolkit.core.activations.ActivationStream`.

Clamping and scaling keep the SAE's reconstruction error: only the chosen feature's contribution
``f_i W_dec[i]`` changes, so an unchanged feature leaves the activation exactly as it was.

>>> from mi_toolkit.models import SAE, SAEConfig
>>> sae = SAE(SAEConfig(d_in=4, d_sae=8))
>>> x = torch.randn(2, 3, 4)
>>> torch.equal(scale_feature(sae, 0, 1.0)(x, None), x)
True
"""

import torch
from jaxtyping import Float
from torch import Tensor

from mi_toolkit.core.activations import apply_at_positions
from mi_toolkit.core.types import HookFn, Positions
from mi_toolkit.models.sae import SAE

__all__ = ["add_direction", "clamp_feature", "scale_feature", "splice_sae"]


def _check_fits(sae: SAE, activation: Tensor, hook) -> None:
    """An SAE reads activations of ``d_in`` entries per position; say which hook it does not fit."""
    size = activation[0, 0].numel()
    if size != sae.cfg.d_in:
        name = getattr(hook, "name", None) or "this hook"
        raise ValueError(f"the SAE reads d_in = {sae.cfg.d_in}, but the activation at hook {name!r} has {size} "
                         f"entries per position (shape {tuple(activation.shape)})")


def splice_sae(sae: SAE, *, positions: Positions | None = None) -> HookFn:
    """Replace the activation with the SAE's reconstruction (error term dropped).

    Args:
        sae: an SAE trained on this hook's activations.
        positions: positions to replace; the others pass through unchanged.

    Returns:
        A forward hook; it raises ``ValueError`` naming the hook if the SAE's ``d_in`` does not fit the activation.
    """

    def hook(activation: Tensor, hook) -> Tensor:
        _check_fits(sae, activation, hook)
        return apply_at_positions(activation, positions, lambda x: sae(x.to(sae.W_dec.dtype)))

    return hook


def _edit_feature(sae: SAE, feature: int, new_value, positions: Positions | None) -> HookFn:
    """Shared body of clamp and scale: ``x + (new_value(f_i) - f_i) W_dec[i]``."""
    if not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(f"feature must be in [0, {sae.cfg.d_sae}), got {feature}")

    def edit(x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_in"]:
        f_i = sae.encode(x.to(sae.W_dec.dtype))[:, feature : feature + 1]  # (n, 1)
        return x + (new_value(f_i) - f_i) * sae.W_dec[feature]

    def hook(activation: Tensor, hook) -> Tensor:
        _check_fits(sae, activation, hook)
        return apply_at_positions(activation, positions, edit)

    return hook


def clamp_feature(sae: SAE, feature: int, value: float, *, positions: Positions | None = None) -> HookFn:
    """Set feature ``feature`` to ``value`` (e.g. 0 to switch it off, or a multiple of its max activation).

    Args:
        sae: an SAE trained on this hook's activations.
        feature: the feature's index.
        value: its new activation.
        positions: positions to edit.

    Returns:
        A forward hook adding ``(value - f_i) * W_dec[feature]`` to the activation.
    """
    return _edit_feature(sae, feature, lambda f_i: torch.full_like(f_i, value), positions)


def scale_feature(sae: SAE, feature: int, factor: float, *, positions: Positions | None = None) -> HookFn:
    """Multiply feature ``feature``'s activation by ``factor`` (0 ablates it; 1 is a no-op).

    Args:
        sae: an SAE trained on this hook's activations.
        feature: the feature's index.
        factor: the multiplier.
        positions: positions to edit.

    Returns:
        A forward hook adding ``(factor - 1) * f_i * W_dec[feature]`` to the activation.
    """
    return _edit_feature(sae, feature, lambda f_i: f_i * factor, positions)


def add_direction(
    direction: Float[Tensor, " d_in"], coefficient: float = 1.0, *, positions: Positions | None = None
) -> HookFn:
    """Add ``coefficient * direction`` to the activation (activation addition; e.g. an SAE decoder row).

    Args:
        direction: a vector the size of the (flattened) activation, e.g. ``sae.W_dec[i]``.
        coefficient: how much of it to add.
        positions: positions to edit.

    Returns:
        A forward hook.
    """
    direction = direction.detach()

    def hook(activation: Tensor, hook) -> Tensor:
        if activation[0, 0].numel() != direction.numel():
            raise ValueError(
                f"direction has {direction.numel()} entries but the activation at {getattr(hook, 'name', 'the hook')}"
                f" has {activation[0, 0].numel()} per position"
            )
        step = coefficient * direction.to(activation.device, activation.dtype)
        return apply_at_positions(activation, positions, lambda x: x + step)

    return hook
