"""What a set of SAE features fire on and what they do: the numbers behind a feature dashboard (sae_vis,
Neuronpedia). :func:`mi_toolkit.plot.feature_dashboard` draws them as one self-contained HTML page.

For each feature: its top-activating contexts (a window of tokens around each maximum, with every token's
activation), the histogram of its non-zero activations and its firing density over ``tokens``; its direct logit
effects, the decoder direction carried to the unembedding (``W_dec @ W_U`` for a residual-stream, ``attn_out`` or
``mlp_out`` hook; through ``W_out`` for MLP neurons, through ``W_O`` for ``hook_z``); and, for an SAE on MLP neurons,
its neuron alignment (the neurons with the largest decoder weights, and the share of the decoder's squared norm in
the top one).
"""

import dataclasses
import re
from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.core.activations import ActivationStream
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.models.sae import SAE

__all__ = ["FeatureDashboard", "feature_dashboard_data", "unembed_directions"]

_RESIDUAL = re.compile(r"^(hook_embed|hook_pos_embed|blocks\.\d+\.(hook_resid_(pre|mid|post)|hook_(attn|mlp)_out))$")
_NEURONS = re.compile(r"^blocks\.(\d+)\.mlp\.hook_(post|pre)$")
_HEADS = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


@dataclasses.dataclass(frozen=True)
class FeatureDashboard:
    """Dashboard numbers for ``features`` of one SAE at ``hook_name`` over a set of token sequences."""

    hook_name: str
    """Where the SAE reads."""
    sae_cfg: object
    """The SAE's ``cfg`` (``d_in``, ``d_sae``, ``activation``, ...)."""
    features: Int[Tensor, " n_features"]
    """The features described, in the order given."""
    n_tokens: int
    """Token positions the statistics are over."""
    max_activation: Float[Tensor, " n_features"]
    """Each feature's largest activation."""
    density: Float[Tensor, " n_features"]
    """Fraction of token positions on which each feature fires."""
    context_tokens: Int[Tensor, "n_features k window"]
    """Token ids of the top contexts, ``window_before`` tokens before the maximum and the rest after; -1 pads."""
    context_activations: Float[Tensor, "n_features k window"]
    """The feature's activation on every token of those contexts."""
    context_values: Float[Tensor, "n_features k"]
    """Activation at each context's maximum, descending; 0 marks a missing context (the feature fired less often)."""
    context_sequence: Int[Tensor, "n_features k"]
    """Row of ``tokens`` each context comes from."""
    context_position: Int[Tensor, "n_features k"]
    """Position of its maximum in that row."""
    window_before: int
    """Index of the maximum within each context window."""
    histogram_edges: Float[Tensor, "n_features n_edges"]
    """Bin edges of each feature's histogram of non-zero activations (0 to its maximum)."""
    histogram_counts: Int[Tensor, "n_features n_bins"]
    """Token positions per bin."""
    logit_note: str
    """How the logit effects were computed, or why there are none."""
    logit_top_tokens: Int[Tensor, "n_features n_logits"] | None
    """Tokens whose logits the feature raises most (None: no linear path from the hook to the unembedding)."""
    logit_top_values: Float[Tensor, "n_features n_logits"] | None
    """Their logit effects per unit of feature activation."""
    logit_bottom_tokens: Int[Tensor, "n_features n_logits"] | None
    """Tokens whose logits it lowers most."""
    logit_bottom_values: Float[Tensor, "n_features n_logits"] | None
    """Their (negative) logit effects."""
    neuron_indices: Int[Tensor, "n_features n_neurons"] | None
    """MLP-neuron hooks only: the neurons with the largest ``|W_dec|`` entries of each feature."""
    neuron_weights: Float[Tensor, "n_features n_neurons"] | None
    """Their (signed) decoder weights."""
    top_neuron_fraction: Float[Tensor, " n_features"] | None
    """Share of each decoder row's squared norm in its top neuron (1: the feature is a single neuron)."""
    token_strings: dict[int, str]
    """Text of every token id shown (contexts and logit effects): the model's tokenizer, the ``decode`` passed, or
    the id itself for a model without a tokenizer."""


def unembed_directions(
    model: HookedTransformer, hook_name: str, directions: Float[Tensor, "n d_in"]
) -> tuple[Float[Tensor, "n d_vocab"] | None, str]:
    """Direct logit effects of ``directions`` written at ``hook_name``: carried to the residual stream (through
    ``W_out`` for MLP neurons, ``W_O`` for ``hook_z``), through the final norm's weight (centred for LayerNorm;
    the norm's data-dependent scale is left out) and ``W_U``.

    Returns:
        ``(effects, note)``; ``effects`` is None where the hook has no linear path to the unembedding (e.g. queries,
        MLP pre-activations), and ``note`` says how they were computed or why not.
    """
    directions = directions.detach().to(model.W_U.device, model.W_U.dtype)
    if _RESIDUAL.match(hook_name):
        resid, path = directions, "W_dec @ W_U"
    elif (m := _NEURONS.match(hook_name)) and m.group(2) == "post":
        resid, path = directions @ model.blocks[int(m.group(1))].mlp.W_out, f"W_dec @ W_out[{m.group(1)}] @ W_U"
    elif m := _HEADS.match(hook_name):
        W_O = model.blocks[int(m.group(1))].attn.W_O  # (head_index, d_head, d_model)
        resid, path = directions @ W_O.reshape(-1, W_O.shape[-1]), f"W_dec @ W_O[{m.group(1)}] @ W_U"
    else:
        return None, f"no logit effects: {hook_name} has no linear path to the unembedding"
    norm = model.cfg.normalization_type
    if norm in ("LN", "LNPre"):
        resid = resid - resid.mean(-1, keepdim=True)
    weight = getattr(getattr(model, "ln_final", None), "w", None)
    if weight is not None:
        resid = resid * weight
    note = f"direct effect per unit activation, {path}" + (f" (through ln_final: {norm})" if norm else "")
    return resid @ model.W_U, note


