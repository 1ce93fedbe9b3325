"""The fact-recall experiment: train a small transformer on a :class:`~mi_toolkit.tasks.facts.KnowledgeBase` until
it recalls its facts, trace where it recalls them, edit some with ROME at the traced layer, and write a run
directory (``mi-toolkit facts --out DIR``)."""

import dataclasses
import statistics
import time
from pathlib import Path

import torch

from mi_toolkit import plot
from mi_toolkit.analysis.edits import edit_scores, summarise_scores
from mi_toolkit.analysis.tracing import attention_knockout, causal_traces, noise_level
from mi_toolkit.core.io import Run, save_json, save_tensors
from mi_toolkit.experiments.runs import PACKAGE_DATA, check_out_dir, load_model, load_run, register_loader
from mi_toolkit.interventions.editing import EditConfig, rome, second_moments
from mi_toolkit.models.factory import build_model, model_config_dict, model_config_from_dict
from mi_toolkit.models.presets import FACT_PRESETS, make_fact_model, with_attn_types
from mi_toolkit.report import table_html, write_html
from mi_toolkit.tasks.facts import FactTask, KnowledgeBase
from mi_toolkit.training.recipes import FACT_BATCH_SIZE, FACT_RECIPES
from mi_toolkit.training.trainer import train

__all__ = ["FactsConfig", "PACKAGED_RUN", "load_packaged_fact_model", "run_facts", "trace_facts"]

PACKAGED_RUN = PACKAGE_DATA / "facts_small"
"""A run directory shipped in the package (tutorial 07): ``mi-toolkit facts --out DIR`` with its defaults (seed 0),
without ``checkpoints/`` and ``report.html`` (3.3 MB of float32 weights)."""

TINY_KB = KnowledgeBase(n_first=8, n_last=8, n_subjects=40, relations=("lives_in", "works_as"), n_attributes=8)
"""The tiny preset's knowledge base (80 facts), for tests and the tutorial."""


@dataclasses.dataclass(frozen=True)
class FactsConfig:
    """Settings of :func:`run_facts`.

    Args:
        preset: ``"small"`` (4 layers, d_model 128, the default knowledge base of 2,400 facts) or ``"tiny"`` (a few
            seconds: :data:`TINY_KB`); picks the model, the recipe and (unless ``kb`` is given) the knowledge base.
        kb: the knowledge base (default: the preset's).
        seed: seeds the model and the training batches (the knowledge base has its own ``kb.seed``).
        target_recall: stop training once recall on the training templates reaches this (checked every
            ``log_every`` steps of the recipe); the recipe's ``steps`` is the cap.
        n_traced: facts traced for the analysis (averaged heatmaps).
        n_edits: ROME edits scored at the traced layer (0: none).
        device: torch device.
    """

    preset: str = "small"
    kb: KnowledgeBase | None = None
    seed: int = 0
    target_recall: float = 0.99
    n_traced: int = 32
    n_edits: int = 20
    device: str = "cpu"

    def __post_init__(self):
        if self.preset not in FACT_PRESETS:
            raise ValueError(f"preset must be one of {sorted(FACT_PRESETS)}, got {self.preset!r}")
        if self.kb is None:
            object.__setattr__(self, "kb", TINY_KB if self.preset == "tiny" else KnowledgeBase())
        if not 0 < self.target_recall <= 1 or self.n_traced < 1 or self.n_edits < 0:
            raise ValueError("need 0 < target_recall <= 1, n_traced >= 1 and n_edits >= 0")


def run_facts(out: str | Path | None, config: FactsConfig = FactsConfig(), *, progress: bool = True,
              report: bool = True) -> Run:
    """Train, trace, edit, and write the run directory ``out`` (None: keep everything in memory).

    Returns:
        A :class:`~mi_toolkit.core.io.Run` whose ``analysis`` holds recall, paraphrase recall, the training time,
        the traced peaks, the knockout curves and the edit scores.
    """
    kb = config.kb
    task = FactTask(kb, batch_size=FACT_BATCH_SIZE[config.preset], seed=config.seed, device=config.device)
    model = make_fact_model(kb.d_vocab, kb.n_ctx, seed=config.seed, device=config.device,
                            **FACT_PRESETS[config.preset])
    task.check_model(model)
    recipe = FACT_RECIPES[config.preset]
    record = {"kind": "facts", "preset": config.preset, "kb": dataclasses.asdict(kb),
              "task": {"batch_size": task.batch_size, "seed": task.seed}, "seed": config.seed,
              "model": model_config_dict(model.cfg), "train": recipe.to_dict(),
              "target_recall": config.target_recall}
    path = None if out is None else Path(out)
    if path is not None:
        check_out_dir(path, record, ("kb", "task", "seed", "model"))
        path.mkdir(parents=True, exist_ok=True)
        save_json(path / "config.json", record)
    started = time.perf_counter()
    result = train(model, task, recipe, path, progress=progress,
                   stop=lambda r: r["recall"] is not None and r["recall"] >= config.target_recall)
    model.eval()
    seconds = {"train": round(time.perf_counter() - started, 2), "threads": torch.get_num_threads()}
    final = result.history[-1]
    analysis = {"recall": final["recall"], "paraphrase_recall": final["paraphrase_recall"],
                "n_facts": len(kb.facts), "steps": result.final_step, "seconds": seconds}
    started = time.perf_counter()
    traces = trace_facts(model, kb, n=config.n_traced, seed=config.seed)
    analysis["tracing"] = traces
    seconds["trace"] = round(time.perf_counter() - started, 2)
    if config.n_edits:
        started = time.perf_counter()
        layer = traces["mlp"]["peak"][0]
        analysis["edits"] = {"layer": layer, **edit_summary(model, task, layer, config.n_edits, seed=config.seed)}
        seconds["edit"] = round(time.perf_counter() - started, 2)
    if path is not None:
        save_tensors(path / "model.safetensors", model.state_dict())
        save_json(path / "analysis.json", analysis)
        if report:
            write_facts_report(path / "report.html", kb, result.history, analysis)
    return Run(path, model, task, result.history, record, analysis)


