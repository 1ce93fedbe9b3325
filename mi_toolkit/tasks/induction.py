"""Induction: sequences of random tokens with a repeated segment, where the next token is predictable only by
copying (after ``... A B ... A`` predict ``B``).

A 2-layer attention-only transformer learns this with two heads (Olsson et al. 2022): a layer-0 previous-token head
and a layer-1 induction head; :mod:`mi_toolkit.analysis.heads` scores them.
"""

import dataclasses

import torch
from jaxtyping import Int
from torch import Tensor

from mi_toolkit.core.losses import next_token_loss
from mi_toolkit.core.tl import HookedTransformer

__all__ = ["BOS", "InductionTask", "repeated_tokens"]

BOS = 0
"""Token 0 starts every sequence; random tokens are drawn from ``1 .. d_vocab - 1``."""


def repeated_tokens(
    batch: int, seg_len: int, d_vocab: int, *, seed: int = 0, device: str | torch.device = "cpu"
) -> Int[Tensor, "batch pos"]:
    """``[BOS, r_1 .. r_L, r_1 .. r_L]``: a random segment (distinct tokens) repeated once.

    Args:
        batch: number of sequences.
        seg_len: L, the segment length (at most ``d_vocab - 1``, so the tokens can be distinct).
        d_vocab: vocabulary size; tokens come from ``1 .. d_vocab - 1``.
        seed: seed of the draw.
        device: where the tokens live.

    Returns:
        Tokens of length ``2 * seg_len + 1``.
    """
    if not 1 <= seg_len < d_vocab:
        raise ValueError(f"seg_len must lie in [1, d_vocab - 1] = [1, {d_vocab - 1}], got {seg_len}")
    gen = torch.Generator().manual_seed(seed)
    # Distinct tokens inside a segment: the only duplicates are the intended repeats.
    segment = torch.argsort(torch.rand(batch, d_vocab - 1, generator=gen), dim=1)[:, :seg_len] + 1
    bos = torch.full((batch, 1), BOS, dtype=torch.long)
    return torch.cat([bos, segment, segment], dim=1).to(device)


