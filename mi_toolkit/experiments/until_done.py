"""Training until done, shared by the experiments that grok (modular arithmetic, finite groups): the settings every
such run takes, the stop rule (train until the experiment's checks pass at a checkpoint, then a margin, or a cap),
and the run-directory writer around :func:`~mi_toolkit.training.train`."""

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from mi_toolkit.analysis.progress import CLEAN_RESTRICTED_LOSS, GROKKED_TEST_ACC, estimate_phases
from mi_toolkit.core.io import Run, load_json, read_jsonl, save_json, save_tensors, write_jsonl
from mi_toolkit.experiments.runs import check_out_dir
from mi_toolkit.training.checkpoints import check_resumable
from mi_toolkit.training.recipes import GROKKING_RECIPES, grokking_recipe
from mi_toolkit.training.trainer import TrainConfig, train

__all__ = ["UntilDoneConfig", "apply_checks", "history_summary", "run_until_done"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class UntilDoneConfig:
    """The training settings of a run that trains until done (keyword-only in every subclass)."""

    recipe: str = "fast"
    """A name in :data:`~mi_toolkit.training.recipes.GROKKING_RECIPES`: ``"fast"`` (measured on 2 CPU cores, README)
    or ``"paper"`` (Nanda et al.'s exact settings)."""
    steps: int | None = None
    """An exact budget: train this many steps, whatever happens. None (default): train until done (see
    :attr:`max_steps`)."""
    max_steps: int | None = None
    """Until done: stop :attr:`margin` steps after the model is done (test accuracy >= 99% and every check of the
    experiment passes, checked at every checkpoint), or at this cap (default: the recipe's ``steps``)."""
    margin: int = 100
    """Steps trained after the checks pass, before stopping (rounded up to a checkpoint, where they are checked
    again)."""
    cooldown: bool = True
    """Anneal the learning rate linearly to zero over the margin (a warmup-stable-decay schedule whose decay starts
    when the checks pass): the model settles instead of going on pruning. Without it, weight decay at the full
    learning rate kept pruning small-modulus models from three key frequencies to two within 100 steps of passing
    (README, "Universality grid"). False: the margin trains at the recipe's learning rate."""
    grad_filter: str | None = None
    """Override the recipe's Grokfast filter: ``"none"``, ``"ema"`` or ``"ma"``."""
    weight_decay: float | None = None
    """Override the recipe's weight decay. None: the recipe's (the fast recipe's scales with the training set, see
    :func:`~mi_toolkit.training.recipes.grokking_recipe`; experiments may fix their own in :meth:`fast_changes`)."""
    optimizer: str | None = None
    """Override the recipe's optimiser: ``"adamw"`` or ``"muon"`` (the weight matrices; the rest AdamW). None: the
    recipe's, with the experiment's changes (the groups below order 50: Muon). ``muon_lr`` implies ``"muon"``."""
    muon_lr: float | None = None
    """Train the weight matrices with Muon at this learning rate (:mod:`~mi_toolkit.training.muon`; the other
    parameters keep the recipe's AdamW). Weight decay is decoupled, ``lr * weight_decay`` a step, so at Muon's larger
    learning rate the same ``weight_decay`` pulls the matrices harder. None: the recipe's optimiser."""

    embedding_decay_after: float | None = None
    """Until done, with the fast recipe and AdamW: once test accuracy first reaches 99%, multiply the weight decay of
    the embeddings, positional embeddings and unembedding by this (0: none from then on); the weight matrices keep
    theirs, and with it the clean-up. Before that step the decay is what pulls a small training set away from
    memorising; after it, it is what prunes a model's weakest key frequency. None: no change. The grokking
    experiment sets 0 (README, "Universality grid")."""

    FAST_CHANGES: ClassVar[dict] = {}
    """Changes to the fast recipe for this experiment (``TrainConfig`` fields: a fixed weight decay instead of the
    size-scaled one, miiii's optimiser, schedule and cap); the config's own overrides (``steps``, ``max_steps``,
    ``muon_lr``, ``weight_decay``, ...) apply after them."""
    log_every: int = 10
    """Losses and accuracies every this many steps (often enough to see the loss spikes)."""
    checkpoint_every: int = 100
    """Weight snapshots for the progress measures (and resume points, and the checks)."""
    device: str = "cpu"

    def _check_training(self) -> None:
        """Validate the training settings; subclasses call it from ``__post_init__``."""
        if self.recipe not in GROKKING_RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; expected one of {sorted(GROKKING_RECIPES)}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if self.log_every < 1 or self.checkpoint_every % self.log_every:
            raise ValueError(f"checkpoint_every ({self.checkpoint_every}) must be a multiple of log_every "
                             f"({self.log_every}): the checks run on logged checkpoint steps")
        if self.embedding_decay_after is not None and not self.embedding_decay_after >= 0:
            raise ValueError(f"embedding_decay_after must be >= 0 or None, got {self.embedding_decay_after}")
        if self.steps is not None and self.max_steps is not None:
            raise ValueError("give steps (an exact budget) or max_steps (a cap when training until done), not both")
        if self.optimizer not in (None, "adamw", "muon") or (self.optimizer == "adamw" and self.muon_lr is not None):
            raise ValueError(f"optimizer must be None, 'adamw' or 'muon' (muon_lr needs Muon), got {self.optimizer!r}")
        self.train_config()  # validates the training settings

    def fast_changes(self) -> dict:
        """This run's changes to the fast recipe: :attr:`FAST_CHANGES` (an experiment may choose by its task)."""
        return self.FAST_CHANGES

    @property
    def until_done(self) -> bool:
        """Whether the run stops once its checks pass (no exact ``steps`` budget)."""
        return self.steps is None

    def train_config(self) -> TrainConfig:
        """The recipe with this config's overrides; its ``steps`` is the budget or the cap."""
        changes = dict(log_every=self.log_every, checkpoint_every=self.checkpoint_every)
        if self.steps is not None or self.max_steps is not None:
            changes["steps"] = self.steps if self.steps is not None else self.max_steps
        if self.grad_filter is not None:
            changes["grad_filter"] = self.grad_filter
        if self.optimizer is not None:
            changes["optimizer"] = self.optimizer
        if self.muon_lr is not None:
            changes.update(optimizer="muon", muon_lr=self.muon_lr)
        if self.weight_decay is not None:
            changes["weight_decay"] = self.weight_decay
        own = self.fast_changes() if self.recipe == "fast" else {}
        return grokking_recipe(self.recipe, self.n_train).replace(**{**own, **changes})  # validated once, whole

    @property
    def n_train(self) -> int:
        """The number of training examples (the fast recipe's weight decay depends on it)."""
        raise NotImplementedError


def apply_checks(values: dict, checks: dict) -> dict:
    """Add ``"checks"`` (``{name: {value, threshold, paper, passed}}``) and ``"passed_checks"`` to ``values``, from
    ``checks = {name: (key in values, test, threshold text, the paper's figure)}``; returns ``values``."""
    values["checks"] = {
        name: {"value": values[key], "threshold": threshold, "paper": paper, "passed": bool(test(values[key]))}
        for name, (key, test, threshold, paper) in checks.items()
    }
    values["passed_checks"] = all(c["passed"] for c in values["checks"].values())
    return values


def history_summary(history: list[dict], restricted_loss: float | None = None) -> dict:
    """What every grokking-style analysis reports of its history: the final losses and accuracies, the first step
    with test accuracy >= 99%, and the estimated phases. Given the final model's ``restricted_loss``, also
    ``"grokked"``: the model generalises (test accuracy >= 99%) and uses the algorithm (restricted loss < 0.1)."""
    final = history[-1]
    summary = {
        "final": {k: final[k] for k in ("step", "train_loss", "test_loss", "train_acc", "test_acc")},
        "grokked_at_step": next((r["step"] for r in history if r["test_acc"] >= GROKKED_TEST_ACC), None),
        "phases": dataclasses.asdict(estimate_phases(history)),
    }
    if restricted_loss is not None:
        summary["grokked"] = final["test_acc"] >= GROKKED_TEST_ACC and restricted_loss < CLEAN_RESTRICTED_LOSS
    return summary


class _UntilDone:
    """``stop`` and ``lr_scale`` for :func:`~mi_toolkit.training.train`: at each checkpoint step with test accuracy
    >= 99%, run ``check(model) -> (passed, values)`` and record the values under ``"algorithm_checks"``. Once they
    pass, mark the record (``"done": true``) and train the margin, up to the first checkpoint at least ``margin``
    steps later, with the learning rate annealed to zero there (``config.cooldown``); stop there if they pass again
    (so the final model passes them too). If they do not (a loss spike in the margin), mark the record
    (``"done": false``) and train on at the full learning rate until they pass again. A resumed run finds the marks
    in its metrics."""

    def __init__(self, model, check, config: UntilDoneConfig, run_dir: Path):
        self.model, self.check, self.config = model, check, config
        # A resumed run keeps the records up to its last checkpoint (the trainer drops the later ones).
        resume = run_dir / "checkpoints" / "resume.json"
        kept = load_json(resume)["step"] if resume.exists() else -1
        self.done_at = self.generalised_at = None
        for r in read_jsonl(run_dir / "metrics.jsonl"):
            if r["step"] > kept:
                continue
            if self.generalised_at is None and r.get("test_acc", 0) >= GROKKED_TEST_ACC:
                self.generalised_at = r["step"]
            if "done" in r:
                self.done_at = r["step"] if r["done"] else None
        self.finished = False  # whether the checks passed again after the margin (the run stopped on them)
        self.cap = config.train_config().steps

    @property
    def stop_at(self) -> int | None:
        """The checkpoint that ends the margin (None until the checks pass)."""
        if self.done_at is None:
            return None
        every = self.config.checkpoint_every
        return self.done_at + -(-self.config.margin // every) * every

    def embedding_decay_scale(self, step: int) -> float:
        """The embeddings' weight decay factor at ``step``: 1 until test accuracy first reached 99%, then
        ``config.embedding_decay_after``."""
        return 1.0 if self.generalised_at is None else self.config.embedding_decay_after

    def lr_scale(self, step: int) -> float:
        """The learning rate's factor at ``step``: 1, falling linearly to 0 at :attr:`stop_at` in the margin."""
        if not self.config.cooldown or self.done_at is None or self.stop_at == self.done_at:
            return 1.0
        return max(0.0, (self.stop_at - step) / (self.stop_at - self.done_at))

    def __call__(self, record: dict) -> bool:
        step = record["step"]
        if self.generalised_at is None and record.get("test_acc", 0) >= GROKKED_TEST_ACC:
            self.generalised_at = step
        at_checkpoint = step % self.config.checkpoint_every == 0 or step == self.cap  # the trainer saves both
        if not at_checkpoint or record.get("test_acc", 0) < GROKKED_TEST_ACC:
            if self.done_at is not None and at_checkpoint and step >= self.stop_at:
                record["done"], self.done_at = False, None  # the margin ended below 99%: train on
            return False
        if self.done_at is not None and step < self.stop_at:
            return False  # in the margin: no checks needed
        passed, record["algorithm_checks"] = self.check(self.model)
        if self.done_at is None:
            if passed:
                record["done"], self.done_at = True, step
        elif not passed:
            record["done"], self.done_at = False, None
        self.finished = self.done_at is not None and step >= self.stop_at
        return self.finished


def run_until_done(out: Path, config: UntilDoneConfig, record: dict, task, model, *,
                   check: Callable, analyse: Callable, report: Callable | None, measures: Callable | None = None,
                   progress: bool = True) -> Run:
    """Train ``model`` on ``task`` into the run directory ``out`` and write what every grokking-style run writes.

    Args:
        record: ``config.json``'s content; a non-empty ``out`` must hold an interrupted run agreeing with it on
            ``task``, ``seed``, ``recipe`` and ``model`` (it is resumed).
        check: ``check(model) -> (passed, values)`` at checkpoints once test accuracy >= 99% (until done only).
        analyse: ``analyse(model, task, history, out) -> (history, analysis)`` on the final model.
        report: ``report(path, model, task, history, analysis)``, or None for no report.
        measures: extra metrics at every checkpoint, ``measures(model) -> dict``.
    """
    check_out_dir(out, record, ("task", "seed", "recipe", "model"))
    train_config = config.train_config()
    check_resumable(out, train_config)  # before config.json is rewritten
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "config.json", record)
    save_json(out / "split.json", task.split_dict())
    started = time.perf_counter()
    stop = _UntilDone(model, check, config, out) if config.until_done else None
    embeddings = (stop is not None and config.embedding_decay_after is not None and config.recipe == "fast"
                  and train_config.optimizer != "muon")
    result = train(model, task, train_config, out, progress=progress, measures=measures,
                   measures_every=config.checkpoint_every, stop=stop, lr_scale=None if stop is None else stop.lr_scale,
                   embedding_decay_scale=stop.embedding_decay_scale if embeddings else None)
    train_seconds = time.perf_counter() - started
    save_tensors(out / "model.safetensors", model.state_dict())
    started = time.perf_counter()
    history, analysis = analyse(model, task, result.history, out)
    analysis["stopped_at_step"] = result.final_step
    analysis["checks_passed_at_step"] = None if stop is None else stop.done_at
    analysis["stop_reason"] = ("step budget" if not config.until_done
                               else "checks passed" if stop.finished else "cap")
    analysis["precision"] = result.precision
    analysis["seconds"] = {"train_this_call": round(train_seconds, 2),
                           "analysis": round(time.perf_counter() - started, 2)}
    write_jsonl(out / "metrics.jsonl", history)
    if report is not None:
        started = time.perf_counter()
        report(out / "report.html", model, task, history, analysis)
        analysis["seconds"]["report"] = round(time.perf_counter() - started, 2)
    save_json(out / "analysis.json", analysis)
    return Run(out, model.eval(), task, history, record, analysis)
