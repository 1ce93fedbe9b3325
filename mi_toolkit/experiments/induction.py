"""Small trained models for circuit work, optionally as run directories: the induction model (a previous-token head
and an induction head, Olsson et al. 2022) and the symbolic-IOI model (:class:`~mi_toolkit.tasks.IOITask`). Both
train in well under a minute on a CPU."""

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from mi_toolkit.analysis.heads import induction_measures
from mi_toolkit.core.io import Run, save_json, save_tensors
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.experiments.runs import check_out_dir, load_model, register_loader
from mi_toolkit.models.factory import build_model, model_config_dict, model_config_from_dict
from mi_toolkit.models.presets import ioi_model_config, make_induction_model
from mi_toolkit.tasks.induction import InductionTask
from mi_toolkit.tasks.ioi import IOITask
from mi_toolkit.training.recipes import INDUCTION, IOI
from mi_toolkit.training.trainer import TrainConfig, train

__all__ = ["train_induction_model", "train_ioi_model"]


def _train_run(kind: str, task, model: HookedTransformer, config: TrainConfig, seed: int, run_dir, progress: bool,
               keep: tuple[str, ...], measures: Callable | None = None) -> Run:
    """Train ``model`` on ``task``; the final values of ``keep`` and the time become the analysis."""
    task.check_model(model)
    record = {
        "kind": kind,
        "task": {k: v for k, v in dataclasses.asdict(task).items() if k != "device"},
        "seed": seed,
        "model": model_config_dict(model.cfg),
        "train": config.to_dict(),
    }
    if run_dir is not None:
        check_out_dir(Path(run_dir), record, ("task", "seed", "model"))
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        save_json(Path(run_dir) / "config.json", record)
    started = time.perf_counter()
    result = train(model, task, config, run_dir, progress=progress, measures=measures)
    model.eval()
    analysis = {k: v for k, v in result.history[-1].items() if k in keep}
    analysis["seconds"] = {"train": round(time.perf_counter() - started, 2)}
    if run_dir is not None:
        save_tensors(Path(run_dir) / "model.safetensors", model.state_dict())
        save_json(Path(run_dir) / "analysis.json", analysis)
    return Run(None if run_dir is None else Path(run_dir), model, task, result.history, record, analysis)


def train_induction_model(
    task: InductionTask | None = None,
    config: TrainConfig = INDUCTION,
    *,
    seed: int = 0,
    run_dir: str | Path | None = None,
    progress: bool = True,
    **model_overrides,
) -> Run:
    """Train :func:`~mi_toolkit.models.make_induction_model` on ``task`` with :func:`mi_toolkit.train`.

    With the defaults this takes well under a minute on a laptop CPU and ends with a layer-1 induction head and a
    layer-0 previous-token head both scoring above 0.9 (``run.history[-1]``).

    Args:
        task: the data; default ``InductionTask()``.
        config: the recipe (default :data:`~mi_toolkit.training.recipes.INDUCTION`).
        seed: seed of the model's initialisation (the data's seed is ``task.seed``).
        run_dir: optional run directory: metrics, checkpoints (an interrupted run resumes), ``config.json``,
            ``model.safetensors`` and ``analysis.json``, loadable with :func:`mi_toolkit.load_run`.
        progress: show a progress bar.
        **model_overrides: fields of :func:`~mi_toolkit.models.induction_model_config`.

    Returns:
        A :class:`~mi_toolkit.core.io.Run`: the model (in eval mode), the task, the history, the config record, and
        ``analysis`` with the final head scores and the training time.
    """
    task = InductionTask() if task is None else task
    fields = dict(d_vocab=task.d_vocab, n_ctx=max(task.seq_len, 2 * task.eval_seg_len + 2))
    fields.update(model_overrides)
    model = make_induction_model(seed=seed, device=task.device, **fields)
    return _train_run("induction", task, model, config, seed, run_dir, progress,
                      ("repeat_loss", "induction_score", "prev_token_score"),
                      measures=lambda m: induction_measures(m, task.eval_tokens()))


def train_ioi_model(
    task: IOITask | None = None,
    config: TrainConfig = IOI,
    *,
    seed: int = 0,
    run_dir: str | Path | None = None,
    progress: bool = True,
    **model_overrides,
) -> Run:
    """Train the symbolic-IOI model (:func:`~mi_toolkit.models.ioi_model_config`) on ``task``.

    Args:
        task: the data; default ``IOITask()``.
        config: the recipe (default :data:`~mi_toolkit.training.recipes.IOI`).
        seed: seed of the model's initialisation (the data's seed is ``task.seed``).
        run_dir: optional run directory, as for :func:`train_induction_model`.
        progress: show a progress bar.
        **model_overrides: fields of :func:`~mi_toolkit.models.ioi_model_config`.

    Returns:
        A :class:`~mi_toolkit.core.io.Run` whose ``analysis`` holds the final accuracy, loss and logit difference.
    """
    task = IOITask() if task is None else task
    model = build_model(ioi_model_config(task.d_vocab, task.seq_len, **model_overrides), seed=seed,
                        device=task.device)
    return _train_run("ioi", task, model, config, seed, run_dir, progress, ("loss", "accuracy", "logit_diff"))


def _loader(task_type):
    def load(path: Path, record: dict, device: str) -> Run:
        model = build_model(model_config_from_dict(record["model"]), device=device)
        return Run(path, load_model(path, model), task_type(**record["task"], device=device), [], record, {})

    return load


register_loader("induction", _loader(InductionTask))
register_loader("ioi", _loader(IOITask))
