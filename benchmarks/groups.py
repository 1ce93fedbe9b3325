"""Finite groups: how long the irreps take (Young's orthogonal form vs splitting the regular representation, side by
side on the same groups) and how exact they are; optionally the time to grok a group from the command.

    python benchmarks/groups.py [--train S5] [--frac-train F] [--seeds 0] [--max-steps 5000]
"""

import argparse
import tempfile
import time

import torch

import mi_toolkit as mt
from mi_toolkit.cli import _int_list
from mi_toolkit.tasks import groups as G
from mi_toolkit.tasks.irreps import _split_regular, _young_irreps


def _exactness(group, irreps) -> float:
    worst = 0.0
    for r in irreps:
        m = r.matrices
        rows = torch.arange(min(group.order, 120))  # the homomorphism on (up to) 120 x order products
        worst = max(worst, (m[group.table[rows]] - torch.einsum("gij,hjk->ghik", m[rows], m)).abs().max().item())
    return worst


def _timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", default=None, help="a group to train, e.g. S5 (default: none)")
    parser.add_argument("--frac-train", type=float, default=None, help="default: the command's for the group's size")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| group | order | irreps | Young's form s | regular split s | max homomorphism error |")
    print("|---|---|---|---|---|---|")
    for name in ("S4", "S5", "S6", "A5", "D7", "C5xC5"):
        group = G.by_name(name)
        young = "-"
        if name.startswith("S"):
            _, seconds = _timed(lambda: _young_irreps(group))
            young = f"{seconds:.3f}"
        irreps, split = _timed(lambda: _split_regular(group))
        best = _young_irreps(group) if name.startswith("S") else irreps
        print(f"| {name} | {group.order} | {len(best)} | {young} | {split:.3f} | {_exactness(group, best):.1e} |")
    if args.train:
        for seed in _int_list(args.seeds):
            with tempfile.TemporaryDirectory() as out:
                config = mt.GroupsConfig(group=args.train, frac_train=args.frac_train, seed=seed,
                                         max_steps=args.max_steps)
                run, seconds = _timed(lambda: mt.run_groups(out, config, progress=False, report=False))
            a = run.analysis
            print(f"{args.train} seed {seed}: grokked {a['grokked']} at step {a['grokked_at_step']}, stopped "
                  f"{a['stopped_at_step']} ({a['stop_reason']}), {seconds:.0f} s; key irreps "
                  + ", ".join(f"{r['name']} {r['logit_share']:.2f}" for r in a["key_irreps"])
                  + f"; logit fraction explained {a['logit_fraction_explained']:.3f}")


if __name__ == "__main__":
    main()
