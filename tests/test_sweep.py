"""Universality sweeps: one run directory per configuration, a summary written by the driver, resumable, on a real
local Ray where a worker that dies once is retried."""

import json

import pytest

import mi_toolkit as mt
from mi_toolkit.cli import main as cli
from mi_toolkit.experiments import sweeps

BASE = mt.GrokkingConfig(steps=30, checkpoint_every=10)


def _rows(out):
    return [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]


def test_sequential_sweep_resumes_where_it_stopped(tmp_path, monkeypatch):
    calls = []
    run_one = sweeps._run_one  # engine function: counting its calls shows which runs a resumed sweep repeats

    def counting(out, fields, fail_once=None, threads=None):
        calls.append(fields["seed"])
        if fields["seed"] == 1 and len(calls) == 2:
            raise KeyboardInterrupt  # the sweep is killed during its second run
        return run_one(out, fields, fail_once, threads)

    monkeypatch.setattr(sweeps, "_run_one", counting)
    with pytest.raises(KeyboardInterrupt):
        mt.sweep(tmp_path, [13], [0, 1], [0.5], base=BASE, use_ray=False, progress=False)
    assert [r["run"] for r in _rows(tmp_path)] == ["p13_seed0_frac0.5"]
    rows = mt.sweep(tmp_path, [13], [0, 1], [0.5], base=BASE, use_ray=False, progress=False)
    assert calls == [0, 1, 1]  # the finished run was skipped
    assert [r["run"] for r in rows] == ["p13_seed0_frac0.5", "p13_seed1_frac0.5"]
    assert all(r["error"] is None and r["stopped_at_step"] == 30 for r in rows)
    loaded = mt.load_run(tmp_path / "p13_seed1_frac0.5")
    assert loaded.task.p == 13 and len(loaded.history) == 4
    # A run that finished while the driver died before writing its row gets the row from its analysis.json.
    (tmp_path / "summary.jsonl").write_text(json.dumps(rows[0]) + "\n")
    again = mt.sweep(tmp_path, [13], [0, 1], [0.5], base=BASE, use_ray=False, progress=False)
    assert calls == [0, 1, 1] and [r["key_frequencies"] for r in again] == [r["key_frequencies"] for r in rows]
    assert "2 runs" in (tmp_path / "report.html").read_text()
    # A sweep started before a setting was added to the config continues (the setting takes its default there).
    saved = json.loads((tmp_path / "sweep.json").read_text())
    (tmp_path / "sweep.json").write_text(json.dumps({k: v for k, v in saved.items() if k != "muon_lr"}))
    assert [r["run"] for r in mt.sweep(tmp_path, [13], [0, 1], [0.5], base=BASE, use_ray=False, progress=False)] \
        == ["p13_seed0_frac0.5", "p13_seed1_frac0.5"] and calls == [0, 1, 1]
    # Continuing a sweep with other shared settings would mix their results: refused.
    with pytest.raises(FileExistsError, match="other settings"):
        mt.sweep(tmp_path, [13], [0, 1], [0.5], base=mt.GrokkingConfig(steps=40, checkpoint_every=10),
                 use_ray=False, progress=False)


@pytest.mark.slow
def test_ray_sweep_retries_a_worker_that_dies_once(tmp_path):
    marker = tmp_path / "crashed"
    out = tmp_path / "sweep"
    rows = mt.sweep(out, [13], [0, 1], [0.5], base=BASE, use_ray=True, num_cpus=2, max_retries=1,
                    progress=False, _fail_once={"p13_seed0_frac0.5": str(marker)})
    assert marker.read_text() == "crashed once"  # the worker of that run did die
    assert [r["run"] for r in rows] == ["p13_seed0_frac0.5", "p13_seed1_frac0.5"]
    assert all(r["error"] is None for r in rows), rows
    # Same numbers as a run in this process: the retried run is an ordinary, deterministic run.
    here = mt.run_grokking(tmp_path / "here", mt.GrokkingConfig(p=13, seed=0, frac_train=0.5, steps=30,
                                                                checkpoint_every=10), progress=False, report=False)
    assert rows[0]["key_frequencies"] == here.analysis["key_frequencies"]


def test_cli_sweep_refuses_bad_input_before_any_run(tmp_path, capsys):
    assert cli(["sweep", "grokking", "--out", str(tmp_path / "s"), "--p", "13,100", "--seeds", "0"]) == 2
    assert "even" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_cli_sweep_parses_ranges():
    from mi_toolkit.cli import _int_list  # the CLI's range syntax

    assert _int_list("0-4") == [0, 1, 2, 3, 4] and _int_list("59,97,113") == [59, 97, 113]
    assert _int_list("0-2,7") == [0, 1, 2, 7]
