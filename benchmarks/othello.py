"""Othello benchmarks, measured side by side in one run on this machine.

1. Game generation: random games per second, the vectorised numpy-bitboard engine (``mt.tasks.othello.random_games``)
   against the plain pure-Python reference engine of the tests (``tests/othello_reference.py``: a list-of-rows board,
   each move found by walking the eight directions), in alternating rounds so both see the same machine load; the
   ratio is the figure to compare (the target: >= 50x, and a million 6x6 games in about a minute). The time for a
   million games is measured directly when it is expected to take under ``--direct-limit`` seconds, else
   extrapolated from the measured rate (and marked so).

2. Training throughput: steps and games per second of the shipped model's architecture, float32 against bfloat16
   autocast (``TrainConfig.autocast``), eager and compiled, data generation included (the task replays every batch
   with the engine); whether this CPU computes bfloat16 natively, which decides the recipe's precision.
3. Probe fit time: closed-form ridge against AdamW on the same cached activations of the shipped model (every
   layer, "mine / theirs / empty", 36 squares x 3 classes), with the held-out accuracy each reaches.

Usage, from the repository root: python benchmarks/othello.py [--threads 2] [--sizes 6 8] [--games 200000]
"""

import argparse
import functools
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the reference engine lives with the tests

import numpy as np
import torch
from othello_reference import random_games_reference

from mi_toolkit.tasks.othello import random_games

MILLION = 1_000_000


def _rate(fn, n: int) -> float:
    started = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - started)


def bench_games(sizes=(6,), n_fast: int = 200_000, n_reference: int = 2000, rounds: int = 3,
                direct_limit: float = 30.0, seed: int = 0) -> list[dict]:
    """Games per second of the vectorised engine and of the reference, in alternating rounds; the time for 1M games.

    Args:
        sizes: board sides to measure.
        n_fast: games per round of the vectorised engine.
        n_reference: games per round of the reference engine.
        rounds: alternating rounds (the median rate of each is reported).
        direct_limit: time a million games directly where the measured rate says it takes at most this long.
        seed: seed of the first round (round ``r`` uses ``seed + r``, the same for both engines).

    Returns:
        One dict per size: ``fast`` and ``reference`` games/s, ``ratio``, ``million_s`` and ``million_measured``.
    """
    print("\n## Random games per second (median of alternating rounds)")
    print(f"{'board':<7}{'vectorised':>13}{'reference':>12}{'ratio':>9}{'1M games':>16}  (games/round: "
          f"{n_fast:,} vectorised, {n_reference:,} reference)")
    results = []
    for size in sizes:
        random_games(1000, size, seed=seed)  # warm-up: imports, first allocations
        fast, reference = [], []
        for r in range(rounds):
            fast.append(_rate(functools.partial(random_games, size=size, seed=seed + r), n_fast))
            reference.append(_rate(functools.partial(random_games_reference, size=size, seed=seed + r), n_reference))
        fast_rate, reference_rate = statistics.median(fast), statistics.median(reference)
        million_s, measured = MILLION / fast_rate, False
        if million_s <= direct_limit:
            started = time.perf_counter()
            games = random_games(MILLION, size, seed=seed)
            million_s, measured = time.perf_counter() - started, True
            assert games.shape == (MILLION, size * size - 4)
            del games
        row = {"size": size, "fast": fast_rate, "reference": reference_rate, "ratio": fast_rate / reference_rate,
               "million_s": million_s, "million_measured": measured}
        results.append(row)
        million = f"{million_s:.1f}s" + ("" if measured else " (est.)")
        print(f"{f'{size}x{size}':<7}{fast_rate:>13,.0f}{reference_rate:>12,.0f}{row['ratio']:>8.0f}x{million:>16}")
    return results


