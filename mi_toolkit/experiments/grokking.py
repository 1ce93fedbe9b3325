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
from pathlib import Path

from mi_toolkit.analysis.fourier import (
    frequencies_from_clusters,
    logit_decomposition,
    neuron_clusters,
)
from mi_toolkit.analysis.progress import (
    CLEAN_RESTRICTED_LOSS,
    evaluate_checkpoints,
    excluded_loss,
    grokking_measures,
    restricted_loss,
)
from mi_toolkit.core.io import Run, load_json
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.experiments.runs import load_model, register_loader
from mi_toolkit.experiments.until_done import UntilDoneConfig, apply_checks, history_summary, run_until_done
from mi_toolkit.models.factory import build_model, model_config_dict, model_config_from_dict
from mi_toolkit.models.presets import grokking_model_config
from mi_toolkit.report import write_grokking_report
from mi_toolkit.tasks.modular import ModularArithmetic

__all__ = ["CHECKS", "MAX_KEY_FREQUENCIES", "GrokkingConfig", "algorithm_checks", "analyse", "run_grokking"]


@dataclasses.dataclass(frozen=True)
class GrokkingConfig(UntilDoneConfig):
    """What to train: the task's settings here, the training settings (keyword-only) from
    :class:`~mi_toolkit.experiments.until_done.UntilDoneConfig`: ``recipe``, ``steps`` (an exact budget) or
    ``max_steps`` (the cap of a run that trains until done), ``margin``, ``grad_filter``, ``log_every``,
    ``checkpoint_every``, ``device``."""

    p: int = 113
    """Modulus."""
    op: str = "+"
    frac_train: float = 0.3
    seed: int = 0
    """Fixes both the train/test split and the weight initialisation."""
    embedding_decay_after: float | None = 0.0
    """Part of the fast recipe here: no weight decay on the embeddings and unembedding once test accuracy first
    reaches 99% (see :class:`~mi_toolkit.experiments.until_done.UntilDoneConfig`); None keeps it throughout."""

    def __post_init__(self):
        ModularArithmetic(p=self.p, op=self.op, frac_train=self.frac_train)  # validates p, op, frac_train
        if self.p % 2 == 0:
            raise ValueError(f"p = {self.p} is even: the Fourier analysis (its cos/sin pairs) needs an odd modulus; "
                             f"odd composite moduli such as {self.p + 1} work")
        self._check_training()

    @property
    def n_train(self) -> int:
        return int(self.frac_train * self.p * self.p)


MAX_KEY_FREQUENCIES = 7
"""The most key frequencies a checked model may have (Nanda et al.'s main model keys 5; 3-6 across their seeds)."""

CHECKS = {
    # name: (analysis key, test, threshold text, the paper's figure)
    "key frequencies": ("n_key_frequencies", lambda v: 3 <= v <= MAX_KEY_FREQUENCIES, f"3 to {MAX_KEY_FREQUENCIES}",
                        "5 in the main model; 3-6 across seeds"),
    "single-frequency neurons": ("fraction_neurons_single_frequency", lambda v: v >= 0.65, ">= 0.65",
                                 "~0.85 of neurons with > 85% of their variance in one frequency"),
    "logit variance explained": ("logit_fraction_explained", lambda v: v >= 0.8, ">= 0.80",
                                 "~0.95 by the cos(w_k (a + b - c)) terms"),
    "restricted loss (test)": ("restricted_loss", lambda v: v < CLEAN_RESTRICTED_LOSS, f"< {CLEAN_RESTRICTED_LOSS}",
                               "falls to about the test loss"),
    "excluded loss (train)": ("excluded_loss", lambda v: v > 1.0, "> 1", "rises far above the train loss"),
}
"""The algorithm checks of a grokked model (Nanda et al. 2023), with the thresholds the toolkit holds them to."""


def algorithm_checks(model: HookedTransformer, task: ModularArithmetic) -> dict:
    """Key frequencies and the :data:`CHECKS` of the model as it is now.

    Returns:
        A JSON-safe dict: ``key_frequencies``, ``n_key_frequencies``, ``neuron_cluster_sizes``, the value of every
        check under its analysis key, ``logit_coefficients``, ``checks`` (``{name: {value, threshold, paper,
        passed}}``) and ``passed_checks``.
    """
    clusters = neuron_clusters(model, task)
    freqs = frequencies_from_clusters(clusters)
    logits = logit_decomposition(model, task, freqs)
    values = {
        "key_frequencies": freqs,
        "n_key_frequencies": len(freqs),
        "neuron_cluster_sizes": {str(k): v for k, v in clusters.cluster_sizes().items()},
        "fraction_neurons_single_frequency": clusters.fraction_single_frequency(0.85),
        "logit_fraction_explained": logits.fraction_explained,
        "logit_coefficients": {str(k): float(a) for k, a in zip(freqs, logits.coefficients)},
        "restricted_loss": restricted_loss(model, task, freqs) if freqs else float("inf"),
        "excluded_loss": excluded_loss(model, task, freqs) if freqs else 0.0,
    }
    return apply_checks(values, CHECKS)


def run_grokking(out_dir: str | Path, config: GrokkingConfig = GrokkingConfig(), *, progress: bool = True,
                 report: bool = True) -> Run:
    """Train the modular-arithmetic transformer, measure its progress and write the run directory.

    A directory holding an interrupted run of the same config resumes from its last checkpoint; any other
    non-empty directory is refused before work starts.

    Returns:
        The finished run, as :func:`mi_toolkit.load_run` would return it.
    """
    task = ModularArithmetic(p=config.p, op=config.op, frac_train=config.frac_train, seed=config.seed,
                             device=config.device)
    record = _config_record(config)
    model = build_model(model_config_from_dict(record["model"]), seed=config.seed, device=config.device,
                        freeze_biases=True)

    def check(model):
        checks = algorithm_checks(model, task)
        return checks["passed_checks"], {"key_frequencies": checks["key_frequencies"],
                                         **{name: c["value"] for name, c in checks["checks"].items()}}

    return run_until_done(Path(out_dir), config, record, task, model, check=check, analyse=analyse,
                          report=write_grokking_report if report else None,
                          measures=lambda m: grokking_measures(m, task), progress=progress)


def analyse(model: HookedTransformer, task: ModularArithmetic, history: list[dict], run_dir=None):
    """Key frequencies and the Fourier-algorithm checks on the final model; progress measures over checkpoints.

    Returns:
        ``(history, analysis)``: the history with ``restricted_loss``, ``excluded_loss`` and
        ``excluded_loss_per_freq`` merged in at the checkpointed steps, and a JSON-safe summary.
    """
    analysis = algorithm_checks(model, task)
    freqs = analysis["key_frequencies"]
    if run_dir is not None:
        by_step = {r["step"]: r for r in evaluate_checkpoints(model, task, run_dir, freqs)}
        history = [{**r, **by_step.get(r["step"], {})} for r in history]
    analysis.update(history_summary(history, analysis["restricted_loss"]))  # with "grokked"
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
