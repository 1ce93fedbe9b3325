"""The grokking replication end to end: train, measure, analyse, write a run directory and a report.

Run directory (stable format)::

    config.json        model config, task (p, op, frac_train, seed), training config, recipe, seed
    split.json         {"p": p, "op": op, "train_indices": [...]}  (rows a * p + b of the row-major pair list)
    model.safetensors  final HookedTransformer state dict
    checkpoints/       step_XXXXXXX.safetensors weight snapshots; resume.safetensors + resume.json
    metrics.jsonl      one JSON object per logged step: step, train_loss, test_loss, train_acc, test_acc,
                       restricted_loss, excluded_loss, excluded_loss_per_freq, gini_embed, gini_unembed,
                       weight_norm, lr, loss
    analysis.json      key frequencies, neuron clusters, logit fit, final measures, phases, timings
    report.html        self-contained plotly report
"""

import dataclasses
import time
from pathlib import Path

from mi_toolkit.analysis.fourier import frequencies_from_clusters, logit_decomposition, neuron_clusters
from mi_toolkit.analysis.progress import (
    estimate_phases,
    evaluate_checkpoints,
    excluded_loss,
    grokking_measures,
    restricted_loss,
)
from mi_toolkit.core.io import Run, load_json, save_json, save_tensors, write_jsonl
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.experiments.runs import check_out_dir, load_model, register_loader
from mi_toolkit.models.factory import build_model, model_config_dict, model_config_from_dict
from mi_toolkit.models.presets import grokking_model_config
from mi_toolkit.report import write_grokking_report
from mi_toolkit.tasks.modular import ModularArithmetic
from mi_toolkit.training.recipes import GROKKING_RECIPES
from mi_toolkit.training.trainer import TrainConfig, train

__all__ = ["GrokkingConfig", "analyse", "run_grokking"]


@dataclasses.dataclass(frozen=True)
class GrokkingConfig:
    p: int = 113
    """Modulus."""
    op: str = "+"
    frac_train: float = 0.3
    seed: int = 0
    """Fixes both the train/test split and the weight initialisation."""
    recipe: str = "fast"
    """A name in :data:`~mi_toolkit.training.recipes.GROKKING_RECIPES`: ``"fast"`` (groks and finishes in under 1.5
    minutes on 2 CPU cores) or ``"paper"`` (Nanda et al.'s exact settings)."""
    steps: int | None = None
    """Override the recipe's number of steps."""
    grad_filter: str | None = None
    """Override the recipe's Grokfast filter: ``"none"``, ``"ema"`` or ``"ma"``."""
    log_every: int = 100
    checkpoint_every: int = 100
    """Weight snapshots for the progress measures (and resume points)."""
    device: str = "cpu"

    def __post_init__(self):
        if self.recipe not in GROKKING_RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; expected one of {sorted(GROKKING_RECIPES)}")
        ModularArithmetic(p=self.p, op=self.op, frac_train=self.frac_train)  # validates p, op, frac_train
        self.train_config()  # validates the training settings

    def train_config(self) -> TrainConfig:
        """The recipe with this config's overrides."""
        changes = dict(log_every=self.log_every, checkpoint_every=self.checkpoint_every)
        if self.steps is not None:
            changes["steps"] = self.steps
        if self.grad_filter is not None:
            changes["grad_filter"] = self.grad_filter
        return GROKKING_RECIPES[self.recipe].replace(**changes)


def run_grokking(out_dir: str | Path, config: GrokkingConfig = GrokkingConfig(), *, progress: bool = True,
                 report: bool = True) -> Run:
    """Train the modular-arithmetic transformer, measure its progress and write the run directory.

    A directory holding an interrupted run of the same config resumes from its last checkpoint; any other
    non-empty directory is refused before work starts.

    Returns:
        The finished run, as :func:`mi_toolkit.load_run` would return it.
    """
    out = Path(out_dir)
    record = _config_record(config)
    check_out_dir(out, record, ("task", "seed", "recipe", "model"))
    out.mkdir(parents=True, exist_ok=True)
    task = ModularArithmetic(p=config.p, op=config.op, frac_train=config.frac_train, seed=config.seed,
                             device=config.device)
    save_json(out / "config.json", record)
    save_json(out / "split.json", task.split_dict())
    model = build_model(model_config_from_dict(record["model"]), seed=config.seed, device=config.device,
                        freeze_biases=True)
    started = time.perf_counter()
    result = train(model, task, config.train_config(), out, progress=progress,
                   measures=lambda m: grokking_measures(m, task))
    train_seconds = time.perf_counter() - started
    save_tensors(out / "model.safetensors", model.state_dict())
    started = time.perf_counter()
    history, analysis = analyse(model, task, result.history, out)
    analysis["seconds"] = {"train_this_call": round(train_seconds, 2),
                           "analysis": round(time.perf_counter() - started, 2)}
    write_jsonl(out / "metrics.jsonl", history)
    if report:
        started = time.perf_counter()
        write_grokking_report(out / "report.html", model, task, history, analysis)
        analysis["seconds"]["report"] = round(time.perf_counter() - started, 2)
    save_json(out / "analysis.json", analysis)
    return Run(out, model, task, history, record, analysis)


def analyse(model: HookedTransformer, task: ModularArithmetic, history: list[dict], run_dir=None):
    """Key frequencies and the Fourier-algorithm checks on the final model; progress measures over checkpoints.

    Returns:
        ``(history, analysis)``: the history with ``restricted_loss``, ``excluded_loss`` and
        ``excluded_loss_per_freq`` merged in at the checkpointed steps, and a JSON-safe summary.
    """
    clusters = neuron_clusters(model, task)
    freqs = frequencies_from_clusters(clusters)
    logits = logit_decomposition(model, task, freqs)
    if run_dir is not None:
        by_step = {r["step"]: r for r in evaluate_checkpoints(model, task, run_dir, freqs)}
        history = [{**r, **by_step.get(r["step"], {})} for r in history]
    phases = estimate_phases(history)
    analysis = {
        "key_frequencies": freqs,
        "neuron_cluster_sizes": {str(k): v for k, v in clusters.cluster_sizes().items()},
        "fraction_neurons_single_frequency": clusters.fraction_single_frequency(0.85),
        "logit_fraction_explained": logits.fraction_explained,
        "logit_coefficients": {str(k): float(a) for k, a in zip(freqs, logits.coefficients)},
        "restricted_loss": restricted_loss(model, task, freqs),
        "excluded_loss": excluded_loss(model, task, freqs),
        "final": {k: history[-1][k] for k in ("step", "train_loss", "test_loss", "train_acc", "test_acc")},
        "grokked_at_step": next((r["step"] for r in history if r["test_acc"] >= 0.99), None),
        "phases": dataclasses.asdict(phases),
    }
    return history, analysis


def _load(path: Path, record: dict, device: str) -> Run:
    split = load_json(path / "split.json")
    task = ModularArithmetic(p=split["p"], op=split.get("op", "+"), train_indices=split["train_indices"],
                             device=device)
    model = load_model(path, build_model(model_config_from_dict(record["model"]), device=device, freeze_biases=True))
    return Run(path, model, task, [], record, {})


register_loader("grokking", _load)


def _config_record(config: GrokkingConfig) -> dict:
    return {
        "kind": "grokking",
        "task": {"name": "modular_arithmetic", "p": config.p, "op": config.op, "frac_train": config.frac_train},
        "seed": config.seed,
        "recipe": config.recipe,
        "model": model_config_dict(grokking_model_config(config.p)),
        "train": config.train_config().to_dict(),
        "grokking_config": dataclasses.asdict(config),
    }