@torch.no_grad()
def trace_facts(model, kb: KnowledgeBase, *, n: int = 32, relation: str | None = None, n_samples: int = 10,
                seed: int = 0) -> dict:
    """Causal traces (residual, MLP, attention; window 1) and attention knockouts averaged over ``n`` facts of
    ``relation`` (default the first), all asked with its edit template so that positions line up.

    Returns:
        A JSON-safe dict: per kind the mean indirect effect ``[layer][pos]``, its peak ``(layer, pos)``, the mean
        total effect; the knockout curves of the subject, of the other earlier positions, and of the last one;
        the prompt's words (with the first fact's name); the noise level.
    """
    relation = kb.relations[0] if relation is None else relation
    records = kb.edit_records(n, relation=relation, seed=seed)
    noise = noise_level(model, kb.name_tokens().to(model.W_E.device))
    out = {"relation": relation, "n": n, "noise": noise, "words": kb.decode(records[0].prompt.tokens),
           "subject_positions": list(records[0].prompt.subject_positions)}
    for kind in ("resid", "mlp", "attn"):
        traces = causal_traces(model, torch.tensor([r.prompt.tokens for r in records]),
                               records[0].prompt.subject_positions, [r.true for r in records], kind=kind, noise=noise,
                               n_samples=n_samples, seed=seed)
        effect = torch.stack([t.indirect_effect for t in traces]).mean(0)
        peak = int(effect.argmax())
        out[kind] = {"indirect_effect": effect.tolist(), "peak": [peak // effect.shape[1], peak % effect.shape[1]],
                     "total_effect": statistics.fmean(t.total_effect for t in traces)}
    subject = list(records[0].prompt.subject_positions)
    last = len(records[0].prompt.tokens) - 1
    groups = {"subject": subject, "other": [p for p in range(last) if p not in subject], "last": [last]}
    out["knockout"] = {}
    for name, blocked in groups.items():
        if name == "last":
            continue  # the last position always attends to itself (blocking it empties the softmax)
        curves = [attention_knockout(model, torch.tensor(r.prompt.tokens), blocked, r.true).relative_change
                  for r in records]
        out["knockout"][name] = torch.stack(curves).mean(0).tolist()
    return out


def edit_summary(model, task: FactTask, layer: int, n: int, *, seed: int = 0, config: EditConfig = EditConfig()
                 ) -> dict:
    """ROME at ``layer`` on ``n`` edit records, each applied alone, scored, undone: the mean scores."""
    kb = task.kb
    C = second_moments(model, task, [layer])[layer]
    records = kb.edit_records(n, seed=seed + 1)
    base, edited = [], []
    for record in records:
        base.append(edit_scores(model, record))
        with rome(model, kb, record, layer, C, config):
            edited.append(edit_scores(model, record))
    return summarise_scores(edited, base)


def write_facts_report(path, kb: KnowledgeBase, history: list[dict], analysis: dict) -> None:
    """The run's report: training curves, recall, the traced heatmaps, the knockout curves, the edit scores."""
    tracing = analysis["tracing"]
    rows = [["facts", analysis["n_facts"]], ["recall (training templates)", f"{analysis['recall']:.4f}"],
            ["paraphrase recall (held-out templates)", f"{analysis['paraphrase_recall']:.4f}"],
            ["steps", analysis["steps"]], ["training seconds", analysis["seconds"]["train"]],
            ["MLP indirect effect peak (layer, position)", tuple(tracing["mlp"]["peak"])]]
    if "edits" in analysis:
        e = analysis["edits"]
        rows += [[f"ROME at layer {e['layer']}: {k}", f"{e[k]:.3f}"]
                 for k in ("efficacy", "paraphrase", "neighbourhood", "score", "bleed")]
    sections = [("Summary", table_html(["", "value"], rows)),
                ("Training", plot.facts_training(history))]
    for kind in ("resid", "mlp", "attn"):
        sections.append((f"Causal trace: {kind}", plot.trace_heatmap(
            torch.tensor(tracing[kind]["indirect_effect"]), tracing["words"], kind=kind)))
    sections.append(("Attention knockout", plot.knockout_curves(tracing["knockout"])))
    write_html(path, f"Fact recall: {analysis['n_facts']} facts", sections)


def load_packaged_fact_model(device: str = "cpu") -> Run:
    """The fact model shipped in the package (:data:`PACKAGED_RUN`: ``mi-toolkit facts`` with its defaults), as a
    :class:`~mi_toolkit.core.io.Run`; ``mt.load_packaged("facts_small")``."""
    return load_run(PACKAGED_RUN, device=device)


def _load(path: Path, record: dict, device: str) -> Run:
    model = with_attn_types(build_model(model_config_from_dict(record["model"]), device=device))
    kb = KnowledgeBase(**{**record["kb"], "relations": tuple(record["kb"]["relations"])})
    task = FactTask(kb, **record["task"], device=device)
    return Run(path, load_model(path, model), task, [], record, {})


register_loader("facts", _load)
