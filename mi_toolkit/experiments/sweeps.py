"""Universality sweeps: the grokking run over a grid of moduli, seeds and training fractions, on Ray.

Each configuration is an ordinary run directory (``DIR/p113_seed0_frac0.3``, loadable with :func:`mt.load_run`).
The driver writes ``DIR/summary.jsonl``, one row per run as it ends (a run that raised gets a row with its
``error``, and is tried again when the sweep is continued), ``DIR/sweep.json`` (the settings shared by every run) and
``DIR/report.html``. A killed sweep continues where it stopped: runs with a row are skipped, a run that finished
without one gets its row from its ``analysis.json``, and an interrupted run resumes from its last checkpoint. A sweep
directory is only continued with the same shared settings. On a cluster the sweep directory must be on a file
system every node sees.

Runs execute as Ray tasks (one CPU and one torch thread each): on an embedded local Ray started here by default, or
on an existing cluster (``address="auto"`` or ``"ray://HOST:PORT"``). A worker that dies costs only its run, which
Ray retries (``max_retries``). Without Ray installed the runs go one after another in this process.
"""

import dataclasses
import importlib.util
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mi_toolkit.core.io import append_jsonl, load_json, read_jsonl, save_json
from mi_toolkit.experiments.grokking import GrokkingConfig, run_grokking
from mi_toolkit.report import write_sweep_report

__all__ = ["run_name", "summary_row", "sweep"]


def run_name(config: GrokkingConfig) -> str:
    """The run directory's name inside a sweep: ``p113_seed0_frac0.3``."""
    return f"p{config.p}_seed{config.seed}_frac{config.frac_train:g}"


def summary_row(config: GrokkingConfig, analysis: dict | None = None, seconds: float | None = None,
                error: str | None = None) -> dict:
    """One row of ``summary.jsonl``: from a finished run's analysis, or for a run that raised ``error``."""
    analysis = analysis or {}
    return {
        "run": run_name(config), "p": config.p, "seed": config.seed, "frac_train": config.frac_train,
        "grokked": bool(analysis.get("grokked")), "grokked_at_step": analysis.get("grokked_at_step"),
        "checks_passed_at_step": analysis.get("checks_passed_at_step"), "stopped_at_step": analysis.get("stopped_at_step"),
        "key_frequencies": analysis.get("key_frequencies"), "passed_checks": bool(analysis.get("passed_checks")),
        "checks": {name: {"value": c["value"], "passed": c["passed"]} for name, c in analysis.get("checks", {}).items()},
        "seconds": None if seconds is None else round(seconds, 1), "error": error,
    }


