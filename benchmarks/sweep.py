"""Runs per hour of a grokking sweep: sequential in one process vs an embedded local Ray, on this machine.

    python benchmarks/sweep.py [--p 41] [--seeds 0-3] [--frac-train 0.5] [--steps 300]

Both sides run the same grid of fixed-budget runs (``--steps``) into fresh directories. On a 2-core machine expect
little gain (one torch thread per Ray worker vs two threads in one process, plus Ray's start-up); the point of Ray is
a cluster (``mi-toolkit sweep grokking --address ...``).
"""

import argparse
import tempfile
import time

import torch

import mi_toolkit as mt
from mi_toolkit.cli import _int_list


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p", default="41")
    parser.add_argument("--seeds", default="0-3")
    parser.add_argument("--frac-train", default="0.5")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the sequential side (Ray: 1 a run)")
    args = parser.parse_args()
    ps, seeds, fracs = _int_list(args.p), _int_list(args.seeds), [float(f) for f in args.frac_train.split(",")]
    base = mt.GrokkingConfig(steps=args.steps)
    n = len(ps) * len(seeds) * len(fracs)
    print(f"grid: p {ps} x seeds {seeds} x frac {fracs} = {n} runs of {args.steps} steps; torch {torch.__version__}")
    results = {}
    for side in ("sequential", "ray"):
        torch.set_num_threads(args.threads)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            rows = mt.sweep(out, ps, seeds, fracs, base=base, use_ray=side == "ray", progress=False, report=False)
            seconds = time.perf_counter() - started
        results[side] = seconds
        errors = [r["run"] for r in rows if r.get("error")]
        print(f"{side:>10}: {seconds:6.1f} s for {n} runs = {3600 * n / seconds:6.0f} runs/hour"
              + (f"; errors: {errors}" if errors else ""))
    print(f"ray / sequential throughput: {results['sequential'] / results['ray']:.2f}x")


if __name__ == "__main__":
    main()
