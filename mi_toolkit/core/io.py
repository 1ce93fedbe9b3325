"""Run directories and checkpoint files: tensors in safetensors, everything else in JSON, written atomically and
read with clear errors; and :class:`Run`, the record every experiment returns.

Nothing here unpickles: a checkpoint from an untrusted source can at worst fail to load.
"""

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["CheckpointError", "Run", "append_jsonl", "load_json", "load_tensors", "read_jsonl", "save_json",
           "save_tensors", "write_jsonl"]


class CheckpointError(ValueError):
    """A checkpoint or run file is missing, corrupt, or does not match what reads it."""


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (moved to CPU, made contiguous) to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a safetensors file; returns ``(tensors, metadata)``. Raises :class:`CheckpointError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        tensors = load_file(str(path), device=str(device))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"corrupt or unreadable safetensors file {path}: {err}") from err
    return tensors, metadata


def save_json(path: str | Path, obj) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def load_json(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt JSON in {path}: {err}") from err


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file (``metrics.jsonl``); an absent file has none. A last line cut short (the
    writer was killed mid-append) is dropped; a corrupt line before it is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise CheckpointError(f"corrupt JSON at line {i + 1} of {path}: {err}") from err
    return records


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    """Write ``records`` one JSON object per line, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as a JSON line (a kill mid-append leaves a cut-off last line, which :func:`read_jsonl`
    drops)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


@dataclasses.dataclass
class Run:
    """A trained model with its data and record: what every experiment returns and :func:`mi_toolkit.load_run`
    loads back from a run directory."""

    path: Path | None
    """The run directory (None for a run kept in memory)."""
    model: Any
    """The trained model (a ``HookedTransformer`` for the transformer experiments), in eval mode."""
    task: Any
    """The task it was trained on, with its exact data split."""
    history: list[dict]
    """One record per logged training step (``metrics.jsonl``)."""
    config: dict
    """Everything needed to rebuild the run (``config.json``)."""
    analysis: dict
    """The experiment's findings and timings (``analysis.json``)."""
