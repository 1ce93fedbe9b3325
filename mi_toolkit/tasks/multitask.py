"""Multi-task modular arithmetic (Syrkis, "miiii"): for x0, x1 in [0, p), predict ``(x0 + p * x1) mod q`` for
every prime q < p at once, one block of output logits per task."""

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mi_toolkit.core.forward import final_position_forward, final_position_logits
from mi_toolkit.core.losses import answer_loss
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.tasks.modular import PairTask

__all__ = ["MultiTaskModular", "primes_below"]


def primes_below(p: int) -> list[int]:
    """The primes q < p, increasing."""
    return [q for q in range(2, p) if all(q % d for d in range(2, int(q**0.5) + 1))]


@dataclasses.dataclass(frozen=True)
class MultiTaskModular(PairTask):
    """The dataset of ``n = x0 + p * x1`` over all pairs, labelled ``n mod q`` for every prime q < p.

    Inputs are ``[x0, x1, p]`` (row ``x0 * p + x1``); ``labels`` is ``[p^2, n_tasks]``. The model's output holds
    every task's logits in blocks of q columns, in increasing q (``d_vocab_out = sum(q)``). The loss is
    ``sum_q CE_q / ln q`` (each task weighted by the entropy of a uniform guess); ``evaluate`` reports every task's
    accuracy (``test_acc_q7``), and ``train_acc`` / ``test_acc`` are the *lowest* over the tasks, so that "test
    accuracy >= 99%" means every task.

    >>> task = MultiTaskModular(p=7, frac_train=0.5)
    >>> task.primes, task.d_vocab_out, task.labels[task.tokens[:, 0].eq(3) & task.tokens[:, 1].eq(2)].tolist()
    ([2, 3, 5], 10, [[1, 2, 2]])
    """

    p: int = 37
    frac_train: float = 0.5
    seed: int = 0
    device: str | torch.device = "cpu"
    train_indices: Sequence[int] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if not isinstance(self.p, int) or self.p < 3:
            raise ValueError(f"p must be an integer >= 3 (there must be a prime below it), got {self.p!r}")
        x0 = torch.arange(self.p).repeat_interleave(self.p)
        x1 = torch.arange(self.p).repeat(self.p)
        n = x0 + self.p * x1
        labels = torch.stack([n % q for q in self.primes], dim=1)
        frac = self._set_pairs(self.p, self.p, labels, self.frac_train, self.seed, self.train_indices)
        object.__setattr__(self, "frac_train", frac)

    @property
    def primes(self) -> list[int]:
        return primes_below(self.p)

    @property
    def d_vocab_out(self) -> int:
        return sum(self.primes)

    @property
    def blocks(self) -> list[tuple[int, int, int]]:
        """``(q, start, end)``: task q's logits are columns ``start:end`` of the output."""
        out, start = [], 0
        for q in self.primes:
            out.append((q, start, start + q))
            start += q
        return out

    def task_losses(self, logits: Tensor, labels: Tensor) -> list[Tensor]:
        """Cross-entropy of each task (float64), from logits ``[batch, sum q]`` and labels ``[batch, n_tasks]``."""
        return [answer_loss(logits[:, s:e], labels[:, i], dtype=torch.float64)
                for i, (q, s, e) in enumerate(self.blocks)]

    def loss(self, model: HookedTransformer, batch: tuple[Tensor, Tensor]) -> Tensor:
        tokens, labels = batch
        losses = self.task_losses(final_position_logits(model, tokens), labels)
        return sum(loss / math.log(q) for loss, q in zip(losses, self.primes))

    def evaluate(self, model: HookedTransformer) -> dict[str, float]:
        """Per task and split: loss and accuracy; ``train_acc`` / ``test_acc`` the lowest over the tasks and
        ``train_loss`` / ``test_loss`` the training objective."""
        with torch.no_grad():
            logits = final_position_forward(model, self.tokens).logits
            out = {}
            for split, idx in (("train", self.train_indices), ("test", self.test_indices)):
                lg, lab = logits[idx], self.labels[idx]
                losses = self.task_losses(lg, lab)
                accs = [(lg[:, s:e].argmax(-1) == lab[:, i]).float().mean().item()
                        for i, (q, s, e) in enumerate(self.blocks)]
                out[f"{split}_loss"] = float(sum(v.item() / math.log(q) for v, q in zip(losses, self.primes)))
                out[f"{split}_acc"] = min(accs)
                out.update({f"{split}_acc_q{q}": a for q, a in zip(self.primes, accs)})
        return out

    def split_dict(self) -> dict:
        """``{"p": p, "train_indices": [...]}``, the run directory's ``split.json``."""
        return {"p": self.p, "train_indices": self.train_indices.tolist()}

    def check_model(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if ``model`` cannot read this task's tokens or write every task's logits."""
        cfg = model.cfg
        if cfg.d_vocab < self.p + 1 or cfg.n_ctx < 3:
            raise ValueError(f"model (d_vocab={cfg.d_vocab}, n_ctx={cfg.n_ctx}) cannot read [x0, x1, =] with p={self.p}: "
                             f"needs d_vocab >= {self.p + 1}, n_ctx >= 3")
        if cfg.d_vocab_out != self.d_vocab_out:
            raise ValueError(f"the model has d_vocab_out={model.cfg.d_vocab_out}; the tasks q in {self.primes} need "
                             f"{self.d_vocab_out} (one block of q logits per task)")
