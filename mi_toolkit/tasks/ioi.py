"""Symbolic indirect-object identification (IOI): two names, one repeated; predict the one that is not.

A sequence is ``[BOS, ..., A, ..., B, ..., S, ..., END]``: names ``A != B`` at random places in that order, ``S`` (the
subject) a second occurrence of one of them, random filler tokens elsewhere. At ``END`` the answer is the indirect
object ``IO``, the name of ``{A, B}`` that occurs once, as in "When Mary and John went to the store, John gave a
drink to" -> "Mary" (Wang et al. 2022), with the words reduced to symbols (as in Adhikari 2025's symbolic IOI). The
places vary per sequence, so a model must detect the duplicate rather than count positions.

Tokens: ``0`` BOS, ``1`` END, ``2 .. 2 + n_fillers - 1`` fillers, then ``n_names`` names.

>>> task = IOITask(n_names=8, n_fillers=4, seq_len=8)
>>> tokens, answers = task.sequences(2, seed=0)
>>> tokens.shape, bool((tokens[:, -1] == END).all())
(torch.Size([2, 8]), True)
"""

import dataclasses

import torch
from jaxtyping import Int
from torch import Tensor

from mi_toolkit.core.losses import answer_loss
from mi_toolkit.core.tl import HookedTransformer

__all__ = ["BOS", "END", "IOITask"]

BOS, END = 0, 1
_PAIR_SEEDS = 2**31  # torch seeds its CPU generator with the low 32 bits: stay below 2**32


@dataclasses.dataclass(frozen=True)
class IOITask:
    """The symbolic IOI task, with the trainer's protocol (:func:`mi_toolkit.training.train`).

    Args:
        n_names: names to draw from.
        n_fillers: filler tokens.
        seq_len: sequence length, ``BOS`` and ``END`` included (>= 5: three names need three places).
        batch_size: sequences per training step.
        eval_batch: sequences of the fixed evaluation set.
        seed: seeds training batches (batch ``s`` depends on ``seed`` and ``s`` only) and the evaluation set.
        device: where the tokens live.
    """

    n_names: int = 24
    n_fillers: int = 8
    seq_len: int = 12
    batch_size: int = 128
    eval_batch: int = 512
    seed: int = 0
    device: str | torch.device = "cpu"

    def __post_init__(self):
        if self.n_names < 3 or self.n_fillers < 1:
            raise ValueError(f"need n_names >= 3 and n_fillers >= 1, got {self.n_names} and {self.n_fillers}")
        if self.seq_len < 5:
            raise ValueError(f"seq_len must be >= 5 (BOS, three names, END), got {self.seq_len}")

    @property
    def d_vocab(self) -> int:
        return 2 + self.n_fillers + self.n_names

    @property
    def names(self) -> Int[Tensor, " n_names"]:
        """The name tokens."""
        return torch.arange(2 + self.n_fillers, self.d_vocab)

    def check_model(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if ``model`` cannot read this task's sequences."""
        if model.cfg.d_vocab < self.d_vocab or model.cfg.n_ctx < self.seq_len:
            raise ValueError(f"model (d_vocab={model.cfg.d_vocab}, n_ctx={model.cfg.n_ctx}) does not fit the task: "
                             f"needs d_vocab >= {self.d_vocab} and n_ctx >= {self.seq_len}")

    def sequences(
        self, n: int, *, seed: int, subject_first: bool | None = None
    ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
        """``n`` sequences and their answers (the IO token).

        Args:
            n: number of sequences.
            seed: seed of the draw.
            subject_first: whether the repeated name is ``A`` (``"ABA"``); default a fair coin per sequence.
        """
        gen = torch.Generator().manual_seed(seed)
        inner = self.seq_len - 2
        tokens = torch.randint(2, 2 + self.n_fillers, (n, self.seq_len), generator=gen)
        tokens[:, 0], tokens[:, -1] = BOS, END
        pair = torch.rand(n, self.n_names, generator=gen).argsort(1)[:, :2] + 2 + self.n_fillers  # A != B
        places = torch.rand(n, inner, generator=gen).argsort(1)[:, :3].sort(1).values + 1  # A, B, S in order
        if subject_first is None:
            first = torch.rand(n, generator=gen) < 0.5
        else:
            first = torch.full((n,), subject_first)
        subject = torch.where(first, pair[:, 0], pair[:, 1])
        answer = torch.where(first, pair[:, 1], pair[:, 0])
        names = torch.stack([pair[:, 0], pair[:, 1], subject], 1)
        tokens.scatter_(1, places, names)
        return tokens.to(self.device), answer.to(self.device)

    def eval_set(self) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]:
        return self.sequences(self.eval_batch, seed=self.seed + 1)

    def patching_pair(self, batch: int = 32, *, seed: int = 99) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Clean and corrupted inputs for circuit discovery: the corrupted sequence repeats the *other* name, so its
        answer is the clean subject.

        Returns:
            ``(clean, corrupted, clean_answer, corrupted_answer)``; the logit difference
            ``logit(clean_answer) - logit(corrupted_answer)`` at the last position flips sign between them.
        """
        clean, answer = self.sequences(batch, seed=_PAIR_SEEDS + seed)  # apart from every training batch's seed
        rows, last = torch.arange(batch, device=clean.device), self._subject_place(clean)
        subject = clean[rows, last]
        corrupted = clean.clone()
        corrupted[rows, last] = answer
        return clean, corrupted, answer, subject

    def _subject_place(self, tokens: Tensor) -> Tensor:
        """The place of the subject's second occurrence: the last name in each sequence."""
        is_name = tokens >= 2 + self.n_fillers
        return (is_name.long() * torch.arange(tokens.shape[1], device=tokens.device)).argmax(1)

    # --- the training-task protocol of mi_toolkit.training ---
    def train_batch(self, step: int) -> tuple[Tensor, Tensor]:
        return self.sequences(self.batch_size, seed=self.seed * 1_000_003 + step + 2)

    def loss(self, model: HookedTransformer, batch: tuple[Tensor, Tensor]) -> Tensor:
        tokens, answers = batch
        return answer_loss(model(tokens)[:, -1], answers)

    @torch.no_grad()
    def evaluate(self, model: HookedTransformer) -> dict[str, float]:
        """Loss and accuracy at ``END`` on the evaluation set, and the mean logit difference IO - S."""
        tokens, answers = self.eval_set()
        logits = model(tokens)[:, -1]
        rows = torch.arange(len(tokens), device=logits.device)
        subject = tokens[rows, self._subject_place(tokens)]
        return {
            "loss": answer_loss(logits, answers).item(),
            "accuracy": (logits.argmax(-1) == answers).float().mean().item(),
            "logit_diff": (logits[rows, answers] - logits[rows, subject]).mean().item(),
        }
