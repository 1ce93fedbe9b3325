"""Splicing a sparse autoencoder into a model: the loss it costs, against the clean model and against ablating the
hook it replaces, ``(L_ablated - L_sae) / (L_ablated - L_clean)``."""

import dataclasses

import torch
from jaxtyping import Int
from torch import Tensor

from mi_toolkit.core.activations import ActivationStream
from mi_toolkit.core.compat import renamed_kwargs
from mi_toolkit.core.tl import HookedTransformer, check_hook_name
from mi_toolkit.core.types import Metric, Positions
from mi_toolkit.analysis.metrics import loss
from mi_toolkit.interventions.ablation import ablate
from mi_toolkit.interventions.steering import splice_sae
from mi_toolkit.models.sae import SAE

__all__ = ["LossRecovered", "ce_loss_recovered"]


@dataclasses.dataclass(frozen=True)
class LossRecovered:
    """The model's loss clean, with the SAE spliced in, and with the hook zero- or mean-ablated."""

    clean: float
    sae: float
    zero_ablated: float
    mean_ablated: float

    @property
    def recovered_vs_zero(self) -> float:
        """``(L_zero - L_sae) / (L_zero - L_clean)``: 1 when the SAE costs nothing, 0 when it is as bad as zeros."""
        return (self.zero_ablated - self.sae) / (self.zero_ablated - self.clean)

    @property
    def recovered_vs_mean(self) -> float:
        """As :attr:`recovered_vs_zero`, against mean ablation (the harder baseline when zero is far off)."""
        return (self.mean_ablated - self.sae) / (self.mean_ablated - self.clean)


@renamed_kwargs(loss_fn="metric")
def ce_loss_recovered(
    model: HookedTransformer,
    sae: SAE,
    hook_name: str,
    tokens: Int[Tensor, "batch pos"],
    *,
    positions: Positions | None = None,
    metric: Metric | None = None,
) -> LossRecovered:
    """Cross-entropy loss with the SAE spliced in at ``hook_name``, against the clean and ablated model.

    Args:
        model: the model the SAE was trained on.
        sae: the SAE.
        hook_name: where it reads and is spliced in.
        tokens: an evaluation batch (one forward pass each).
        positions: the positions the SAE replaces (and the ablations ablate); None for all.
        metric: the loss, ``metric(logits) -> scalar``; default next-token cross-entropy on ``tokens``. For a
            last-position task, ``mt.metrics.answer_loss(task.labels)``.

    Returns:
        A :class:`LossRecovered`.

    Raises:
        ValueError: unknown hook name, or an SAE whose ``d_in`` does not match the hook's activation.
    """
    check_hook_name(model, hook_name)
    if metric is None:
        metric = loss(tokens)

    stream = ActivationStream(model, hook_name, tokens[:1], positions)
    if stream.d_in != sae.cfg.d_in:
        raise ValueError(f"hook {hook_name!r} has activations of size {stream.d_in}, the SAE reads {sae.cfg.d_in}")
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=hook_name)
        index = () if positions is None else (positions,)
        runs = {
            "sae": splice_sae(sae, positions=positions),
            "zero_ablated": ablate(index, "zero"),
            "mean_ablated": ablate(index, "mean", reference=cache[hook_name]),
        }
        losses = {"clean": metric(logits).item()}
        for name, hook in runs.items():
            with model.hooks(fwd_hooks=[(hook_name, hook)]):
                losses[name] = metric(model(tokens)).item()
    return LossRecovered(**losses)
