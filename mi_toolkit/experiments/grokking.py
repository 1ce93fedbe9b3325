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

from mi_toolkit.analysis.fourier import (
    frequencies_from_clusters,
    key_frequencies,
    logit_decomposition,
    neuron_clusters,
)
from mi_toolkit.analysis.progress import (
    CLEAN_RESTRICTED_LOSS,
    GROKKED_TEST_ACC,
    estimate_phases,
    evaluate_checkpoints,
    excluded_loss,
    grokking_measures,
    restricted_loss,
)
from mi_toolkit.core.io import Run, load_json, read_jsonl, save_json, save_tensors, write_jsonl
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.experiments.runs import check_out_dir, load_model, register_loader
from mi_toolkit.models.factory import build_model, model_config_dict, model_config_from_dict
from mi_toolkit.models.presets import grokking_model_config
from mi_toolkit.report import write_grokking_report
from mi_toolkit.tasks.modular import ModularArithmetic
from mi_toolkit.training.recipes import GROKKING_RECIPES
from mi_toolkit.training.trainer import TrainConfig, train

__all__ = ["CHECKS", "GrokkingConfig", "analyse", "run_grokking"]


@dataclasses.dataclass(frozen=True)
class GrokkingConfig:
    p: int = 113
    """Modulus."""
    op: str = "+"
    frac_train: float = 0.3
    seed: int = 0
    """Fixes both the train/test split and the weight initialisation."""
    recipe: str = "fast"
    """A name in :data:`~mi_toolkit.training.recipes.GROKKING_RECIPES`: ``"fast"`` (measured on 2 CPU cores, README)
    or ``"paper"`` (Nanda et al.'s exact settings)."""
    steps: int | None = None
    """An exact budget: train this many steps, whatever happens. None (default): train until done (see
    :attr:`max_steps`)."""
    max_steps: int | None = None
    """Until done: stop :attr:`margin` steps after the model has grokked and cleaned up (test accuracy >= 99% and
    restricted loss < 0.1, checked at every checkpoint), or at this cap (default: the recipe's ``steps``)."""
    margin: int = 100
    """Steps trained after cleanup is reached, before stopping."""
    grad_filter: str | None = None
    """Override the recipe's Grokfast filter: ``"none"``, ``"ema"`` or ``"ma"``."""
    log_every: int = 10
    """Losses and accuracies every this many steps (often enough to see the loss spikes)."""
    checkpoint_every: int = 100
    """Weight snapshots for the progress measures (and resume points, and the cleanup check)."""
    device: str = "cpu"

    def __post_init__(self):
        if self.recipe not in GROKKING_RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; expected one of {sorted(GROKKING_RECIPES)}")
        ModularArithmetic(p=self.p, op=self.op, frac_train=self.frac_train)  # validates p, op, frac_train
        if self.p % 2 == 0:
            raise ValueError(f"p = {self.p} is even: the Fourier analysis (its cos/sin pairs) needs an odd modulus; "
                             f"odd composite moduli such as {self.p + 1} work")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.log_every < 1 or self.checkpoint_every % self.log_every:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) must be a multiple of log_every "
                             f"({self.log_every}): the cleanup check runs on logged checkpoint steps")
        if self.steps is not None and self.max_steps is not None:
            raise ValueError("give steps (an exact budget) or max_steps (a cap when training until done), not both")
        self.train_config()  # validates the training settings

    @property
    def until_done(self) -> bool:
        """Whether the run stops once grokked and cleaned up (no exact ``steps`` budget)."""
        return self.steps is None

    def train_config(self) -> TrainConfig:
        """The recipe with this config's overrides; its ``steps`` is the budget or the cap."""
        changes = dict(log_every=self.log_every, checkpoint_every=self.checkpoint_every)
        if self.steps is not None or self.max_steps is not None:
            changes["steps"] = self.steps if self.steps is not None else self.max_steps
        if self.grad_filter is not None:
            changes["grad_filter"] = self.grad_filter
        return GROKKING_RECIPES[self.recipe].replace(**changes)


CHECKS = {
    # name: (analysis key, test, threshold text, the paper's figure)
    "key frequencies": ("n_key_frequencies", lambda v: 3 <= v <= 7, "3 to 7", "5 in the main model; 3-6 across seeds"),
    "single-frequency neurons": ("fraction_neurons_single_frequency", lambda v: v >= 0.65, ">= 0.65",
                                 "~0.85 of neurons with > 85% of their variance in one frequency"),
    "logit variance explained": ("logit_fraction_explained", lambda v: v >= 0.8, ">= 0.80",
                                 "~0.95 by the cos(w_k (a + b - c)) terms"),
    "restricted loss (test)": ("restricted_loss", lambda v: v < CLEAN_RESTRICTED_LOSS, f"< {CLEAN_RESTRICTED_LOSS}",
                               "falls to about the test loss"),
    "excluded loss (train)": ("excluded_loss", lambda v: v > 1.0, "> 1", "rises far above the train loss"),
}
"""The algorithm checks of a grokked model (Nanda et al. 2023), with the thresholds the toolkit holds them to."""


