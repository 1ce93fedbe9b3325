"""The reversal curse (Berglund et al. 2023) on the fact knowledge base: one-to-one facts taught forwards only are
not recalled backwards.

>>> task = ReversalTask(n_pairs=20, kb=KnowledgeBase(n_first=6, n_last=6, n_subjects=20, relations=("plays",)))
>>> task.n_both, task.evaluate.__doc__.split(",")[0]
(10, 'Forward accuracy')
"""

import dataclasses
import itertools

import torch

from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.tasks.facts import BOS, REVERSE_TEMPLATE, FactTask, KnowledgeBase, answer_logits, pad_prompts

__all__ = ["ReversalTask"]


@dataclasses.dataclass(frozen=True)
class ReversalTask:
    """One-to-one facts ``{s} is the friend of {b}`` (``b`` a unique partner token per subject): a fraction
    ``both_frac`` of the pairs is also taught reversed (``the friend of {b} is`` -> first name of ``s``), so the
    model knows the reversed form; the rest only forwards. Reverse accuracy on those (first-name token) is compared
    with chance, ``1 / n_first`` (the reversal curse: Berglund et al. 2023).

    The partners are the first ``n_pairs`` subjects' partner tokens, appended to the knowledge base's vocabulary
    (``kb.d_vocab + i``).
    """

    kb: KnowledgeBase = dataclasses.field(default_factory=lambda: KnowledgeBase(n_subjects=200, relations=("plays",)))
    n_pairs: int = 200
    both_frac: float = 0.5
    batch_size: int = 128
    seed: int = 0
    device: str | torch.device = "cpu"

    def __post_init__(self):
        if not 2 <= self.n_pairs <= self.kb.n_subjects or not 0 < self.both_frac < 1:
            raise ValueError("need 2 <= n_pairs <= kb.n_subjects and 0 < both_frac < 1")

    @property
    def d_vocab(self) -> int:
        return self.kb.d_vocab + self.n_pairs

    def check_model(self, model: HookedTransformer) -> None:
        if model.cfg.d_vocab < self.d_vocab or model.cfg.n_ctx < self.kb.n_ctx:
            raise ValueError(f"model does not fit: needs d_vocab >= {self.d_vocab} and n_ctx >= {self.kb.n_ctx}")

    @property
    def n_both(self) -> int:
        return int(round(self.both_frac * self.n_pairs))

    def _forward(self, i: int, prefix=()) -> tuple[tuple[int, ...], int]:
        words = [self.kb.ids[w] for w in ("is", *REVERSE_TEMPLATE[0].split())]
        return (BOS, *prefix, *self.kb.subjects[i], *words), self.kb.d_vocab + i

    def _reverse(self, i: int, prefix=()) -> tuple[tuple[int, ...], int]:
        ids = self.kb.ids
        words = [ids[w] for w in REVERSE_TEMPLATE[0].split()]
        return (BOS, *prefix, *words, self.kb.d_vocab + i, ids[REVERSE_TEMPLATE[1]]), self.kb.subjects[i][0]

    def train_batch(self, step: int):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rows = list(itertools.chain(((i, False) for i in range(self.n_pairs)), ((i, True) for i in range(self.n_both))))
        chosen = [rows[int(j)] for j in torch.randint(len(rows), (self.batch_size,), generator=gen)]
        made = [(self._reverse if rev else self._forward)(i, self.kb.random_prefix(gen)) for i, rev in chosen]
        tokens, last = pad_prompts([m[0] for m in made], self.device)
        return tokens, last, torch.tensor([m[1] for m in made], device=self.device)

    loss = FactTask.loss

    @torch.no_grad()
    def evaluate(self, model: HookedTransformer) -> dict[str, float]:
        """Forward accuracy, reverse accuracy on pairs taught both ways and on pairs taught forwards only, chance."""
        def accuracy(made):
            logits = answer_logits(model, [m[0] for m in made])
            return (logits.argmax(-1).cpu() == torch.tensor([m[1] for m in made])).float().mean().item()

        n = self.n_pairs
        return {"forward_acc": accuracy([self._forward(i) for i in range(n)]),
                "reverse_acc_taught": accuracy([self._reverse(i) for i in range(self.n_both)]),
                "reverse_acc_untaught": accuracy([self._reverse(i) for i in range(self.n_both, n)]),
                "chance": 1 / self.kb.n_first}

