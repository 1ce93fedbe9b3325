"""CounterFact-style scores of a model on edit records (Meng et al. 2022), for a model with an edit applied.

- efficacy: ``P(new) > P(true)`` on the edit prompt;
- paraphrase: the same on the held-out templates (share of prompts);
- neighbourhood: ``P(true) > P(new)`` still, for other subjects with the same relation and true attribute;
- score: the harmonic mean of the three;
- other relations: top-1 accuracy on the subject's other relations (their training templates); the bleed of an edit
  is how much this falls from the unedited model's.
"""

import dataclasses
import statistics

import torch

from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.tasks.facts import EditRecord, answer_logits

__all__ = ["EditScores", "edit_scores", "summarise_scores"]


@dataclasses.dataclass(frozen=True)
class EditScores:
    """The scores of one record (shares in [0, 1]) and the probabilities behind them."""

    efficacy: float
    paraphrase: float
    neighbourhood: float
    other_relations: float
    p_new: float
    """P(new) on the edit prompt."""
    p_true: float
    """P(true) on the edit prompt."""


@torch.no_grad()
def edit_scores(model: HookedTransformer, record: EditRecord) -> EditScores:
    """Score ``model`` (edited or not) on ``record``."""
    prompts = [record.prompt, *record.paraphrases, *record.neighbourhood, *(p for p, _ in record.other_relations)]
    probs = answer_logits(model, prompts).softmax(-1).cpu()
    new, true = probs[:, record.new], probs[:, record.true]
    n_para, n_neigh = len(record.paraphrases), len(record.neighbourhood)
    para = slice(1, 1 + n_para)
    neigh = slice(1 + n_para, 1 + n_para + n_neigh)
    others = probs[1 + n_para + n_neigh :].argmax(-1)
    other_true = torch.tensor([a for _, a in record.other_relations])
    return EditScores(
        efficacy=float(new[0] > true[0]),
        paraphrase=(new[para] > true[para]).float().mean().item() if n_para else float("nan"),
        neighbourhood=(true[neigh] > new[neigh]).float().mean().item() if n_neigh else float("nan"),
        other_relations=(others == other_true).float().mean().item() if len(other_true) else float("nan"),
        p_new=new[0].item(),
        p_true=true[0].item(),
    )


def summarise_scores(scores: list[EditScores], baseline: list[EditScores] | None = None) -> dict[str, float]:
    """Means over records, the harmonic-mean score S, and (with the unedited ``baseline``) the bleed into the
    subjects' other relations."""
    if not scores:
        raise ValueError("no scores to summarise")
    mean = {f.name: statistics.fmean(getattr(s, f.name) for s in scores) for f in dataclasses.fields(EditScores)}
    parts = [mean["efficacy"], mean["paraphrase"], mean["neighbourhood"]]
    mean["score"] = statistics.harmonic_mean(parts) if min(parts) > 0 else 0.0
    if baseline is not None:
        mean["bleed"] = statistics.fmean(b.other_relations for b in baseline) - mean["other_relations"]
    mean["n"] = len(scores)
    return mean
