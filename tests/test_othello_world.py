"""The Othello task, the model's run directory, probe edits, and the shipped 6x6 model's claims (legal moves,
probes, edits), each checked against the engine or the reference engine rather than the code under test."""

import dataclasses
import inspect
import json

import numpy as np
import pytest
import torch
from othello_reference import Othello, replay_reference

import mi_toolkit as mt
from mi_toolkit.cli import main
from mi_toolkit.core import has_hooks
from mi_toolkit.tasks.othello import random_games

# --- engine functions the task and the edits use ---


def test_random_games_and_legal_is_random_games_plus_legal_moves():
    games, legal = mt.othello.random_games_and_legal(300, 6, seed=(4, 5))
    assert np.array_equal(games, random_games(300, 6, seed=(4, 5)))
    assert np.array_equal(legal, mt.othello.legal_moves(games, 6))


def test_legal_from_boards_matches_replay_and_checks_input():
    record = mt.othello.replay(random_games(100, 6, seed=8), 6)
    to_move = record.player > 0
    legal = mt.othello.legal_from_boards(record.boards[to_move], record.player[to_move])
    assert np.array_equal(legal, record.legal[to_move])
    with pytest.raises(ValueError):
        mt.othello.legal_from_boards(np.full((6, 6), 3), 1)
    with pytest.raises(ValueError):
        mt.othello.legal_from_boards(np.zeros((6, 6), dtype=int), 0)


# --- the task ---


def test_encode_decode_round_trip_and_errors():
    task = mt.OthelloTask(n_games=10)
    games = random_games(20, 6, seed=1)
    games[0, 20:] = -1  # padding (encode does not check legality)
    tokens = task.encode(games)
    assert (tokens[0, 20:] == task.pad).all() and tokens[:, :20].max() < task.pad and tokens.min() >= 0
    assert task.d_vocab == 33 and task.n_ctx == 31
    assert (task.decode(tokens) == games).all()  # -1 padding <-> PAD
    assert task.decode(torch.tensor([task.pad, 99, -3])).tolist() == [-1, -1, -1]
    for bad in (14, 36, -2):  # 14 is a centre square of the 6x6 board
        with pytest.raises(ValueError, match="not a playable square"):
            task.encode([8, bad])


def test_batch_targets_match_the_reference_engine():
    task = mt.OthelloTask(n_games=10)
    games = random_games(5, 6, seed=2)
    batch = task.batch(games)
    for g, game in enumerate(games.tolist()):
        records = replay_reference(game, 6)
        for t in range(task.n_ctx):
            legal = {int(task.squares[i]) for i in torch.nonzero(batch["legal"][g, t]).flatten()}
            assert legal == set(records[t]["legal"])
            expected_next = game[t + 1] if game[t + 1] >= 0 else -1
            assert (task.decode(batch["next"][g, t]) if batch["next"][g, t] >= 0 else -1) == expected_next


def test_training_data_are_a_function_of_the_step():
    task = mt.OthelloTask(n_games=1024, batch_size=256, seed=3)
    assert torch.equal(task.train_batch(5)["tokens"], task.train_batch(5)["tokens"])
    assert torch.equal(task.train_batch(1)["tokens"], task.train_batch(5)["tokens"])  # 4 blocks: step 5 is block 1
    assert not torch.equal(task.train_batch(0)["tokens"], task.train_batch(1)["tokens"])
    assert not torch.equal(task.train_batch(0)["tokens"][:10], task.eval_batch["tokens"][:10])


def test_legal_loss_is_the_expected_next_move_loss():
    """The "legal" target is the next-move cross-entropy averaged over the (uniform) legal next moves."""
    legal_task, next_task = mt.OthelloTask(n_games=10), mt.OthelloTask(n_games=10, target="next")
    batch = legal_task.batch(random_games(3, 6, seed=4))
    logits = torch.randn(*batch["tokens"].shape, legal_task.d_vocab, generator=torch.Generator().manual_seed(0))
    has_next = batch["next"] >= 0
    per_move = []
    for g, t in has_next.nonzero().tolist():
        choices = batch["legal"][g, t].nonzero().flatten()
        ce = torch.nn.functional.cross_entropy(logits[g, t].expand(len(choices), -1), choices, reduction="none")
        per_move.append(ce.mean())
    assert torch.allclose(legal_task._loss(logits, batch), torch.stack(per_move).mean(), atol=1e-5)
    direct = torch.nn.functional.cross_entropy(logits[has_next], batch["next"][has_next])
    assert torch.allclose(next_task._loss(logits, batch), direct)


