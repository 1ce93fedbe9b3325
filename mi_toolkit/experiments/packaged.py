"""Run directories shipped in the package, so that tutorials and users start from a trained model in seconds.

Each one is what the toolkit's own command writes with a recorded seed (:data:`PACKAGED`); ``mi-toolkit packaged
NAME --out DIR`` writes it again, and ``python benchmarks/packaged.py`` rebuilds every one and compares its weights
with the shipped files. Only ``config.json``, ``metrics.jsonl``, ``analysis.json``, ``model.safetensors`` and, for
the pair tasks, ``split.json`` are shipped (no checkpoints, no report)::

    run = mt.load_packaged("grokking_p113")   # a Run: .model, .task, .history, .analysis
"""

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mi_toolkit.core.io import CheckpointError, Run
from mi_toolkit.experiments.runs import PACKAGE_DATA, load_run

__all__ = ["PACKAGE_DATA", "PACKAGED", "PACKAGED_FILES", "PackagedRun", "build_packaged", "load_packaged", "ship"]

PACKAGED_FILES = ("config.json", "metrics.jsonl", "analysis.json", "model.safetensors")
"""The files every shipped run keeps; ``split.json`` too where the run has one (the pair tasks' training split)."""


@dataclass(frozen=True)
class PackagedRun:
    """One shipped run: what it is, the command that writes it, and that command as a function of the run
    directory (``build(out, progress) -> Run``)."""

    summary: str
    command: str
    build: Callable[[Path, bool], Run]


def _grokking(out: Path, progress: bool) -> Run:
    from mi_toolkit.experiments.grokking import GrokkingConfig, run_grokking

    return run_grokking(out, GrokkingConfig(p=113, seed=0), progress=progress, report=False)


def _groups(out: Path, progress: bool) -> Run:
    from mi_toolkit.experiments.groups import GroupsConfig, run_groups

    return run_groups(out, GroupsConfig(group="S4", seed=0), progress=progress, report=False)


def _miiii(out: Path, progress: bool) -> Run:
    from mi_toolkit.experiments.miiii import MiiiiConfig, run_miiii

    return run_miiii(out, MiiiiConfig(p=37, seed=0), progress=progress, report=False)


def _induction(out: Path, progress: bool) -> Run:
    from mi_toolkit.experiments.induction import train_induction_model

    return train_induction_model(seed=0, run_dir=out, progress=progress)


def _ioi(out: Path, progress: bool) -> Run:
    from mi_toolkit.experiments.induction import train_ioi_model

    return train_ioi_model(seed=0, run_dir=out, progress=progress)


def _facts(out: Path, progress: bool) -> Run:
    from mi_toolkit.experiments.facts import FactsConfig, run_facts

    return run_facts(out, FactsConfig(seed=0), progress=progress, report=False)


def _othello(out: Path, progress: bool) -> Run:
    from mi_toolkit.experiments.othello import OthelloConfig, run_othello

    return run_othello(out, OthelloConfig(seed=0), progress=progress, report=False)


PACKAGED: dict[str, PackagedRun] = {
    "grokking_p113": PackagedRun(
        "modular addition mod 113, trained until grokked and every algorithm check passed (tutorial 01)",
        "mi-toolkit grokking --out DIR", _grokking),
    "groups_S4": PackagedRun(
        "composition in S4, trained until grokked (tutorial 04)",
        "mi-toolkit groups --group S4 --out DIR", _groups),
    "miiii_p37": PackagedRun(
        "miiii, p = 37: every task (x0 + 37 x1) mod q for the 11 primes q < 37, trained until each grokked "
        "(tutorial 04)", "mi-toolkit miiii --p 37 --out DIR", _miiii),
    "induction": PackagedRun(
        "the induction model, 2 attention-only layers: a previous-token head in layer 0, induction heads in layer 1 "
        "(tutorials 02 and 06)", "mi-toolkit packaged induction --out DIR", _induction),
    "ioi": PackagedRun(
        "the symbolic-IOI model, 2 attention-only layers (tutorial 06)",
        "mi-toolkit packaged ioi --out DIR", _ioi),
    "facts_small": PackagedRun(
        "a 4-layer model that recalls a synthetic knowledge base of 2,400 facts (tutorial 07)",
        "mi-toolkit facts --out DIR", _facts),
    "othello_6x6": PackagedRun(
        "Othello-GPT on 6x6 boards, 4 layers, with its probes and edits analysed (tutorial 05)",
        "mi-toolkit othello --out DIR", _othello),
}
"""Every shipped run by name: seed 0 and the command's defaults. ``grokking_p113``, ``groups_S4``, ``miiii_p37`` and
``ioi`` were trained with 2 threads on one machine and rebuild there byte for byte with 2; ``induction`` with 2
threads on another, an AVX2-only CPU (where ``ioi`` rebuilds with weights up to 0.56 apart). The thread count and
the CPU's vector instructions change the float rounding, and with it the trajectory. ``facts_small`` and
``othello_6x6`` were written by their commands before this registry existed."""


def _entry(name: str) -> PackagedRun:
    if name not in PACKAGED:
        raise ValueError(f"no shipped run named {name!r}; shipped: {', '.join(PACKAGED)}")
    return PACKAGED[name]


def load_packaged(name: str, device: str = "cpu") -> Run:
    """The shipped run ``name`` (one of :data:`PACKAGED`) as a :class:`~mi_toolkit.core.io.Run`: ``.model`` (eval
    mode), ``.task`` (its exact split), ``.history``, ``.config``, ``.analysis``. Loads in a second; nothing is
    downloaded.

    Raises:
        ValueError: an unknown name (the message lists the shipped ones).
    """
    _entry(name)
    return load_run(PACKAGE_DATA / name, device=device)


def build_packaged(name: str, out: str | Path, *, progress: bool = True) -> Run:
    """Train the shipped run ``name`` again into the run directory ``out`` with its recorded command (seed 0,
    the defaults). On the CPU that trained it, with ``torch.set_num_threads(2)``, it gives the shipped weights byte
    for byte; another thread count or CPU rounds differently, so the weights drift apart and the run may stop at
    another step."""
    return _entry(name).build(Path(out), progress)


def ship(name: str, run_dir: str | Path) -> Path:
    """Copy the files a shipped run keeps (:data:`PACKAGED_FILES`, and ``split.json`` where there is one) from
    ``run_dir`` into the package's data folder, replacing the shipped ones; returns that folder. For maintainers,
    after :func:`build_packaged`.

    Raises:
        CheckpointError: ``run_dir`` lacks one of the files (checked before anything is replaced).
    """
    _entry(name)
    run_dir = Path(run_dir)
    missing = [file for file in PACKAGED_FILES if not (run_dir / file).is_file()]
    if missing:
        raise CheckpointError(f"{run_dir} is not a finished run: it lacks {', '.join(missing)}")
    files = PACKAGED_FILES + (("split.json",) if (run_dir / "split.json").is_file() else ())
    target = PACKAGE_DATA / name
    target.mkdir(parents=True, exist_ok=True)
    for file in files:
        shutil.copyfile(run_dir / file, target / file)
    return target