def bench_training(steps: int = 20) -> None:
    """Steps/s and games/s of the shipped architecture in float32 and under bfloat16 autocast, eager and compiled
    (compiled once in a warm-up run), on the same batches; the recipe's optimiser (Muon) and, last, AdamW at the
    recipe's precision (``autocast="auto"``: bfloat16 where the device computes in it natively) to show what Muon's
    step costs. Where bfloat16 is emulated (no AVX512-BF16 or AMX), its rows time 3 steps: each takes seconds."""
    from mi_toolkit.models.factory import build_model
    from mi_toolkit.models.presets import OTHELLO_PRESETS, othello_model_config
    from mi_toolkit.tasks.othello_task import OthelloTask
    from mi_toolkit.training import recipes, train
    from mi_toolkit.training.muon import native_bfloat16

    task = OthelloTask(n_games=10**9, eval_games=16)  # the trainer evaluates at the first and last step: keep it small
    native = native_bfloat16("cpu")
    print(f"\n## training throughput ({steps} steps after 3 warm-up steps, batch {task.batch_size} games; bfloat16 "
          f"is {'native' if native else 'EMULATED'} on this CPU, so the recipe trains in "
          f"{'bfloat16' if native else 'float32'})")
    print(f"{'setting':30s} {'steps/s':>8s} {'games/s':>9s} {'s/step':>7s}")
    rates = {}
    for name, precision, compiled, optimizer in (
            ("float32", None, False, "muon"), ("float32, compiled", None, True, "muon"),
            ("bfloat16", "bf16", False, "muon"), ("bfloat16, compiled", "bf16", True, "muon"),
            ("recipe (auto), compiled, AdamW", "auto", True, "adamw")):
        model = build_model(othello_model_config(task.d_vocab, task.n_ctx, **OTHELLO_PRESETS["small"]), seed=0)
        config = recipes.OTHELLO.replace(steps=3, autocast=precision, compile=compiled, optimizer=optimizer,
                                         log_every=10**6, checkpoint_every=10**6)
        timed = steps if native or precision != "bf16" else 3
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*no native bfloat16")  # said in the header instead
            started = time.perf_counter()
            train(model, task, config, progress=False)  # warm-up (and compilation)
            warm_up = time.perf_counter() - started
            started = time.perf_counter()
            train(model, task, config.replace(steps=timed), progress=False)
        seconds = (time.perf_counter() - started) / timed
        rates[name] = 1 / seconds
        print(f"{name:30s} {1 / seconds:8.2f} {task.batch_size / seconds:9.0f} {seconds:7.3f}"
              + (f"   (warm-up with compilation {warm_up:.1f} s)" if compiled else "")
              + (f"   ({timed} steps)" if timed != steps else ""))
    recipe = "bfloat16, compiled" if native else "float32, compiled"
    print(f"bfloat16 / float32: {rates['bfloat16'] / rates['float32']:.2f}x; compiled / not: "
          f"{rates[recipe] / rates[recipe.split(',')[0]]:.2f}x ({recipe.split(',')[0]}); Muon / AdamW step rate: "
          f"{rates[recipe] / rates['recipe (auto), compiled, AdamW']:.2f}x")


def bench_probes(n_games: int = 3000) -> None:
    """Ridge against AdamW probes on the shipped model's residual streams (the same cached activations)."""
    from mi_toolkit.analysis.othello import board_probes, probe_positions
    from mi_toolkit.analysis.probes import ProbeConfig
    from mi_toolkit.experiments.othello import pretrained

    run = pretrained()
    games = random_games(n_games, 6, seed=31337)
    print(f"\n## probe fit ({n_games} games, {run.model.cfg.n_layers + 1} hook points, 36 squares x 3 classes, "
          "no baselines)")
    print(f"{'solver':8s} {'seconds':>8s} {'best held-out':>14s}")
    times = {}
    for method in ("ridge", "adamw"):
        started = time.perf_counter()
        probes = board_probes(run.model, run.task, games, "mine", ProbeConfig(method=method), control=False,
                              random_model=False, positions=probe_positions(run.task))
        times[method] = time.perf_counter() - started
        best = max(a.overall for a in probes.test.values())
        print(f"{method:8s} {times[method]:8.2f} {best:14.4f}")
    print(f"AdamW / ridge time: {times['adamw'] / times['ridge']:.1f}x (both include the same forward pass)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the numpy engine runs on one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[6], help="board sides for the games/s table")
    parser.add_argument("--games", type=int, default=200_000, help="games per round, vectorised engine")
    parser.add_argument("--reference-games", type=int, default=2000, help="games per round, reference engine")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per engine")
    parser.add_argument("--direct-limit", type=float, default=30.0,
                        help="time 1M games directly where expected to take at most this many seconds")
    parser.add_argument("--train-steps", type=int, default=20, help="timed training steps per setting")
    parser.add_argument("--probe-games", type=int, default=3000, help="games whose activations the probes read")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"numpy {np.__version__}, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"Python {sys.version.split()[0]}")

    # 1. game generation
    bench_games(args.sizes, args.games, args.reference_games, args.rounds, args.direct_limit)

    # 2. training throughput
    bench_training(args.train_steps)
    # 3. probe fit time
    bench_probes(args.probe_games)


if __name__ == "__main__":
    main()
