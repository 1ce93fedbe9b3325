"""Checkpoint files: tensors in safetensors, everything else in JSON; written atomically, read with clear errors.

Nothing here unpickles: a checkpoint from an untrusted source can at worst fail to load.
"""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = ["CheckpointError", "load_json", "load_tensors", "save_json", "save_tensors"]


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
        from safetensors import safe_open

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
