"""Composition in a finite group: ``x * y`` over all pairs, as tokens ``[x, y, =]`` (Chughtai, Chan, Nanda 2023).

Modular addition is the cyclic case: ``GroupComposition(cyclic(p))`` has the same tokens, labels and split as
``ModularArithmetic(p)`` with the same seed.
"""

import dataclasses
from collections.abc import Sequence

import torch

from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.tasks.groups import Group
from mi_toolkit.tasks.modular import PairTask

__all__ = ["GroupComposition"]


@dataclasses.dataclass(frozen=True)
class GroupComposition(PairTask):
    """The dataset of ``x * y`` in ``group`` with a seeded train/test split.

    Rows are all pairs of element indices in row-major order (row ``x * order + y``); the input is
    ``[x, y, order]`` (token ``order`` is '='), the label the index of ``x * y``. A training task for
    :func:`mi_toolkit.training.train` like :class:`~mi_toolkit.tasks.modular.ModularArithmetic`.

    Args:
        group: a :class:`~mi_toolkit.tasks.groups.Group`.
        frac_train: fraction of the order^2 pairs in the training set, in (0, 1).
        seed: seed of the split.
        device: where the tensors live.
        train_indices: an explicit training split (row indices); overrides ``frac_train`` and ``seed``.

    >>> from mi_toolkit.tasks.groups import symmetric
    >>> task = GroupComposition(symmetric(3), frac_train=0.5)
    >>> task.tokens[7].tolist(), task.labels[7].item(), len(task.train_indices)
    ([1, 1, 6], 0, 18)
    """

    group: Group
    frac_train: float = 0.3
    seed: int = 0
    device: str | torch.device = "cpu"
    train_indices: Sequence[int] | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if not isinstance(self.group, Group):
            raise TypeError(f"group must be a mi_toolkit Group (see mt.groups), got {type(self.group).__name__}")
        frac = self._set_pairs(self.group.order, self.group.order, self.group.table.reshape(-1), self.frac_train,
                               self.seed, self.train_indices)
        object.__setattr__(self, "frac_train", frac)

    @property
    def n(self) -> int:
        """The number of symbols (the group's order)."""
        return self.group.order

    def split_dict(self) -> dict:
        """``{"group": name, "train_indices": [...]}``, the run directory's ``split.json``."""
        return {"group": self.group.name, "train_indices": self.train_indices.tolist()}

    def check_model(self, model: HookedTransformer) -> None:
        """Raise ``ValueError`` if ``model`` cannot read this task's tokens or predict its labels."""
        self._check_vocab(model, self.group.order)