@dataclasses.dataclass(frozen=True)
class InductionTask:
    """Random token sequences, each with one segment that occurs twice; loss on the predictable positions.

    A sequence is ``BOS`` then uniform random tokens; a segment of random length in ``[min_seg, max_seg]`` at a
    random place is copied to a random later place (the copies do not overlap). Lengths and places vary per
    sequence, so the model cannot find the copy by position alone and must learn induction. The loss is the
    next-token cross-entropy at the positions whose next token is a repeat (all others are unpredictable).

    It follows the task protocol of :func:`mi_toolkit.training.train`.

    Args:
        d_vocab: vocabulary size (token 0 is BOS).
        seq_len: length of a training sequence (at most the model's ``n_ctx``).
        batch_size: sequences per training step.
        min_seg: shortest repeated segment (>= 2).
        max_seg: longest repeated segment (``2 * max_seg < seq_len``).
        eval_seg_len: L of the ``[BOS, A, A]`` evaluation sequences (``2 * L + 1 < n_ctx`` to match TL's
            head detector, which requires the sequence to be shorter than the context).
        eval_batch: number of evaluation sequences.
        seed: seeds the training batches (batch ``s`` depends on ``seed`` and ``s`` only) and the evaluation set.
        device: where the tokens live.
    """

    d_vocab: int = 64
    seq_len: int = 32
    batch_size: int = 32
    min_seg: int = 4
    max_seg: int = 15
    eval_seg_len: int = 15
    eval_batch: int = 32
    seed: int = 0
    device: str | torch.device = "cpu"

    def __post_init__(self):
        if self.d_vocab < 3:
            raise ValueError(f"d_vocab must be >= 3, got {self.d_vocab}")
        if not 2 <= self.min_seg <= self.max_seg or 2 * self.max_seg >= self.seq_len:
            raise ValueError(
                f"need 2 <= min_seg <= max_seg and 2 * max_seg < seq_len; got min_seg={self.min_seg}, "
                f"max_seg={self.max_seg}, seq_len={self.seq_len}"
            )
        if not 1 <= self.eval_seg_len < self.d_vocab:
            raise ValueError(f"eval_seg_len must lie in [1, d_vocab - 1], got {self.eval_seg_len}")
        if self.batch_size < 1 or self.eval_batch < 1:
            raise ValueError("batch_size and eval_batch must be >= 1")

    def check_model(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if ``model`` cannot read this task's sequences."""
        cfg = model.cfg
        if cfg.d_vocab < self.d_vocab or cfg.n_ctx < max(self.seq_len, 2 * self.eval_seg_len + 2):
            raise ValueError(
                f"model (d_vocab={cfg.d_vocab}, n_ctx={cfg.n_ctx}) does not fit the task: needs d_vocab >= "
                f"{self.d_vocab} and n_ctx >= {max(self.seq_len, 2 * self.eval_seg_len + 2)}"
            )

    def eval_tokens(self) -> Int[Tensor, "batch pos"]:
        """The fixed evaluation sequences ``[BOS, A, A]``."""
        return repeated_tokens(self.eval_batch, self.eval_seg_len, self.d_vocab, seed=self.seed + 1,
                               device=self.device)

    @property
    def repeat_positions(self) -> slice:
        """Positions of ``[BOS, A, A]`` whose next token is a repeat (for ``metrics.loss(..., positions=)``)."""
        return slice(self.eval_seg_len + 1, None)

    def patching_pair(self, batch: int = 8, *, seed: int = 99) -> tuple[Tensor, Tensor]:
        """Clean and corrupted inputs for patching the induction circuit.

        Clean: the first ``batch`` evaluation sequences ``[BOS, A, A]``. Corrupted: other sequences of the same
        form ``[BOS, B, B]``, on which the model predicts ``B``. A patch that restores the prediction of ``A``'s
        repeat must carry information about ``A`` through the circuit.

        (Corrupting only the first copy, ``[BOS, B, A]``, is a sharper question but a harder one for attribution
        patching: restoring the previous-token head's output there moves the induction head's attention all at
        once, through a saturated softmax, which a first-order estimate misses.)

        Args:
            batch: number of sequences.
            seed: seed of the corrupted sequences.

        Returns:
            ``(clean, corrupted)``, each ``[batch, 2 * eval_seg_len + 1]``.
        """
        clean = self.eval_tokens()[:batch]
        corrupted = repeated_tokens(len(clean), self.eval_seg_len, self.d_vocab, seed=seed, device=self.device)
        return clean, corrupted

    # --- the training-task protocol of mi_toolkit.training ---
    def train_batch(self, step: int) -> tuple[Tensor, Tensor]:
        """Tokens ``[batch_size, seq_len]`` and the mask of positions whose next token is a repeat."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        b, n = self.batch_size, self.seq_len
        tokens = torch.randint(1, self.d_vocab, (b, n), generator=gen)
        tokens[:, 0] = BOS
        seg = torch.randint(self.min_seg, self.max_seg + 1, (b,), generator=gen)
        # First copy starts in [1, n - 2 seg], second in [first + seg, n - seg]: uniform draws scaled per row.
        first = 1 + (torch.rand(b, generator=gen) * (n - 2 * seg)).long()
        second = first + seg + (torch.rand(b, generator=gen) * (n - seg - (first + seg) + 1)).long()
        pos = torch.arange(n)
        in_copy = (pos >= second[:, None]) & (pos < (second + seg)[:, None])  # (batch, pos)
        source = torch.where(in_copy, pos - (second - first)[:, None], pos)
        tokens = tokens.gather(1, source)
        # Logits at position i predict token i + 1: predictable when i + 1 is in the copy, except its first token.
        predictable = in_copy[:, 1:] & (pos[1:] > second[:, None])
        return tokens.to(self.device), predictable.to(self.device)

    def loss(self, model: HookedTransformer, batch: tuple[Tensor, Tensor]) -> Tensor:
        tokens, predictable = batch
        return next_token_loss(model(tokens), tokens, predictable)

    @torch.no_grad()
    def evaluate(self, model: HookedTransformer) -> dict[str, float]:
        """Loss on the repeated half of ``[BOS, A, A]`` (the head scores are
        :func:`mi_toolkit.analysis.heads.induction_measures`)."""
        tokens = self.eval_tokens()
        return {"repeat_loss": next_token_loss(model(tokens), tokens, self.repeat_positions).item()}
