"""Run directories of the experiments: the checks before one is written, and :func:`load_run`, which reads any of
them back (the experiment is named by ``"kind"`` in its ``config.json``)."""

import json
from collections.abc import Callable
from pathlib import Path

import torch

from mi_toolkit.core.io import CheckpointError, Run, load_json, load_tensors, read_jsonl

__all__ = ["PACKAGE_DATA", "check_out_dir", "load_model", "load_run", "register_loader"]

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"
"""The folder of the run directories shipped in the package (:mod:`mi_toolkit.experiments.packaged`)."""

Loader = Callable[[Path, dict, str], Run]
_LOADERS: dict[str, Loader] = {}


def register_loader(kind: str, loader: Loader) -> None:
    """Make :func:`load_run` read run directories whose ``config.json`` says ``"kind": kind`` with ``loader``,
    ``loader(path, config_record, device) -> Run`` (model and task; history and analysis are filled in)."""
    _LOADERS[kind] = loader


def load_run(path: str | Path, device: str = "cpu") -> Run:
    """Load a run directory written by an experiment (``mi-toolkit grokking``, :func:`mi_toolkit.run_grokking`,
    :func:`mi_toolkit.train_induction_model` with a ``run_dir``).

    Returns:
        A :class:`~mi_toolkit.core.io.Run` with ``.model`` (final weights, eval mode), ``.task`` (its exact split),
        ``.history``, ``.config`` and ``.analysis``.

    Raises:
        CheckpointError: a file is missing or corrupt, the weights do not fit the config, or the directory is not
            a run of a known experiment.
    """
    path = Path(path)
    record = load_json(path / "config.json")
    kind = record.get("kind")
    if kind not in _LOADERS:
        raise CheckpointError(f"{path / 'config.json'} names experiment {kind!r}; known: {sorted(_LOADERS)}")
    run = _LOADERS[kind](path, record, device)
    run.history = read_jsonl(path / "metrics.jsonl")
    run.analysis = load_json(path / "analysis.json") if (path / "analysis.json").exists() else {}
    return run


def load_model(path: Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load ``path / "model.safetensors"`` into ``model`` (checked against its shapes); returns it in eval mode."""
    state, _ = load_tensors(path / "model.safetensors", device=next(model.parameters()).device)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path / 'model.safetensors'} does not fit the model in config.json: {err}") from err
    return model.eval()


def check_out_dir(out: Path, record: dict, same: tuple[str, ...]) -> None:
    """Refuse a non-empty ``out`` unless it holds an interrupted run whose ``config.json`` agrees with ``record``
    on the fields ``same`` (it is then resumed). Raises ``FileExistsError`` before any work starts."""
    if not out.exists() or not any(out.iterdir()):
        return
    resumable = (out / "config.json").exists() and (out / "checkpoints" / "resume.json").exists()
    if not resumable:
        raise FileExistsError(
            f"{out} is not empty and holds no resumable run; choose a new --out directory or empty this one"
        )
    saved = load_json(out / "config.json")
    mine = json.loads(json.dumps(record))
    for part in same:
        if saved.get(part) != mine[part]:
            raise FileExistsError(f"{out} holds a run with a different {part}: {saved.get(part)} (now {mine[part]})")