def test_legal_top1_on_oracle_and_anti_oracle_logits():
    task = mt.OthelloTask(n_games=10)
    batch = task.batch(random_games(4, 6, seed=5))
    has_next = batch["next"] >= 0
    assert task.legal_top1(batch["legal"].float(), batch)[has_next].all()
    assert not task.legal_top1(-batch["legal"].float(), batch)[has_next].any()


# --- probe edits ---


def test_probe_flip_sets_the_probe_score_and_the_control_has_equal_norm():
    gen = torch.Generator().manual_seed(0)
    resid = torch.randn(3, 5, 8, generator=gen)
    w = torch.randn(3, 8, generator=gen)
    b = torch.randn(3, generator=gen)
    r = torch.nn.functional.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    positions = torch.tensor([0, 2, 4])
    rows = torch.arange(3)
    out = mt.probe_flip(w, b, positions, margin=7.0)(resid, None)
    change = out[rows, positions] - resid[rows, positions]
    assert torch.allclose((out[rows, positions] * w).sum(-1) + b, torch.full((3,), 7.0), atol=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(change, dim=-1).abs(),
                          torch.nn.functional.normalize(w, dim=-1).abs(), atol=1e-5)  # along w only
    untouched = torch.ones(3, 5, dtype=torch.bool)
    untouched[rows, positions] = False
    assert torch.equal(out[untouched], resid[untouched])
    edited = mt.probe_flip(w, b, positions, margin=7.0, control=r)(resid, None)
    control = edited[rows, positions] - resid[rows, positions]
    assert torch.allclose(control.norm(dim=-1), change.norm(dim=-1), atol=1e-5)
    assert torch.allclose(control, control.norm(dim=-1, keepdim=True) * r, atol=1e-5)
    with pytest.raises(ValueError, match="batch"):  # unwrapped: the test run's jaxtyping checks would answer first
        inspect.unwrap(mt.probe_flip)(w, b[:2], positions)


def test_flip_cases_recompute_legal_moves_like_the_reference():
    games = random_games(40, 6, seed=6)
    cases = mt.othello.flip_cases(games, 6, 20, seed=0, first_move=7, last_move=20)
    assert cases.moves.min() >= 7 and cases.moves.max() <= 20 and cases.legal_edited.any(-1).all()
    for bad in (dict(first_move=9, last_move=8), dict(first_move=40)):
        with pytest.raises(ValueError, match="first_move"):
            mt.othello.flip_cases(games, 6, 5, **bad)
    for i in range(20):
        game = cases.games[i].tolist()
        t, square = int(cases.moves[i]), int(cases.squares[i])
        ref = Othello(6)
        for move in game[: t + 1]:
            ref.play(move)
        r, c = divmod(square, 6)
        assert ref.board[r][c] in (1, 2)
        assert (ref.board[r][c] == ref.to_move) == bool(cases.mine[i])
        ref.board[r][c] = 3 - ref.board[r][c]
        assert set(np.flatnonzero(cases.legal_edited[i])) == set(ref.legal_moves(ref.to_move))
        assert set(np.flatnonzero(cases.legal_edited[i])) != set(np.flatnonzero(cases.legal[i]))


# --- the experiment ---


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("othello") / "run"
    config = mt.OthelloConfig(preset="tiny", size=4, probe_games=200, edit_cases=30)  # 4x4 boards: 11 moves a game
    return mt.run_othello(out, config, progress=False), config


def test_run_directory_loads_and_reports(tiny_run):
    run, _ = tiny_run
    for name in ("config.json", "model.safetensors", "analysis.json", "metrics.jsonl", "report.html"):
        assert (run.path / name).is_file(), name
    loaded = mt.load_run(run.path)
    tokens = run.task.eval_batch["tokens"][:4]
    assert torch.equal(loaded.model(tokens), run.model(tokens))
    a = loaded.analysis
    assert a["games_seen"] == a["steps"] * 256 and len(a["legal_by_move"]) == run.task.n_ctx == 11
    assert (run.path / "report.html").stat().st_size > 10_000
    assert {row["hook_name"] for row in a["probes"]["mine"]} == {"blocks.0.hook_resid_pre", "blocks.0.hook_resid_post",
                                                                 "blocks.1.hook_resid_post"}
    assert not has_hooks(run.model)


def test_rerun_in_the_same_directory_resumes_without_training(tiny_run, tmp_path):
    run, config = tiny_run
    again = mt.run_othello(run.path, config, progress=False, report=False)
    assert again.analysis["resumed_from"] == run.analysis["steps"]
    assert again.analysis["seconds"]["train"] >= run.analysis["seconds"]["train"]  # kept, not reset
    with pytest.raises(FileExistsError, match="different task"):
        mt.run_othello(run.path, dataclasses.replace(config, seed=1), progress=False)