def _token_strings(model: HookedTransformer, ids: list[int], decode: Callable[[int], str] | None) -> dict[int, str]:
    if decode is not None:
        return {i: decode(i) for i in ids}
    if getattr(model, "tokenizer", None) is not None and ids:
        return dict(zip(ids, model.to_str_tokens(torch.tensor(ids))))
    return {i: str(i) for i in ids}


def feature_dashboard_data(
    sae: SAE,
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    features: Int[Tensor, " n_features"] | Sequence[int],
    *,
    hook_name: str,
    k: int = 10,
    window: tuple[int, int] = (12, 4),
    n_bins: int = 30,
    n_logits: int = 10,
    n_neurons: int = 5,
    decode: Callable[[int], str] | None = None,
    batch_size: int = 64,
) -> FeatureDashboard:
    """Top contexts, activation histograms, logit effects and neuron alignment of ``features``.

    Args:
        sae: the SAE.
        model: the model it reads.
        tokens: the sequences to search (every position is read; one pass, run only up to the hook).
        features: feature indices.
        hook_name: the SAE's hook point.
        k: top contexts per feature.
        window: tokens shown ``(before, after)`` each context's maximum.
        n_bins: histogram bins.
        n_logits: tokens listed for the positive and for the negative logit effects.
        n_neurons: neurons listed per feature (MLP-neuron hooks).
        decode: ``token id -> text``; default the model's tokenizer, or the id itself when it has none.
        batch_size: sequences per forward pass.

    Returns:
        A :class:`FeatureDashboard`.

    Raises:
        ValueError: unknown hook, a feature out of range, or an SAE whose ``d_in`` does not fit the hook.
    """
    features = torch.as_tensor(features, dtype=torch.long).reshape(-1)
    if len(features) == 0 or features.min() < 0 or features.max() >= sae.cfg.d_sae:
        raise ValueError(f"features must be a non-empty list of indices in [0, {sae.cfg.d_sae}), got {features}")
    stream = ActivationStream(model, hook_name, tokens, None, batch_size)
    if stream.d_in != sae.cfg.d_in:
        raise ValueError(f"hook {hook_name!r} has activations of size {stream.d_in}, the SAE reads {sae.cfg.d_in}")
    n_seq, n_pos = tokens.shape
    with torch.no_grad():
        acts = torch.cat([sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype))[:, features].float().cpu()
                          for x in stream])  # (n_seq * n_pos, n_features)
    max_activation, density = acts.max(0).values, (acts > 0).float().mean(0)

    values, rows = acts.topk(min(k, len(acts)), dim=0)  # (k, n_features)
    values, rows = values.T.clamp_min(0), rows.T
    sequence, position = rows // n_pos, rows % n_pos
    offsets = torch.arange(-window[0], window[1] + 1)
    window_pos = position[..., None] + offsets  # (n_features, k, window)
    inside = (window_pos >= 0) & (window_pos < n_pos) & (values[..., None] > 0)
    flat = sequence[..., None] * n_pos + window_pos.clamp(0, n_pos - 1)
    feature_index = torch.arange(len(features))[:, None, None].expand_as(flat)
    context_acts = torch.where(inside, acts[flat, feature_index], 0.0)
    context_tokens = torch.where(inside, tokens.cpu().reshape(-1)[flat], -1)

    edges = torch.stack([torch.linspace(0, max(m, 1e-8), n_bins + 1) for m in max_activation.tolist()])
    counts = torch.stack([torch.histc(acts[:, j][acts[:, j] > 0], bins=n_bins, min=0, max=edges[j, -1].item())
                          for j in range(len(features))]).long()

    W_dec = sae.W_dec.detach()[features].float()
    effects, note = unembed_directions(model, hook_name, W_dec)
    logits = [None] * 4
    if effects is not None:
        n = min(n_logits, effects.shape[-1])
        top, bottom = effects.cpu().topk(n, dim=-1), effects.cpu().topk(n, dim=-1, largest=False)
        logits = [top.indices, top.values, bottom.indices, bottom.values]
    neurons = [None] * 3
    if _NEURONS.match(hook_name):
        w = W_dec.cpu()
        top_neurons = w.abs().topk(min(n_neurons, w.shape[-1]), dim=-1).indices
        share = w.pow(2).max(-1).values / w.pow(2).sum(-1).clamp_min(1e-30)
        neurons = [top_neurons, w.gather(-1, top_neurons), share]

    shown = set(context_tokens[context_tokens >= 0].tolist())
    for ids in (logits[0], logits[2]):
        if ids is not None:
            shown |= set(ids.reshape(-1).tolist())
    return FeatureDashboard(
        hook_name, sae.cfg, features, len(acts), max_activation, density, context_tokens, context_acts, values,
        sequence, position, window[0], edges, counts, note, *logits, *neurons,
        _token_strings(model, sorted(shown), decode),
    )
