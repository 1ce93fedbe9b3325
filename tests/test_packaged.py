"""The run directories shipped in the package: each loads, and its model does what its recorded analysis says (the
accuracies recomputed here from the model and the task's own split, not read from the files); the command that
lists and rebuilds them."""

import dataclasses
import json
import shutil

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit.analysis import heads
from mi_toolkit.cli import main
from mi_toolkit.core.io import CheckpointError, Run
from mi_toolkit.experiments import packaged
from mi_toolkit.experiments.packaged import PACKAGED, PACKAGED_FILES, PackagedRun, load_packaged
from mi_toolkit.tasks.facts import answer_logits
from mi_toolkit.tasks.ioi import IOITask
from mi_toolkit.training.recipes import INDUCTION, IOI

PAIR_TASKS = ("grokking_p113", "groups_S4", "miiii_p37")


def _pair_test_accuracies(run) -> list[float]:
    """Test accuracy at the last position, one per answer block (the whole output for a single task), computed
    from the model's logits and the task's held-out pairs."""
    task = run.task
    with torch.no_grad():
        logits = run.model(task.tokens[task.test_indices])[:, -1]
    labels = task.labels[task.test_indices].reshape(len(logits), -1)
    blocks = task.blocks if hasattr(task, "blocks") else [(None, 0, logits.shape[-1])]
    return [(logits[:, start:end].argmax(-1) == labels[:, i]).float().mean().item()
            for i, (_, start, end) in enumerate(blocks)]


def _json(value):
    return json.loads(json.dumps(value))


def test_every_packaged_run_has_its_files_and_loads():
    assert sorted(p.name for p in packaged.PACKAGE_DATA.iterdir() if p.is_dir()) == sorted(PACKAGED)
    for name in PACKAGED:
        files = PACKAGED_FILES + (("split.json",) if name in PAIR_TASKS else ())
        assert all((packaged.PACKAGE_DATA / name / file).is_file() for file in files), name
        run = load_packaged(name)
        assert run.config["seed"] == 0 and not run.model.training and run.history and run.analysis, name


def test_the_shipped_runs_were_trained_with_todays_defaults():
    # A recipe or default that changes after a run was shipped leaves that run stale: rebuild it
    # (python benchmarks/packaged.py NAME --write).
    expected = {"grokking_p113": mt.GrokkingConfig(p=113, seed=0), "groups_S4": mt.GroupsConfig(group="S4", seed=0),
                "miiii_p37": mt.MiiiiConfig(p=37, seed=0)}
    for name, config in expected.items():
        record = load_packaged(name).config
        assert record["train"] == _json(config.train_config().to_dict()), name
        fraction = config.split_fraction if hasattr(config, "split_fraction") else config.frac_train
        assert record["task"]["frac_train"] == fraction, name
    assert load_packaged("ioi").config["train"] == _json(IOI.to_dict())
    assert load_packaged("induction").config["train"] == _json(INDUCTION.to_dict())
    othello = mt.OthelloConfig()  # its analysis too (the probes' games): re-analyse after a change there
    record = load_packaged("othello_6x6").config
    assert record["config"] == _json(dataclasses.asdict(othello))
    # Trained before autocast="auto" existed, as "bf16" on a CPU with bfloat16 instructions: what "auto" picks there.
    assert othello.recipe.autocast == "auto" and record["train"]["autocast"] == "bf16"
    assert record["train"] == _json({**othello.recipe.to_dict(), "autocast": "bf16"})


@pytest.mark.parametrize("name", ["grokking_p113", "groups_S4"])
def test_the_grokked_models_generalise_as_recorded(name):
    run = load_packaged(name)
    [test_acc] = _pair_test_accuracies(run)
    assert run.analysis["grokked"] and test_acc >= 0.99
    assert test_acc == pytest.approx(run.analysis["final"]["test_acc"], abs=1e-6)
    assert all(check["passed"] for check in run.analysis["checks"].values())


def test_the_grokking_run_keys_the_frequencies_it_records():
    run = load_packaged("grokking_p113")
    assert mt.key_frequencies(run.model, run.task) == run.analysis["key_frequencies"]


