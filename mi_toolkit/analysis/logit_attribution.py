"""Direct logit attribution and the logit lens, on top of TransformerLens's ``ActivationCache``.

The residual stream before the unembedding is a sum of component outputs (embeddings, each head, each MLP
neuron), so a logit (or a logit difference) splits into one term per component once the final LayerNorm's scale
is frozen at its cached value. TL's cache does the splitting (``stack_head_results``, ``decompose_resid``,
``stack_neuron_results``, ``accumulated_resid``) and the LayerNorm (``apply_ln_to_stack``); this module picks the
unembedding direction, including the final LayerNorm's weight when the model has one that is not folded (TL's
``logit_attrs`` leaves it out), and averages over the batch.

For a model without LayerNorm the attributions of :func:`layer_attribution` add up to the logit difference minus
the unembedding bias.
"""

import dataclasses

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.core.compat import renamed_kwargs
from mi_toolkit.core.tl import ActivationCache
from mi_toolkit.core.types import Tokens

__all__ = ["Attribution", "LogitLens", "head_attribution", "layer_attribution", "logit_lens", "neuron_attribution"]



@dataclasses.dataclass(frozen=True)
class Attribution:
    """One number per named component."""

    values: Float[Tensor, " component"]
    labels: list[str]


def _directions(cache: ActivationCache, correct: Tokens, incorrect: Tokens | None) -> Float[Tensor, "batch d_model"]:
    """Unembedding direction of ``correct - incorrect`` in the space after the final LayerNorm's normalisation."""
    model = cache.model
    correct = torch.as_tensor(correct, device=model.W_U.device).long().reshape(-1)
    direction = model.W_U[:, correct].T  # (batch or 1, d_model)
    if incorrect is not None:
        incorrect = torch.as_tensor(incorrect, device=model.W_U.device).long().reshape(-1)
        direction = direction - model.W_U[:, incorrect].T
    # LN and RMS norms scale each feature; LNPre has no weight, and models without normalisation no ln_final.
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    return direction if weight is None else direction * weight


def _attribute(cache: ActivationCache, stack: Tensor, correct, incorrect, positions: int) -> Float[Tensor, " component"]:
    """Mean over the batch of each component's contribution to the logit (difference) at ``positions``."""
    scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=positions)  # (component, batch, d_model)
    directions = _directions(cache, correct, incorrect)
    return (scaled * directions).sum(-1).mean(-1)


@renamed_kwargs(pos="positions")
def head_attribution(
    cache: ActivationCache, correct: Tokens, incorrect: Tokens | None = None, positions: int = -1
) -> Float[Tensor, "layer head_index"]:
    """Direct logit attribution of every attention head (without ``b_O``), averaged over the batch.

    Args:
        cache: a cache of the whole model (``model.run_with_cache(tokens)``), with its batch axis.
        correct: the token(s) whose logit is attributed, one per sequence or one for all.
        incorrect: if given, attribute the logit difference ``correct - incorrect``.
        positions: the (one) position whose logits are attributed.

    Returns:
        ``[n_layers, n_heads]``.
    """
    cfg = cache.model.cfg
    stack = cache.stack_head_results(layer=-1, pos_slice=positions)  # (layer * head, batch, d_model)
    return _attribute(cache, stack, correct, incorrect, positions).view(cfg.n_layers, cfg.n_heads)


@renamed_kwargs(pos="positions")
def layer_attribution(
    cache: ActivationCache, correct: Tokens, incorrect: Tokens | None = None, positions: int = -1
) -> Attribution:
    """Direct logit attribution of the embeddings and of every attention and MLP layer (biases included).

    Args:
        cache: a cache of the whole model, with its batch axis.
        correct: the token(s) whose logit is attributed.
        incorrect: if given, attribute the logit difference.
        positions: the (one) position whose logits are attributed.

    Returns:
        Values and TL's labels (``"embed"``, ``"pos_embed"``, ``"0_attn_out"``, ``"0_mlp_out"``, ...).
    """
    stack, labels = cache.decompose_resid(layer=-1, pos_slice=positions, return_labels=True)
    return Attribution(_attribute(cache, stack, correct, incorrect, positions), labels)


@renamed_kwargs(pos="positions")
def neuron_attribution(
    cache: ActivationCache, correct: Tokens, incorrect: Tokens | None = None, positions: int = -1
) -> Float[Tensor, "layer d_mlp"]:
    """Direct logit attribution of every MLP neuron (without ``b_out``), averaged over the batch.

    Args:
        cache: a cache of the whole model (with MLPs), with its batch axis.
        correct: the token(s) whose logit is attributed.
        incorrect: if given, attribute the logit difference.
        positions: the (one) position whose logits are attributed.

    Returns:
        ``[n_layers, d_mlp]``.
    """
    cfg = cache.model.cfg
    if cfg.attn_only:
        raise ValueError("the model is attention-only: it has no neurons")
    stack = cache.stack_neuron_results(layer=cfg.n_layers, pos_slice=positions)  # (layer * d_mlp, batch, d_model)
    return _attribute(cache, stack, correct, incorrect, positions).view(cfg.n_layers, cfg.d_mlp)


@dataclasses.dataclass(frozen=True)
class LogitLens:
    """Logits read off the residual stream before each layer (and after the last)."""

    logits: Float[Tensor, "component batch pos d_vocab_out"]
    labels: list[str]
    """TL's labels: ``"0_pre"``, ``"1_pre"``, ..., ``"final_post"`` (and ``"i_mid"`` with ``incl_mid``)."""

    def next_token_log_probs(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "component batch pos_minus_1"]:
        """Log-probability each layer's logits give to the actual next token (position i scores token i + 1)."""
        log_probs = self.logits[:, :, :-1].log_softmax(-1)
        index = tokens[None, :, 1:, None].expand(len(log_probs), -1, -1, 1).to(log_probs.device)
        return log_probs.gather(-1, index).squeeze(-1)


def logit_lens(cache: ActivationCache, *, incl_mid: bool = False) -> LogitLens:
    """The logit lens: unembed the accumulated residual stream at every layer.

    TL's ``accumulated_resid(apply_ln=True)`` runs the final LayerNorm on each layer's stream with its own
    statistics (recomputed, not the cached final scale); this unembeds the result.

    Args:
        cache: a cache of the whole model, with its batch axis.
        incl_mid: also read the stream between attention and MLP.

    Returns:
        Logits per component and TL's component labels.
    """
    model = cache.model
    stack, labels = cache.accumulated_resid(incl_mid=incl_mid, apply_ln=True, return_labels=True)
    logits = stack @ model.W_U + model.b_U
    return LogitLens(logits, labels)