class _UntilCleanedUp:
    """``stop`` for :func:`~mi_toolkit.training.train`: at each checkpoint step with test accuracy >= 99%, find the
    current key frequencies and the restricted loss; once it is below 0.1 (cleaned up), mark the record and stop
    ``margin`` steps later. A resumed run finds the mark in its metrics."""

    def __init__(self, model, task, config: GrokkingConfig, run_dir: Path):
        self.model, self.task, self.config = model, task, config
        # A resumed run keeps the records up to its last checkpoint (the trainer drops the later ones).
        resume = run_dir / "checkpoints" / "resume.json"
        kept = load_json(resume)["step"] if resume.exists() else -1
        self.done_at = next((r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")
                             if r.get("cleaned_up") and r["step"] <= kept), None)

    def __call__(self, record: dict) -> bool:
        step = record["step"]
        if (self.done_at is None and step % self.config.checkpoint_every == 0
                and record.get("test_acc", 0) >= GROKKED_TEST_ACC):
            freqs = key_frequencies(self.model, self.task)
            loss = restricted_loss(self.model, self.task, freqs) if freqs else float("inf")
            record["cleanup_check"] = {"key_frequencies": freqs, "restricted_loss": loss}
            if loss < CLEAN_RESTRICTED_LOSS:
                record["cleaned_up"] = True
                self.done_at = step
        return self.done_at is not None and step >= self.done_at + self.config.margin


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
    stop = _UntilCleanedUp(model, task, config, out) if config.until_done else None
    train_config = config.train_config()
    result = train(model, task, train_config, out, progress=progress, measures=lambda m: grokking_measures(m, task),
                   measures_every=config.checkpoint_every, stop=stop)
    train_seconds = time.perf_counter() - started
    save_tensors(out / "model.safetensors", model.state_dict())
    started = time.perf_counter()
    history, analysis = analyse(model, task, result.history, out)
    analysis["stopped_at_step"] = result.final_step
    analysis["cleaned_up_at_step"] = None if stop is None else stop.done_at
    analysis["stop_reason"] = ("step budget" if not config.until_done
                               else "cleaned up" if stop.done_at is not None else "cap")
    analysis["seconds"] = {"train_this_call": round(train_seconds, 2),
                           "analysis": round(time.perf_counter() - started, 2)}
    write_jsonl(out / "metrics.jsonl", history)
    if report:
        started = time.perf_counter()
        write_grokking_report(out / "report.html", model, task, history, analysis)
        analysis["seconds"]["report"] = round(time.perf_counter() - started, 2)
    save_json(out / "analysis.json", analysis)
    return Run(out, model.eval(), task, history, record, analysis)


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
    final = history[-1]
    analysis = {
        "key_frequencies": freqs,
        "n_key_frequencies": len(freqs),
        "neuron_cluster_sizes": {str(k): v for k, v in clusters.cluster_sizes().items()},
        "fraction_neurons_single_frequency": clusters.fraction_single_frequency(0.85),
        "logit_fraction_explained": logits.fraction_explained,
        "logit_coefficients": {str(k): float(a) for k, a in zip(freqs, logits.coefficients)},
        "restricted_loss": restricted_loss(model, task, freqs) if freqs else float("inf"),
        "excluded_loss": excluded_loss(model, task, freqs) if freqs else 0.0,
        "final": {k: final[k] for k in ("step", "train_loss", "test_loss", "train_acc", "test_acc")},
        "grokked_at_step": next((r["step"] for r in history if r["test_acc"] >= GROKKED_TEST_ACC), None),
        "phases": dataclasses.asdict(phases),
    }
    # Grokked: the final model generalises and uses the Fourier algorithm (restricted loss < 0.1).
    analysis["grokked"] = (final["test_acc"] >= GROKKED_TEST_ACC
                           and analysis["restricted_loss"] < CLEAN_RESTRICTED_LOSS)
    analysis["checks"] = {
        name: {"value": analysis[key], "threshold": threshold, "paper": paper, "passed": bool(test(analysis[key]))}
        for name, (key, test, threshold, paper) in CHECKS.items()
    }
    analysis["passed_checks"] = all(c["passed"] for c in analysis["checks"].values())
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
