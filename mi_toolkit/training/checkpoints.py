"""A training run's files (private to :mod:`mi_toolkit.training.trainer`): the weight snapshots
``checkpoints/step_XXXXXXX.safetensors``, the resume state (``checkpoints/resume.safetensors`` with the model,
optimiser, filter and RNG tensors, ``resume.json`` with the step, the training settings, the optimiser's parameter
groups and the scheduler) and ``metrics.jsonl``."""

import json
from pathlib import Path

import torch

from mi_toolkit.core.io import (
    CheckpointError,
    append_jsonl,
    load_json,
    load_tensors,
    read_jsonl,
    save_json,
    save_tensors,
    write_jsonl,
)

__all__ = ["TrainState", "check_resumable", "list_checkpoints"]


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The weight snapshots of a run, as ``[(step, path), ...]`` sorted by step."""
    found = []
    for path in (Path(run_dir) / "checkpoints").glob("step_*.safetensors"):
        found.append((int(path.name.removeprefix("step_").removesuffix(".safetensors")), path))
    return sorted(found)


_RESUMABLE = ("steps", "compile", "autocast")
"""Settings a run may resume under changed (the last two change only the rounding: a run may move to a machine whose
``autocast="auto"`` means another precision)."""


def check_resumable(run_dir: str | Path, config) -> dict | None:
    """Raise :class:`CheckpointError` unless the run in ``run_dir`` (if it has a resume point) was trained with
    ``config`` (a ``TrainConfig``) up to the settings it may resume under changed (``steps``, ``compile``); return
    the resume point's metadata, or None where there is none. Run before anything in ``run_dir`` is overwritten."""
    json_path = Path(run_dir) / "checkpoints" / "resume.json"
    if not json_path.exists():
        return None
    meta = load_json(json_path)
    # steps may grow; compile changes only the float rounding, so a run may resume with or without it
    wanted = {k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k not in _RESUMABLE}
    # Fields added after a checkpoint was written take their defaults.
    defaults = json.loads(json.dumps(type(config)().to_dict()))
    saved = {k: v for k, v in {**defaults, **meta["train_config"]}.items() if k not in _RESUMABLE}
    if saved != wanted:
        diff = {k: (saved.get(k), wanted.get(k)) for k in wanted if saved.get(k) != wanted.get(k)}
        raise CheckpointError(f"{run_dir} was trained with another configuration (saved, now): {diff}")
    return meta


class TrainState:
    """Everything a resumed run needs, and the files that hold it."""

    def __init__(self, model, optimizer, scheduler, grad_filter, config, run_dir):
        self.model, self.optimizer, self.scheduler, self.grad_filter = model, optimizer, scheduler, grad_filter
        self.config = config
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.history: list[dict] = []
        self.last_checkpoint_step: int | None = None
        if self.run_dir is not None:
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    @property
    def _resume_files(self) -> tuple[Path, Path]:
        return self.run_dir / "checkpoints" / "resume.safetensors", self.run_dir / "checkpoints" / "resume.json"

    def resume(self) -> int:
        """Load the last checkpoint if there is one; return the step to start from."""
        if self.run_dir is None or not self._resume_files[1].exists():
            if self.run_dir is not None:
                (self.run_dir / "metrics.jsonl").write_text("")
            return 0
        tensor_path, json_path = self._resume_files
        meta = check_resumable(self.run_dir, self.config)
        tensors, tensor_meta = load_tensors(tensor_path)
        step = meta["step"]
        if tensor_meta.get("step") != str(step):
            raise CheckpointError(f"{tensor_path} and {json_path} disagree on the step: corrupt checkpoint")
        model_state = {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_state)
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint in {self.run_dir} does not fit this model: {err}") from err
        optim_state = {"state": {}, "param_groups": meta["param_groups"]}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim_state["state"].setdefault(int(index), {})[name] = value
        for group in optim_state["param_groups"]:
            group["betas"] = tuple(group["betas"])
        try:
            self.optimizer.load_state_dict(optim_state)
        except ValueError as err:  # e.g. another split of the parameters into groups
            raise CheckpointError(f"the optimiser state in {self.run_dir} does not fit this run's optimiser ({err}): "
                                  "it was written by a run that grouped the parameters differently; train into a "
                                  "new directory") from err
        self.scheduler.load_state_dict(meta["scheduler"])
        if self.grad_filter is not None:
            self.grad_filter.load_state_tensors(
                {k.removeprefix("filter."): v for k, v in tensors.items() if k.startswith("filter.")}
            )
        torch.set_rng_state(tensors["rng.cpu"])
        self.history = [r for r in read_jsonl(self.run_dir / "metrics.jsonl") if r["step"] <= step]
        write_jsonl(self.run_dir / "metrics.jsonl", self.history)
        self.last_checkpoint_step = step
        return step

    def append_metrics(self, record: dict) -> None:
        if self.run_dir is not None:
            append_jsonl(self.run_dir / "metrics.jsonl", record)

    def save(self, step: int) -> None:
        if self.run_dir is None:
            return
        model_state = self.model.state_dict()
        save_tensors(
            self.run_dir / "checkpoints" / f"step_{step:07d}.safetensors", model_state, metadata={"step": str(step)}
        )
        tensors = {f"model.{k}": v for k, v in model_state.items()}
        optim = self.optimizer.state_dict()
        for index, entry in optim["state"].items():
            for name, value in entry.items():
                tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
        if self.grad_filter is not None:
            tensors.update({f"filter.{k}": v for k, v in self.grad_filter.state_tensors().items()})
        tensors["rng.cpu"] = torch.get_rng_state()
        tensor_path, json_path = self._resume_files
        save_tensors(tensor_path, tensors, metadata={"step": str(step)})
        save_json(
            json_path,
            {
                "step": step,
                "train_config": self.config.to_dict(),
                "param_groups": optim["param_groups"],
                "scheduler": self.scheduler.state_dict(),
            },
        )
        self.last_checkpoint_step = step
