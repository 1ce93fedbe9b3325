"""The induction experiment: train the 2-layer attention-only model on repeated random tokens until it forms a
previous-token head and an induction head (Olsson et al. 2022); optionally as a run directory."""

import dataclasses
import time
from pathlib import Path

from mi_toolkit.analysis.heads import induction_measures
from mi_toolkit.core.io import Run, save_json, save_tensors
from mi_toolkit.experiments.runs import check_out_dir, load_model, register_loader
from mi_toolkit.models.factory import build_model, model_config_dict, model_config_from_dict
from mi_toolkit.models.presets import make_induction_model
from mi_toolkit.tasks.induction import InductionTask
from mi_toolkit.training.recipes import INDUCTION
from mi_toolkit.training.trainer import TrainConfig, train

__all__ = ["train_induction_model"]


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
    task.check_model(model)
    record = {
        "kind": "induction",
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
    result = train(model, task, config, run_dir, progress=progress,
                   measures=lambda m: induction_measures(m, task.eval_tokens()))
    model.eval()
    analysis = {k: v for k, v in result.history[-1].items() if k in ("repeat_loss", "induction_score",
                                                                       "prev_token_score")}
    analysis["seconds"] = {"train": round(time.perf_counter() - started, 2)}
    if run_dir is not None:
        save_tensors(Path(run_dir) / "model.safetensors", model.state_dict())
        save_json(Path(run_dir) / "analysis.json", analysis)
    return Run(None if run_dir is None else Path(run_dir), model, task, result.history, record, analysis)


def _load(path: Path, record: dict, device: str) -> Run:
    model = build_model(model_config_from_dict(record["model"]), device=device)
    return Run(path, load_model(path, model), InductionTask(**record["task"], device=device), [], record, {})


register_loader("induction", _load)
