"""Patching metrics: factories that return ``metric(logits) -> scalar`` ready for :mod:`mi_toolkit.analysis.patching`.

Every metric is differentiable (attribution patching takes its gradient) and averages over the batch, so it gives
the same number for one batch however many patched copies are run beside it; its ``per_example`` attribute gives the
values it averages (``[batch]``), for bootstrap intervals over examples. Each one also declares the positions
whose logits it reads (its ``positions`` attribute; :func:`reads` does the same for your own metrics), so that
:func:`mi_toolkit.analysis.patching.activation_patch` can skip the patches that cannot change them.

>>> logits = torch.zeros(2, 3, 5); logits[:, -1, 1] = 2.0
>>> logit_diff(torch.tensor([1, 1]), torch.tensor([0, 0]))(logits)
tensor(2.)
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from mi_toolkit.core.compat import renamed_kwargs
from mi_toolkit.core.losses import answer_loss as _answer_loss
from mi_toolkit.core.losses import next_token_loss
from mi_toolkit.core.types import Logits, Metric, Positions, Tokens

__all__ = [
    "answer_loss", "kl_to_clean", "logit_diff", "loss", "normalized", "normalized_distance", "normalized_logit_diff",
    "probability", "reads",
]

def reads(positions: Positions | None) -> Callable[[Metric], Metric]:
    """Declare the positions whose logits a metric reads (``None``: any).

    A patch that changes only other positions leaves such a metric at its corrupted value, and
    :func:`mi_toolkit.analysis.patching.activation_patch` fills that value in without running the patch. A metric that
    reads a position it does not declare gets wrong results there, so declare every position it reads.

    >>> @reads(-1)
    ... def last_logit(logits): return logits[:, -1, 0].mean()
    >>> last_logit.positions
    -1
    """

    def declare(metric: Metric) -> Metric:
        metric.positions = positions
        return metric

    return declare


def _averaged(per_example: Callable[[Logits], Float[Tensor, " batch"]], positions: Positions | None) -> Metric:
    """The metric ``per_example(logits).mean()``, carrying ``per_example`` and the positions it reads."""

    def metric(logits: Logits) -> Float[Tensor, ""]:
        return per_example(logits).mean()

    metric.per_example = per_example
    return reads(positions)(metric)


def _as_batch(tokens: Tokens) -> Tensor:
    return torch.as_tensor(tokens).long().reshape(-1)


@renamed_kwargs(pos="positions")
def logit_diff(correct: Tokens, incorrect: Tokens, positions: int = -1) -> Metric:
    """Mean over the batch of ``logits[positions, correct] - logits[positions, incorrect]``.

    Args:
        correct: the answer token, one per sequence (or one for all).
        incorrect: the competing token, one per sequence (or one for all).
        positions: the (one) position whose logits are read.

    Returns:
        ``metric(logits) -> scalar``.
    """
    correct, incorrect = _as_batch(correct), _as_batch(incorrect)

    def per_example(logits: Logits) -> Float[Tensor, " batch"]:
        last = logits[:, positions]  # (batch, d_vocab_out)
        rows = torch.arange(len(last), device=last.device)
        good = last[rows, correct.to(last.device).expand(len(last))]
        bad = last[rows, incorrect.to(last.device).expand(len(last))]
        return good - bad

    return _averaged(per_example, positions)


@renamed_kwargs(pos="positions")
def probability(tokens: Tokens, positions: int = -1) -> Metric:
    """Mean over the batch of the softmax probability of ``tokens`` at ``positions``.

    Args:
        tokens: the token whose probability is read, one per sequence (or one for all).
        positions: the (one) position whose logits are read.
    """
    tokens = _as_batch(tokens)

    def per_example(logits: Logits) -> Float[Tensor, " batch"]:
        probs = logits[:, positions].softmax(-1)
        rows = torch.arange(len(probs), device=probs.device)
        return probs[rows, tokens.to(probs.device).expand(len(probs))]

    return _averaged(per_example, positions)


def loss(tokens: Int[Tensor, "batch pos"], positions: Positions | None = None) -> Metric:
    """Next-token cross-entropy: logits at position i predict ``tokens[:, i + 1]``.

    Args:
        tokens: the sequences whose continuation is scored (usually the clean input).
        positions: the predicting positions to average over (in ``0 .. pos - 2``); default all.

    Returns:
        ``metric(logits) -> mean loss`` over the batch and the chosen positions.
    """
    tokens = tokens.long()
    n_pos = tokens.shape[1]
    chosen = torch.arange(n_pos - 1)
    if positions is not None:
        chosen = chosen[positions].reshape(-1)

    def metric(logits: Logits) -> Float[Tensor, ""]:
        return next_token_loss(logits, tokens.to(logits.device), chosen.to(logits.device))

    def per_example(logits: Logits) -> Float[Tensor, " batch"]:
        where = chosen.to(logits.device)
        predicting, targets = logits[:, where], tokens.to(logits.device)[:, where + 1]
        return F.cross_entropy(predicting.transpose(1, 2), targets, reduction="none").mean(-1)

    metric.per_example = per_example
    return reads(chosen.tolist())(metric)


@renamed_kwargs(pos="positions")
def answer_loss(answers: Tokens, positions: int = -1) -> Metric:
    """Cross-entropy of the answer token at one position (e.g. ``(a + b) mod p`` at the '=' token).

    Args:
        answers: the correct token, one per sequence (or one for all).
        positions: the (one) position whose logits are scored.
    """
    answers = _as_batch(answers)

    def metric(logits: Logits) -> Float[Tensor, ""]:
        last = logits[:, positions]
        return _answer_loss(last, answers.to(last.device).expand(len(last)))

    def per_example(logits: Logits) -> Float[Tensor, " batch"]:
        last = logits[:, positions]
        return F.cross_entropy(last, answers.to(last.device).expand(len(last)), reduction="none")

    metric.per_example = per_example
    return reads(positions)(metric)


@renamed_kwargs(pos="positions")
def kl_to_clean(clean_logits: Logits, positions: Positions | None = -1) -> Metric:
    """KL(clean || patched) of the next-token distributions, summed over the vocabulary, averaged over the rest.

    Args:
        clean_logits: logits of the clean run.
        positions: positions compared (default the last; None: all).
    """
    where = slice(None) if positions is None else positions
    clean_log_probs = clean_logits.detach()[:, where].log_softmax(-1)

    def per_example(logits: Logits) -> Float[Tensor, " batch"]:
        log_probs = logits[:, where].log_softmax(-1)
        reference = clean_log_probs.to(log_probs.device)
        kl = (reference.exp() * (reference - log_probs)).sum(-1)  # (batch,) or (batch, pos)
        return kl if kl.ndim == 1 else kl.mean(-1)

    return _averaged(per_example, positions)


def normalized(metric: Metric, clean_logits: Logits, corrupted_logits: Logits) -> Metric:
    """Rescale ``metric`` so that the clean run scores 1 and the corrupted run 0.

    Args:
        metric: any metric.
        clean_logits: logits of the clean run.
        corrupted_logits: logits of the corrupted run.

    Returns:
        ``(metric(x) - metric(corrupted)) / (metric(clean) - metric(corrupted))``.

    Raises:
        ValueError: the metric does not tell the clean and corrupted runs apart.
    """
    with torch.no_grad():
        clean = metric(clean_logits).item()
        corrupted = metric(corrupted_logits).item()
    if clean == corrupted:
        raise ValueError(f"the metric is {clean} on both the clean and the corrupted run; cannot normalise")

    def rescaled(logits: Logits) -> Float[Tensor, ""]:
        return (metric(logits) - corrupted) / (clean - corrupted)

    if hasattr(metric, "per_example"):
        rescaled.per_example = lambda logits: (metric.per_example(logits) - corrupted) / (clean - corrupted)
    return reads(getattr(metric, "positions", None))(rescaled)


def normalized_distance(metric: Metric, clean_logits: Logits, corrupted_logits: Logits) -> Metric:
    """``1 - normalized(metric, ...)``: 0 at the clean run, 1 at the corrupted run, lower is closer to clean: the
    kind of metric :func:`mi_toolkit.analysis.circuits.acdc` minimises, made from a score where higher is better
    (faithfulness under it equals faithfulness under ``metric``, the map being affine). Reads the positions
    ``metric`` reads and carries ``per_example`` where ``metric`` does."""
    score = normalized(metric, clean_logits, corrupted_logits)

    def distance(logits: Logits) -> Float[Tensor, ""]:
        return 1 - score(logits)

    if hasattr(score, "per_example"):
        distance.per_example = lambda logits: 1 - score.per_example(logits)
    return reads(getattr(score, "positions", None))(distance)


@renamed_kwargs(pos="positions")
def normalized_logit_diff(
    correct: Tokens, incorrect: Tokens, clean_logits: Logits, corrupted_logits: Logits, positions: int = -1
) -> Metric:
    """:func:`logit_diff` rescaled so that clean = 1 and corrupted = 0 (see :func:`normalized`)."""
    return normalized(logit_diff(correct, incorrect, positions), clean_logits, corrupted_logits)