def test_cli_exit_codes(tmp_path, capsys):
    assert main(["othello", "--out", str(tmp_path / "bad"), "--size", "5"]) == 2
    assert not (tmp_path / "bad").exists()
    # the tiny model does not reach 99% legal moves: the command says so with exit status 1
    assert main(["othello", "--out", str(tmp_path / "t"), "--preset", "tiny", "--size", "4", "--steps", "5",
                 "--quiet", "--no-report"]) == 1
    assert "below 0.99" in capsys.readouterr().err


# --- the shipped model's claims, measured with the engine ---
# Measured on the shipped model (README, "Othello"; trained with Muon): legal top-1 0.9910 on the run's held-out
# games (0.9879 on the 300 games below), best mine/theirs/empty ridge probe 0.941 at layer 2 in the run's analysis
# (10,000 games; occupied 0.897; 0.939 / 0.892 from the 1,200 games below), black/white/empty 0.760, edits 1.98 ->
# 0.93 errors (random 2.43; 1.99 -> 0.95 on the cases below). The thresholds sit a little below those numbers. The
# issue's 95% probe is reached only by the run's logistic probe of 10,000 games, at the target's edge (95.06%), and
# 5x fewer edit errors not at all: neither is asserted here.


@pytest.fixture(scope="module")
def shipped():
    return mt.othello.pretrained()


def test_shipped_model_plays_legal_moves(shipped):
    """Top-1 legality on games the model never saw, judged by the reference engine's legal sets."""
    task, model = shipped.task, shipped.model
    games = random_games(300, 6, seed=12345)
    with torch.no_grad():
        top = model(task.encode(games)[:, : task.n_ctx])[..., : task.pad].argmax(-1)
    hits = total = 0
    for g, game in enumerate(games.tolist()):
        records = replay_reference(game, 6)
        for t in range(task.n_ctx):
            if game[t + 1] < 0:
                break
            hits += int(task.squares[top[g, t]]) in records[t]["legal"]
            total += 1
    assert hits / total >= 0.985, f"legal top-1 {hits / total:.4f}"
    assert json.loads((shipped.path / "config.json").read_text())["seed"] == 0


def test_shipped_model_has_a_linear_mine_theirs_board(shipped):
    games = random_games(1200, 6, seed=777)
    positions = mt.othello.probe_positions(shipped.task)
    mine = mt.othello.board_probes(shipped.model, shipped.task, games, "mine", positions=positions)
    colour = mt.othello.board_probes(shipped.model, shipped.task, games, "colour", positions=positions,
                                     random_model=False, control=False)
    best = max(mine.test, key=lambda name: mine.test[name].overall)
    assert mine.test[best].overall >= 0.935
    assert mine.test[best].among([1, 2]).overall >= 0.89
    assert max(a.overall for a in colour.test.values()) < mine.test[best].overall - 0.1
    assert mine.random_model[best].overall < mine.test[best].overall - 0.1
    # Selective (Hewitt and Liang's control task fits far worse) at an accurate layer: at layer 1 the control task is
    # fitted well too (0.87 against 0.94: selectivity 0.06), at layer 2 not (0.74 against 0.94: 0.20).
    accurate = [name for name in mine.test if mine.test[name].overall >= 0.93]
    assert max(mine.selectivity()[name] for name in accurate) > 0.15


def test_shipped_model_follows_probe_edits(shipped):
    a = shipped.analysis["edits"]
    games = random_games(1500, 6, seed=4242)
    probes = mt.othello.board_probes(shipped.model, shipped.task, games[:1200], "mine", control=False,
                                     random_model=False, positions=mt.othello.probe_positions(shipped.task))
    positions = mt.othello.probe_positions(shipped.task)
    cases = mt.othello.flip_cases(games[1200:], 6, 200, seed=1, first_move=positions.start,
                                  last_move=positions.stop - 1)
    assert cases.moves.min() >= positions.start and cases.moves.max() <= positions.stop - 1
    errors = mt.othello.evaluate_flips(shipped.model, shipped.task,
                                       {name: probes.probes[name] for name in a["hook_names"]}, cases,
                                       margin=a["margin"], threshold=a["threshold"])
    assert errors.probe < 0.6 * errors.none, errors  # the edited board's moves, partly
    assert errors.random > errors.none, errors  # an equal-norm random edit does not move towards them
    assert not has_hooks(shipped.model)
