"""The language model trained here (``mi-toolkit lm``): tokenizer, file split, unigram baseline, the tiny run's
directory round trip, and bad input refused before training."""

import collections
import json
import math

import pytest
import torch

import mi_toolkit as mt
from mi_toolkit.cli import main as cli_main
from mi_toolkit.core.losses import next_token_loss
from mi_toolkit.experiments.lm import LMConfig, run_lm
from mi_toolkit.tasks.text import (
    EOT,
    TextTask,
    python_source_files,
    split_files,
    tokenize_files,
    train_tokenizer,
    unigram_loss,
)


def _source(i: int) -> str:
    body = "".join(f"    value_{j} = compute(x, {i * j}) + offset  # step {j}\n" for j in range(40))
    return (f'"""Module {i}: ünïcode ok."""\n\nimport os\n\n\ndef function_{i}(x, offset={i}):\n{body}'
            f"    return value_0\n\n\nclass Thing{i}:\n    def __init__(self, name):\n        self.name = name\n")


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    for i in range(6):
        (root / ("pkg" if i % 2 else ".") / f"mod_{i}.py").parent.mkdir(exist_ok=True)
        (root / ("pkg" if i % 2 else ".") / f"mod_{i}.py").write_text(_source(i), encoding="utf-8")
    (root / "site-packages").mkdir()
    (root / "site-packages" / "installed.py").write_text("x = 1\n")  # not the standard library: skipped
    (root / "notes.txt").write_text("not python\n")
    return root


@pytest.fixture(scope="module")
def tiny_run(source_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "lm"
    return run_lm(out, LMConfig(preset="tiny", root=str(source_dir), steps=20), progress=False)


def test_source_files_sorted_without_site_packages(source_dir):
    files = python_source_files(source_dir)
    assert [f.relative_to(source_dir).as_posix() for f in files] == [
        "mod_0.py", "mod_2.py", "mod_4.py", "pkg/mod_1.py", "pkg/mod_3.py", "pkg/mod_5.py"]
    assert len(python_source_files(source_dir, max_files=3)) == 3


def test_split_is_seeded_disjoint_and_complete(source_dir):
    files = python_source_files(source_dir)
    train, heldout = split_files(files, 0.34, seed=3)
    assert split_files(files, 0.34, seed=3) == (train, heldout)
    assert sorted(train + heldout) == files and not set(train) & set(heldout) and len(heldout) == 2
    assert train == sorted(train) and heldout == sorted(heldout)


def test_tokenizer_round_trip_and_determinism(source_dir):
    files = python_source_files(source_dir)
    tokenizer = train_tokenizer(files, 300)
    assert tokenizer.get_vocab_size() == 300 and tokenizer.token_to_id(EOT) == 0
    for text in [f.read_text(encoding="utf-8") for f in files] + ["def ünseen(λ):\n\treturn '€' * 3\n"]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert train_tokenizer(files, 300).get_vocab() == tokenizer.get_vocab()
    stream = tokenize_files(tokenizer, files[:2])
    assert (stream == 0).sum() == 2 and stream[-1] == 0  # one EOT after each file
    assert len(tokenizer.encode(files[0].read_text()).ids) < len(files[0].read_bytes()) / 2  # merges compress


def test_unigram_loss_matches_an_independent_count():
    tokens = torch.tensor([3, 1, 3, 3, 0, 7, 1, 3])
    counts, n = collections.Counter(tokens.tolist()), len(tokens)
    expected = -sum(c / n * math.log(c / n) for c in counts.values())
    assert unigram_loss(tokens, d_vocab=10) == pytest.approx(expected, abs=1e-12)
    # It is the cross-entropy of the empirical unigram distribution on the same tokens.
    logits = torch.zeros(10).index_put_((torch.tensor(list(counts)),), torch.tensor(
        [math.log(c) for c in counts.values()], dtype=torch.float), accumulate=False)
    logits[[i for i in range(10) if i not in counts]] = -1e9
    assert torch.nn.functional.cross_entropy(logits.expand(n, 10), tokens).item() == pytest.approx(expected, 1e-6)


def test_train_batch_is_a_function_of_step():
    stream = torch.arange(1000) % 50
    task = TextTask(stream, stream[:200], 50, seq_len=16, batch_size=4, seed=1)
    assert torch.equal(task.train_batch(5), task.train_batch(5))
    assert not torch.equal(task.train_batch(5), task.train_batch(6))
    batch = task.train_batch(0)
    assert batch.shape == (4, 16) and torch.equal(batch[:, 1:], (batch[:, :-1] + 1) % 50)  # contiguous windows
    with pytest.raises(ValueError, match="fewer than one window"):
        TextTask(stream, stream[:10], 50, seq_len=16)


def test_tiny_run_directory_round_trip(tiny_run):
    path = tiny_run.path
    assert {p.name for p in path.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                "tokens.safetensors", "analysis.json", "report.html",
                                                "metrics.jsonl"}
    assert not list(path.rglob("*.pkl")) and not list(path.rglob("*.pt"))
    assert json.loads((path / "config.json").read_text())["kind"] == "lm"
    loaded = mt.load_run(path)
    for name, value in tiny_run.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[name]), name
    assert torch.equal(loaded.task.heldout_tokens, tiny_run.task.heldout_tokens)
    assert torch.equal(loaded.task.train_batch(3), tiny_run.task.train_batch(3))
    tokenizer = loaded.task.tokenizer
    assert tokenizer.decode(tokenizer.encode("def f(x):\n    return x\n").ids) == "def f(x):\n    return x\n"
    assert loaded.analysis["heldout_loss"] == pytest.approx(tiny_run.analysis["heldout_loss"])
    assert loaded.analysis["unigram_loss"] == pytest.approx(
        unigram_loss(loaded.task.heldout_tokens, loaded.task.d_vocab))
    assert len(loaded.history) == len(tiny_run.history) and set(loaded.analysis["completions"]) == set(
        mt.experiments.lm.PROMPTS)
    windows = loaded.task.heldout_windows(256)
    with torch.no_grad():
        losses = [next_token_loss(loaded.model(w), w).item() for w in windows.split(32)]
    assert sum(losses) / len(losses) == pytest.approx(loaded.analysis["heldout_loss"], rel=1e-5)


def test_bad_input_is_refused_before_training(tmp_path, source_dir, capsys):
    with pytest.raises(FileNotFoundError, match="no source directory"):
        run_lm(tmp_path / "a", LMConfig(preset="tiny", root=str(tmp_path / "missing")), progress=False)
    one = tmp_path / "one"
    one.mkdir()
    (one / "only.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="found 1 \\*.py files"):
        run_lm(tmp_path / "b", LMConfig(preset="tiny", root=str(one)), progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "something").write_text("")
    with pytest.raises(FileExistsError):
        run_lm(busy, LMConfig(preset="tiny", root=str(source_dir)), progress=False)
    assert not (busy / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="unknown preset"):
        LMConfig(preset="huge")
    assert cli_main(["lm", "--out", str(tmp_path / "c"), "--preset", "tiny", "--root", str(one), "--quiet"]) == 2
    assert "found 1 *.py files" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