def test_every_miiii_task_generalises():
    run = load_packaged("miiii_p37")
    accuracies = _pair_test_accuracies(run)
    assert len(accuracies) == 11 and min(accuracies) >= 0.99
    assert run.analysis["grokked"] and accuracies == pytest.approx(
        [run.analysis["task_test_acc"][str(q)] for q in run.task.primes], abs=1e-6)


def test_the_ioi_model_names_the_indirect_object():
    run = load_packaged("ioi")
    tokens, answers = run.task.eval_set()
    with torch.no_grad():
        accuracy = (run.model(tokens)[:, -1].argmax(-1) == answers).float().mean().item()
    assert accuracy >= 0.99 and accuracy == pytest.approx(run.analysis["accuracy"], abs=1e-6)


def test_the_induction_model_has_its_recorded_heads():
    # Recomputed from the loaded weights with the public model_head_scores (the record was written in training).
    run = load_packaged("induction")
    tokens = run.task.eval_tokens()
    induction = heads.model_head_scores(run.model, tokens, "induction")
    previous = heads.model_head_scores(run.model, tokens, "previous_token")
    assert induction[1].max() >= 0.9 and previous[0].max() >= 0.9
    assert induction[1].max().item() == pytest.approx(run.analysis["induction_score"], abs=1e-5)
    assert previous[0].max().item() == pytest.approx(run.analysis["prev_token_score"], abs=1e-5)


def test_the_fact_model_recalls_as_recorded():
    run = load_packaged("facts_small")
    prompts, answers = run.task.eval_prompts("train")  # the recorded recall's prompts (not the paraphrases)
    with torch.no_grad():
        recall = (answer_logits(run.model, prompts).argmax(-1) == answers).float().mean().item()
    assert recall >= 0.99 and recall == pytest.approx(run.analysis["recall"], abs=1e-6)


def test_an_unknown_name_is_refused_with_the_list():
    with pytest.raises(ValueError, match="no shipped run named 'grokking'.*grokking_p113"):
        load_packaged("grokking")


def test_the_command_lists_and_refuses(capsys, monkeypatch):
    assert main(["packaged"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed and PACKAGED[name].command in listed for name in PACKAGED)
    assert main(["packaged", "ioi"]) == 2 and "--out DIR is required" in capsys.readouterr().err
    assert main(["packaged", "--out", "x"]) == 2 and "name the run" in capsys.readouterr().err
    not_grokked = PackagedRun("x", "x", lambda out, progress: Run(out, None, None, [], {}, {"grokked": False}))
    monkeypatch.setitem(PACKAGED, "groups_S4", not_grokked)
    assert main(["packaged", "groups_S4", "--out", "x"]) == 1 and "did NOT grok" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["packaged", "nope", "--out", "x"])
    assert exit_.value.code == 2


def test_the_command_builds_a_run_that_ships_and_loads_back(tmp_path, monkeypatch, capsys):
    # A short IOI recipe stands in for the recorded one (which trains for 30 s); the plumbing is the same.
    def short(out, progress):
        return mt.train_ioi_model(IOITask(batch_size=16), IOI.replace(steps=3), seed=0, run_dir=out, progress=progress)

    monkeypatch.setitem(PACKAGED, "ioi", PackagedRun("short", "mi-toolkit packaged ioi --out DIR", short))
    monkeypatch.setattr(packaged, "PACKAGE_DATA", tmp_path / "data")
    assert main(["packaged", "ioi", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(tmp_path / "run") and "grokked" not in summary  # an IOI run does not grok or fail to
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["packaged", "ioi", "--out", str(tmp_path / "other"), "--quiet"]) == 2  # nothing overwritten
    assert "holds no resumable run" in capsys.readouterr().err
    shutil.copytree(tmp_path / "run", tmp_path / "partial")
    (tmp_path / "partial" / "analysis.json").unlink()
    with pytest.raises(CheckpointError, match="it lacks analysis.json$"):  # nothing is replaced
        packaged.ship("ioi", tmp_path / "partial")
    assert not (tmp_path / "data" / "ioi").exists()
    packaged.ship("ioi", tmp_path / "run")
    shipped, built = load_packaged("ioi"), mt.load_run(tmp_path / "run")
    assert shipped.path == tmp_path / "data" / "ioi" and shipped.analysis == built.analysis
