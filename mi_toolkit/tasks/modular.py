"""Modular arithmetic tasks: ``(a op b) mod p`` over all p^2 pairs, as tokens ``[a, b, =]``."""

import dataclasses
from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from mi_toolkit.core.forward import final_position_forward, final_position_logits
from mi_toolkit.core.losses import answer_loss
from mi_toolkit.core.tl import HookedTransformer

__all__ = ["OPERATIONS", "ModularArithmetic", "PairTask"]

OPERATIONS = {
    "+": lambda a, b, p: (a + b) % p,
    "-": lambda a, b, p: (a - b) % p,
    "*": lambda a, b, p: (a * b) % p,
}


class PairTask:
    """Shared by every task whose input is a pair ``[x, y, =]`` over a finite set with a seeded train/test split of
    all pairs (row ``x * n + y``): the views of the split and the training-task protocol of
    :func:`mi_toolkit.training.train` (full-batch steps, loss at the last position only, in float64: the loss falls
    to ~1e-7). Subclasses call :meth:`_set_pairs` from ``__post_init__``."""

    tokens: Tensor
    labels: Tensor
    train_indices: Tensor
    test_indices: Tensor

    def _set_pairs(self, n: int, equals: int, labels: Tensor, frac_train: float, seed: int, train_indices) -> float:
        """Set tokens ``[x, y, equals]`` over all n^2 pairs, labels and the split; return the training fraction."""
        if not 0 < frac_train < 1:
            raise ValueError(f"frac_train must lie in (0, 1), got {frac_train}")
        n_pairs = n * n
        if train_indices is None:
            order = torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed))
            train = order[: int(frac_train * n_pairs)].sort().values
        else:
            train = torch.as_tensor(list(train_indices), dtype=torch.long).unique()
            if len(train) != len(train_indices) or len(train) == 0 or train.min() < 0 or train.max() >= n_pairs:
                raise ValueError(f"train_indices must be distinct row indices in [0, {n_pairs})")
            frac_train = len(train) / n_pairs
        if not 0 < len(train) < n_pairs:
            raise ValueError(f"the split leaves {len(train)} of {n_pairs} pairs for training: both the training and the "
                             "test set need at least one pair (change frac_train or train_indices)")
        is_train = torch.zeros(n_pairs, dtype=torch.bool)
        is_train[train] = True
        x = torch.arange(n).repeat_interleave(n)
        y = torch.arange(n).repeat(n)
        fields = {
            "tokens": torch.stack([x, y, torch.full_like(x, equals)], dim=1),
            "labels": labels,
            "train_indices": train,
            "test_indices": (~is_train).nonzero().squeeze(1),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value.to(self.device))
        return frac_train

    # The frozen fields above are set once; these views are cheap.
    @property
    def train_tokens(self) -> Int[Tensor, "n_train 3"]:
        return self.tokens[self.train_indices]

    @property
    def test_tokens(self) -> Int[Tensor, "n_test 3"]:
        return self.tokens[self.test_indices]

    @property
    def train_labels(self) -> Int[Tensor, "n_train *tasks"]:
        return self.labels[self.train_indices]

    @property
    def test_labels(self) -> Int[Tensor, "n_test *tasks"]:
        return self.labels[self.test_indices]

    # --- the training-task protocol of mi_toolkit.training ---
    def train_batch(self, step: int) -> tuple[Tensor, Tensor]:
        return self.train_tokens, self.train_labels

    def loss(self, model: HookedTransformer, batch: tuple[Tensor, Tensor]) -> Tensor:
        tokens, labels = batch
        return answer_loss(final_position_logits(model, tokens), labels, dtype=torch.float64)

    def evaluate(self, model: HookedTransformer) -> dict[str, float]:
        """Loss and accuracy on the train and test splits."""
        with torch.no_grad():
            logits = final_position_forward(model, self.tokens).logits
            out = {}
            for split, idx in (("train", self.train_indices), ("test", self.test_indices)):
                lg, lab = logits[idx], self.labels[idx]
                out[f"{split}_loss"] = answer_loss(lg, lab, dtype=torch.float64).item()
                out[f"{split}_acc"] = (lg.argmax(-1) == lab).float().mean().item()
        return out

    def _check_vocab(self, model: HookedTransformer, n: int) -> None:
        cfg = model.cfg
        if cfg.d_vocab < n + 1 or cfg.d_vocab_out < n or cfg.n_ctx < 3:
            raise ValueError(
                f"model (d_vocab={cfg.d_vocab}, d_vocab_out={cfg.d_vocab_out}, n_ctx={cfg.n_ctx}) does not fit "
                f"the task over {n} symbols: needs d_vocab >= {n + 1}, d_vocab_out >= {n}, n_ctx >= 3"
            )


@dataclasses.dataclass(frozen=True)
class ModularArithmetic(PairTask):
    """The dataset of ``(a op b) mod p`` with a seeded train/test split.

    Rows are all pairs in row-major order (row ``a * p + b``); the input is ``[a, b, p]`` (token ``p`` is '='),
    the label ``(a op b) mod p``. It is also a training task for :func:`mi_toolkit.training.train`: full-batch
    steps over the training rows, loss at the last position only (cross-entropy in float64, as in Nanda et al.:
    the loss falls to ~1e-7).

    Args:
        p: the modulus (>= 3; a prime for the Fourier analysis to be exact).
        op: one of ``"+"``, ``"-"``, ``"*"``.
        frac_train: fraction of the p^2 pairs in the training set, in (0, 1); ``int(frac_train * p^2)`` rows.
        seed: seed of the split.
        device: where the tensors live.
        train_indices: an explicit training split (row indices), e.g. from a run's ``split.json``; overrides
            ``frac_train`` and ``seed``.

    >>> task = ModularArithmetic(p=5, frac_train=0.4)
    >>> task.tokens[7].tolist(), task.labels[7].item(), len(task.train_indices)
    ([1, 2, 5], 3, 10)
    """

    p: int = 113
    op: str = "+"
    frac_train: float = 0.3
    seed: int = 0
    device: str | torch.device = "cpu"
    train_indices: Sequence[int] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if not isinstance(self.p, int) or self.p < 3:
            raise ValueError(f"p must be an integer >= 3, got {self.p!r}")
        if self.op not in OPERATIONS:
            raise ValueError(f"unknown operation {self.op!r}; expected one of {sorted(OPERATIONS)}")
        a = torch.arange(self.p).repeat_interleave(self.p)
        b = torch.arange(self.p).repeat(self.p)
        frac = self._set_pairs(self.p, self.p, OPERATIONS[self.op](a, b, self.p), self.frac_train, self.seed,
                               self.train_indices)
        object.__setattr__(self, "frac_train", frac)

    def split_dict(self) -> dict:
        """``{"p": p, "op": op, "train_indices": [...]}``, the run directory's ``split.json``."""
        return {"p": self.p, "op": self.op, "train_indices": self.train_indices.tolist()}

    def check_model(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if ``model`` cannot read this task's tokens or predict its labels."""
        self._check_vocab(model, self.p)