def _run_one(out: str, fields: dict, fail_once: str | None = None, threads: int | None = None) -> tuple[dict, float]:
    """Train one configuration into ``out``; runs in a Ray worker or in this process. Returns (analysis, seconds)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)  # a Ray worker: one run per CPU
    if fail_once is not None and not os.path.exists(fail_once):  # fault injection for the tests: die once
        Path(fail_once).write_text("crashed once")
        os._exit(1)
    out_path = Path(out)
    if out_path.exists() and not (out_path / "checkpoints" / "resume.json").exists():
        shutil.rmtree(out_path)  # died before its first checkpoint: start it again
    started = time.perf_counter()
    run = run_grokking(out_path, GrokkingConfig(**fields), progress=False)
    return run.analysis, time.perf_counter() - started


def sweep(
    out_dir: str | Path,
    p: Sequence[int],
    seeds: Sequence[int],
    frac_train: Sequence[float] = (0.3,),
    *,
    base: GrokkingConfig = GrokkingConfig(),
    address: str | None = None,
    use_ray: bool | None = None,
    num_cpus: int | None = None,
    max_retries: int = 1,
    report: bool = True,
    progress: bool = True,
    _fail_once: dict[str, str] | None = None,
) -> list[dict]:
    """Run the grokking experiment for every (p, seed, frac_train) and summarise.

    Args:
        out_dir: the sweep directory (created; an earlier sweep there is continued).
        p, seeds, frac_train: the grid.
        base: every other setting of the runs (recipe, caps, ...); its p, seed and frac_train are replaced.
        address: an existing Ray cluster (``"auto"``, ``"ray://HOST:PORT"``); None starts a local Ray here.
        use_ray: None uses Ray where it is installed; False runs sequentially in this process.
        num_cpus: CPUs of the local Ray (default: all of this machine's).
        max_retries: how often Ray retries a run whose worker died.
        report: write ``report.html``.
        progress: a progress bar over runs.

    Returns:
        The summary rows of every configuration of the grid, in grid order.
    """
    out = Path(out_dir).resolve()  # Ray workers do not run in this directory
    grid = dict.fromkeys(itertools.product(p, seeds, frac_train))  # duplicates would write one directory twice
    configs = [dataclasses.replace(base, p=pi, seed=s, frac_train=f) for pi, s, f in grid]
    shared = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(base))).items()
              if k not in ("p", "seed", "frac_train")}
    # Settings added to the config after a sweep was started take their defaults there.
    defaults = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(type(base)()))).items() if k in shared}
    if (out / "sweep.json").exists() and {**defaults, **load_json(out / "sweep.json")} != shared:
        raise FileExistsError(f"{out} holds a sweep with other settings ({load_json(out / 'sweep.json')}); "
                              "choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    save_json(out / "sweep.json", shared)
    summary_path = out / "summary.jsonl"
    rows = {row["run"]: row for row in read_jsonl(summary_path) if row.get("error") is None}
    todo = []
    for config in configs:
        name = run_name(config)
        if name in rows:
            continue
        if (out / name / "analysis.json").exists():  # finished, but the driver stopped before writing its row
            _append(summary_path, rows, summary_row(config, load_json(out / name / "analysis.json"), None))
        else:
            todo.append(config)
    if todo:
        if use_ray is None:
            use_ray = _ray_available()
            if not use_ray:
                print("mi-toolkit sweep: Ray is not installed (pip install 'mi-toolkit[ray]'); running the sweep "
                      "sequentially in this process", file=sys.stderr)
        runner = _run_on_ray if use_ray else _run_here
        runner(out, todo, rows, summary_path, address=address, num_cpus=num_cpus, max_retries=max_retries,
               progress=progress, fail_once=_fail_once or {})
    ordered = [rows[run_name(c)] for c in configs if run_name(c) in rows]
    if report:
        write_sweep_report(out / "report.html", ordered)
    return ordered


def _append(path: Path, rows: dict, row: dict) -> None:
    rows[row["run"]] = row
    append_jsonl(path, row)


def _ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _run_here(out, todo, rows, summary_path, *, progress, **_) -> None:
    from tqdm.auto import tqdm

    for config in tqdm(todo, desc="sweep", disable=not progress):
        name = run_name(config)
        try:
            analysis, seconds = _run_one(str(out / name), dataclasses.asdict(config))
            _append(summary_path, rows, summary_row(config, analysis, seconds))
        except Exception as err:  # one bad run must not end the sweep
            _append(summary_path, rows, summary_row(config, error=f"{type(err).__name__}: {err}"))


def _run_on_ray(out, todo, rows, summary_path, *, address, num_cpus, max_retries, progress, fail_once) -> None:
    import ray
    from tqdm.auto import tqdm

    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=max_retries)(_run_one)
        pending = {remote.remote(str(out / run_name(c)), dataclasses.asdict(c), fail_once.get(run_name(c)), 1): c
                   for c in todo}
        bar = tqdm(total=len(pending), desc="sweep (ray)", disable=not progress)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            config = pending.pop(ref)
            try:
                analysis, seconds = ray.get(ref)
                _append(summary_path, rows, summary_row(config, analysis, seconds))
            except Exception as err:  # the run raised, or its worker died more than max_retries times
                _append(summary_path, rows, summary_row(config, error=f"{type(err).__name__}: {err}"[:500]))
            bar.update(1)
        bar.close()
    finally:
        if started_here:
            ray.shutdown()
