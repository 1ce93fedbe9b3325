"""Rebuild the run directories shipped in the package and compare them with the shipped files.

Each shipped run (``mi_toolkit.experiments.packaged.PACKAGED``) is trained again with its recorded command into a
temporary directory; the script prints, per run, the wall time and whether every weight tensor equals the shipped
one exactly (and the largest difference where not). ``--write`` copies the rebuilt files into the package instead
(what a maintainer runs after changing a recipe). The Othello run takes about 9 minutes and the fact model a few;
name the runs to rebuild only some.

Usage, from the repository root: python benchmarks/packaged.py [NAME ...] [--write] [--threads 2]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from mi_toolkit.core.io import load_json, load_tensors
from mi_toolkit.experiments.packaged import PACKAGE_DATA, PACKAGED, build_packaged, ship


def compare(name: str, run_dir: str) -> dict:
    """Every tensor of the rebuilt ``model.safetensors`` against the shipped one, and the training split."""
    shipped, _ = load_tensors(PACKAGE_DATA / name / "model.safetensors")
    rebuilt, _ = load_tensors(f"{run_dir}/model.safetensors")
    if shipped.keys() != rebuilt.keys():
        return {"equal": False, "max_abs_diff": None, "note": "different tensor names"}
    if any(shipped[k].shape != rebuilt[k].shape for k in shipped):
        return {"equal": False, "max_abs_diff": None, "note": "different shapes"}
    diffs = {k: (shipped[k].float() - rebuilt[k].float()).abs().nan_to_num(0.0).max().item()  # -inf masks
             for k in shipped if shipped[k].numel()}
    split = PACKAGE_DATA / name / "split.json"
    same_split = not split.exists() or load_json(split) == load_json(Path(run_dir, "split.json"))
    return {"equal": all(torch.equal(shipped[k], rebuilt[k]) for k in shipped), "max_abs_diff": max(diffs.values()),
            "same_split": same_split}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", choices=[[], *PACKAGED], default=[], help="default: every shipped run")
    parser.add_argument("--write", action="store_true", help="copy the rebuilt files into the package")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.names or list(PACKAGED):
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as out:
            started = time.perf_counter()
            build_packaged(name, out, progress=False)
            seconds = round(time.perf_counter() - started, 1)
            if args.write:
                ship(name, out)
                results[name] = {"seconds": seconds, "written": str(PACKAGE_DATA / name)}
            else:
                results[name] = {"seconds": seconds, **compare(name, out)}
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
