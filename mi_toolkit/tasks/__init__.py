"""Layer 1: tasks, the data a model learns. A task is an object with ``train_batch(step)``, ``loss(model, batch)``
and ``evaluate(model)`` (the protocol of :func:`mi_toolkit.training.train`); tasks import only :mod:`mi_toolkit.core`.

- :mod:`~mi_toolkit.tasks.modular`: ``(a op b) mod p`` over all pairs (grokking).
- :mod:`~mi_toolkit.tasks.groups`, :mod:`~mi_toolkit.tasks.irreps`: finite groups (``mt.groups``) and their real
  irreducible representations; :mod:`~mi_toolkit.tasks.group_composition`: ``x * y`` in a group.
- :mod:`~mi_toolkit.tasks.induction`: random tokens with a repeated segment.
- :mod:`~mi_toolkit.tasks.ioi`: symbolic indirect-object identification (circuit discovery).
- :mod:`~mi_toolkit.tasks.facts`: a synthetic knowledge base (``mt.facts``) and its CounterFact-style edit records;
  :mod:`~mi_toolkit.tasks.reversal`: its facts taught in one direction only (the reversal curse).
- :mod:`~mi_toolkit.tasks.synthetic`: activations built from known sparse features (SAE recovery checks).
- :mod:`~mi_toolkit.tasks.text`: Python source, a byte-pair tokenizer trained on it, next-token windows.
"""

from mi_toolkit.tasks import groups
from mi_toolkit.tasks import facts
from mi_toolkit.tasks.facts import EditRecord, FactTask, KnowledgeBase
from mi_toolkit.tasks.reversal import ReversalTask
from mi_toolkit.tasks.group_composition import GroupComposition
from mi_toolkit.tasks.induction import BOS, InductionTask, repeated_tokens
from mi_toolkit.tasks.ioi import IOITask
from mi_toolkit.tasks.othello_task import OthelloTask
from mi_toolkit.tasks.modular import OPERATIONS, ModularArithmetic, PairTask
from mi_toolkit.tasks.multitask import MultiTaskModular
from mi_toolkit.tasks.synthetic import GroundTruth, mmcs
from mi_toolkit.tasks.text import TextTask
