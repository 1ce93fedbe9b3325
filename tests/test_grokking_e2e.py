"""End to end: a small-p model groks and its progress measures behave as Nanda et al. describe."""

import json

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit.analysis.fourier import fourier_basis, frequency_norms
from mi_toolkit.cli import main as cli

P = 41
CONFIG = mt.GrokkingConfig(p=P, frac_train=0.5, seed=0, steps=1500, checkpoint_every=100)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return mt.run_grokking(tmp_path_factory.mktemp("grok") / "run", CONFIG, progress=False)


@pytest.mark.slow
def test_small_model_groks_with_the_fourier_algorithm(run):
    a, final = run.analysis, run.history[-1]
    assert final["test_acc"] >= 0.99 and final["train_acc"] == 1.0
    freqs = a["key_frequencies"]
    assert 2 <= len(freqs) <= 7
    # Independent check of the key frequencies: they carry most of the embedding's Fourier norm.
    norms = frequency_norms((fourier_basis(P) @ run.model.W_E[:P].detach()).norm(dim=1))
    top = sorted(torch.topk(norms, len(freqs)).indices.add(1).tolist())
    assert top == freqs
    assert a["fraction_neurons_single_frequency"] >= 0.65
    assert a["logit_fraction_explained"] >= 0.8


@pytest.mark.slow
def test_progress_measures_behave_as_in_the_paper(run):
    h = run.history
    final = h[-1]
    # After grokking: removing the key frequencies destroys the train loss, keeping only them costs nothing.
    assert final["train_loss"] < 1e-2
    assert final["excluded_loss"] > 1.0
    assert final["restricted_loss"] < 0.1
    # Early on (memorisation) the restricted loss is high: the circuit is not there yet.
    early = next(r for r in h if r.get("restricted_loss") is not None and r["step"] > 0)
    assert early["restricted_loss"] > 1.0
    # Fourier sparsity rises and weight decay cleans up after memorisation.
    assert final["gini_embed"] > h[0]["gini_embed"] + 0.2
    peak = max(r["weight_norm"] for r in h if "weight_norm" in r)  # measured at checkpoints
    assert final["weight_norm"] < 0.8 * peak
    phases = run.analysis["phases"]
    assert phases["memorisation_end"] < phases["cleanup_start"] <= phases["cleanup_end"]
    assert set(final["excluded_loss_per_freq"]) == {str(k) for k in run.analysis["key_frequencies"]}


@pytest.mark.slow
def test_run_directory_round_trip(run):
    loaded = mt.load_run(run.path)
    assert torch.equal(loaded.task.train_indices, run.task.train_indices)
    tokens = run.task.tokens[:50]
    torch.testing.assert_close(loaded.model(tokens), run.model(tokens))
    split = json.loads((run.path / "split.json").read_text())
    assert split["p"] == P and split["train_indices"] == run.task.train_indices.tolist()
    lines = (run.path / "metrics.jsonl").read_text().splitlines()
    required = {"step", "train_loss", "test_loss", "train_acc", "test_acc", "restricted_loss", "excluded_loss",
                "gini_embed", "weight_norm"}
    assert required <= set(json.loads(lines[-1]))
    html = (run.path / "report.html").read_text()
    assert html.count("<h2>") >= 6 and "plotly" in html


def test_cli_refuses_a_non_empty_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert cli(["grokking", "--out", str(tmp_path), "--p", "11", "--steps", "2"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_bad_arguments(tmp_path, capsys):
    assert cli(["grokking", "--out", str(tmp_path / "x"), "--p", "2"]) == 2
    assert "p must be" in capsys.readouterr().err
    assert cli(["grokking", "--out", str(tmp_path / "y"), "--frac-train", "1.5"]) == 2
    assert "frac_train" in capsys.readouterr().err
    assert cli(["grokking", "--out", str(tmp_path / "z"), "--embedding-decay-after", "-1"]) == 2
    assert "embedding_decay_after must be >= 0" in capsys.readouterr().err
    for value, expected in (("keep", None), ("0.5", 0.5)):
        out = tmp_path / f"decay-{value}"
        assert cli(["grokking", "--out", str(out), "--p", "11", "--steps", "2", "--quiet", "--no-report",
                    "--embedding-decay-after", value]) == 0
        assert json.loads((out / "config.json").read_text())["grokking_config"]["embedding_decay_after"] == expected


def test_cli_continues_a_run_to_more_steps(tmp_path):
    out = tmp_path / "run"
    args = ["grokking", "--out", str(out), "--p", "11", "--frac-train", "0.5", "--quiet", "--no-report"]
    assert cli(args + ["--steps", "200"]) == 0
    reference = mt.load_run(out).model.state_dict()
    # A run of 100 steps, continued to 200, ends with the same weights as a 200-step run.
    other = tmp_path / "other"
    assert cli(args[:2] + [str(other)] + args[3:] + ["--steps", "100"]) == 0
    assert cli(args[:2] + [str(other)] + args[3:] + ["--steps", "200"]) == 0
    resumed = mt.load_run(other).model.state_dict()
    for name in reference:
        assert torch.equal(reference[name], resumed[name]), name
    with pytest.raises(FileExistsError, match="different seed"):
        mt.run_grokking(out, mt.GrokkingConfig(p=11, frac_train=0.5, seed=1, steps=200), progress=False)
