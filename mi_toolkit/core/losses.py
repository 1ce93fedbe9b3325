"""The one cross-entropy of mi_toolkit: the loss of answer tokens, at one position or at several.

Tasks train on it, metrics score patches with it, ablations and SAE splices measure with it.
"""

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mi_toolkit.core.types import Positions

__all__ = ["answer_loss", "next_token_loss"]

_IGNORED = -100
"""The target index that ``F.cross_entropy`` skips."""


def answer_loss(
    logits: Float[Tensor, "n d_vocab_out"], answers: Int[Tensor, " n"], *, dtype: torch.dtype | None = None
) -> Float[Tensor, ""]:
    """Mean cross-entropy of ``answers`` under ``logits`` (one row per answer).

    Args:
        logits: the logits at the answer positions, one row per answer.
        answers: the correct token of each row.
        dtype: compute in this dtype (Nanda et al. use float64: the grokking loss falls to ~1e-7); default the
            logits' own.
    """
    if dtype is not None:
        logits = logits.to(dtype)
    return F.cross_entropy(logits, answers)


def next_token_loss(
    logits: Float[Tensor, "batch pos d_vocab_out"],
    tokens: Int[Tensor, "batch pos"],
    positions: Positions | Bool[Tensor, "batch pos_minus_1"] | None = None,
) -> Float[Tensor, ""]:
    """Next-token cross-entropy: the logits at position ``i`` predict ``tokens[:, i + 1]``.

    Args:
        logits: the model's logits for ``tokens``.
        tokens: the sequences.
        positions: the predicting positions (in ``0 .. pos - 2``): indices shared by every sequence, a boolean
            mask ``[batch, pos - 1]`` per sequence, or None for all.
    """
    if positions is None:
        # Every position: the last one's target is ignored rather than its logits sliced off, which spares a copy of
        # the logits and a zero-filled gradient of their size (a language model's step: 0.49 -> 0.41 s; README).
        targets = torch.full_like(tokens, _IGNORED, dtype=torch.long)
        targets[:, :-1] = tokens[:, 1:]
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=_IGNORED)
    predicting, targets = logits[:, :-1], tokens[:, 1:]
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        return answer_loss(predicting[positions], targets[positions])
    predicting, targets = predicting[:, positions], targets[:, positions]
    return answer_loss(predicting.flatten(0, 1), targets.flatten())
