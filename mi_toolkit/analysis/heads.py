"""Attention-head scores: how much each head attends where a head type should (TransformerLens's head detector).

Head scores follow TransformerLens's ``head_detector`` ("mul" measure): a detection pattern marks the
(query, key) pairs the head type should attend to, and the score is the attention on marked pairs divided by the
total attention. ``rows="all"`` divides by the attention of every query row (TL's exact number; a head can reach
at most the fraction of rows that have a marked key, e.g. ~0.5 for induction on ``[BOS, A, A]``);
``rows="marked"`` (default) divides by the attention of rows that have a marked key only, i.e. the mean attention
on the pattern where it is defined, the usual "induction score" that reaches 1 for a perfect head.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mi_toolkit.core.activations import run_until
from mi_toolkit.core.tl import HookedTransformer, get_act_name

__all__ = ["HEAD_TYPES", "detection_pattern", "head_scores", "induction_measures", "model_head_scores"]

HeadType = str  # one of HEAD_TYPES (a plain str, so a bad value gets a ValueError)
HEAD_TYPES: tuple[str, ...] = ("induction", "previous_token", "duplicate_token")


def detection_pattern(
    tokens: Int[Tensor, "batch pos"], head_type: HeadType
) -> Bool[Tensor, "batch query_pos key_pos"]:
    """Where a head of ``head_type`` should attend, per sequence, as in TransformerLens's ``head_detector``.

    - ``"previous_token"``: key = query - 1.
    - ``"duplicate_token"``: an earlier key with the same token as the query.
    - ``"induction"``: key = j + 1 for every earlier j whose token equals the query's (the token after a previous
      occurrence).

    Args:
        tokens: the input sequences.
        head_type: one of :data:`HEAD_TYPES`.

    Returns:
        A boolean mask, lower triangular (keys never after the query).
    """
    n = tokens.shape[1]
    before = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril(-1)  # key < query
    if head_type == "previous_token":
        return (torch.ones_like(before).tril(-1) & ~torch.ones_like(before).tril(-2)).expand(len(tokens), n, n)
    duplicate = (tokens[:, :, None] == tokens[:, None, :]) & before  # (batch, query, key)
    if head_type == "duplicate_token":
        return duplicate
    if head_type == "induction":
        # Shift keys right by one: query i marks key j + 1 if token j == token i (j < i, so j + 1 <= i).
        return F.pad(duplicate[:, :, :-1], (1, 0))
    raise ValueError(f"unknown head type {head_type!r}; expected one of {HEAD_TYPES}")


def head_scores(
    patterns: Float[Tensor, "batch layer head_index query_pos key_pos"],
    detection: Bool[Tensor, "batch query_pos key_pos"],
    *,
    rows: str = "marked",
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
) -> Float[Tensor, "layer head_index"]:
    """Attention on the detection pattern, per head, averaged over sequences (TL's ``"mul"`` error measure).

    Args:
        patterns: attention patterns of every layer (e.g. stacked ``cache["pattern", layer]``).
        detection: from :func:`detection_pattern`.
        rows: ``"marked"`` divides by the attention of query rows with at least one marked key (a perfect head
            scores 1); ``"all"`` by the attention of all rows, which is exactly TransformerLens's
            ``detect_head`` score (averaged over sequences as TL does for a list of prompts).
        exclude_bos: ignore attention to position 0 (TL's option of the same name).
        exclude_current_token: ignore attention to the query's own position (TL's option).

    Returns:
        The score of every head.
    """
    attention = patterns
    n = patterns.shape[-1]
    keep = torch.ones(n, n, dtype=torch.bool, device=patterns.device)
    if exclude_bos:
        keep[:, 0] = False
    if exclude_current_token:
        keep.fill_diagonal_(False)
    attention = attention * keep
    mask = detection[:, None, None].to(attention.dtype)  # (batch, 1, 1, query, key)
    on_pattern = (attention * mask).sum(-1)  # (batch, layer, head, query)
    total = attention.sum(-1)
    if rows == "marked":
        row_has_mark = detection.any(-1)[:, None, None].to(attention.dtype)  # (batch, 1, 1, query)
        on_pattern, total = on_pattern * row_has_mark, total * row_has_mark
    elif rows != "all":
        raise ValueError(f"rows must be 'marked' or 'all', got {rows!r}")
    return (on_pattern.sum(-1) / total.sum(-1)).mean(0)


def model_head_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    head_type: HeadType,
    **kwargs,
) -> Float[Tensor, "layer head_index"]:
    """:func:`head_scores` of ``model``'s heads on ``tokens`` (one forward pass caching the patterns only).

    Args:
        model: any ``HookedTransformer``.
        tokens: the input, e.g. :func:`repeated_tokens` for induction and previous-token heads.
        head_type: one of :data:`HEAD_TYPES`.
        **kwargs: ``rows``, ``exclude_bos``, ``exclude_current_token`` of :func:`head_scores`.

    Returns:
        The score of every head, ``[n_layers, n_heads]``.

    >>> from mi_toolkit.models import make_induction_model
    >>> from mi_toolkit.tasks import repeated_tokens
    >>> model = make_induction_model(d_model=16, n_heads=2, d_head=8)
    >>> model_head_scores(model, repeated_tokens(2, 5, 64), "induction").shape
    torch.Size([2, 2])
    """
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        cache = run_until(model, tokens, names)
    patterns = torch.stack([cache[name] for name in names], dim=1)
    return head_scores(patterns, detection_pattern(tokens, head_type), **kwargs)


def induction_measures(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> dict[str, float]:
    """The best induction score among the heads after layer 0 (or any head of a 1-layer model) and the best
    previous-token score in layer 0, on repeated sequences ``tokens`` (e.g. ``InductionTask.eval_tokens()``)."""
    names = [get_act_name("pattern", layer) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        cache = run_until(model, tokens, names)
    patterns = torch.stack([cache[name] for name in names], dim=1)  # (batch, layer, head, query, key)
    induction = head_scores(patterns, detection_pattern(tokens, "induction"))
    previous = head_scores(patterns, detection_pattern(tokens, "previous_token"))
    return {
        "induction_score": induction[1:].max().item() if model.cfg.n_layers > 1 else induction.max().item(),
        "prev_token_score": previous[0].max().item(),
    }
