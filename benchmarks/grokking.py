"""Grokking benchmarks, measured side by side in one run on this machine.

1. Time to grok p = 113 with the default (fast) recipe: `run_grokking` end to end, report included.
2. Trainer throughput (steps/s) vs a plain full-batch `HookedTransformer` loop on the same data and optimiser.
3. The paper recipe's steps to grok (test accuracy >= 99%), run until it groks or `--paper-cap` steps.

Usage: python benchmarks/grokking.py [--threads 2] [--paper-cap 12000] [--skip-paper]
"""

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F

import mi_toolkit as mt


def time_to_grok(out_dir: str) -> dict:
    started = time.perf_counter()
    run = mt.run_grokking(out_dir, mt.GrokkingConfig(), progress=False)
    wall = time.perf_counter() - started
    a = run.analysis
    return {
        "wall_s": round(wall, 1),
        "grokked_at_step": a["grokked_at_step"],
        "steps": a["final"]["step"],
        "final_test_acc": a["final"]["test_acc"],
        "key_frequencies": a["key_frequencies"],
        "single_frequency_neurons": round(a["fraction_neurons_single_frequency"], 3),
        "logit_variance_explained": round(a["logit_fraction_explained"], 3),
        "restricted_loss_test": round(a["restricted_loss"], 4),
        "excluded_loss_train": round(a["excluded_loss"], 3),
        "seconds": a["seconds"],
    }


class _NoEval(mt.ModularArithmetic):
    def evaluate(self, model):
        return {}


def throughput(steps: int) -> dict:
    """Steps/s of mt.train (fast path, EMA filter) vs a plain loop calling model(tokens) (no filter)."""
    task = _NoEval(p=113)
    cfg = mt.recipes.GROKKING_FAST.replace(steps=steps, log_every=10**9, checkpoint_every=10**9)
    model = mt.make_grokking_model(113)
    mt.train(model, task, cfg.replace(steps=5), progress=False)  # warm-up
    model = mt.make_grokking_model(113)
    started = time.perf_counter()
    mt.train(model, task, cfg, progress=False)
    ours = steps / (time.perf_counter() - started)

    model = mt.make_grokking_model(113)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    tokens, labels = task.train_tokens, task.train_labels

    def plain_step():
        loss = F.cross_entropy(model(tokens)[:, -1].double(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        plain_step()
    started = time.perf_counter()
    for _ in range(steps):
        plain_step()
    plain = steps / (time.perf_counter() - started)
    return {"trainer_steps_per_s": round(ours, 2), "plain_loop_steps_per_s": round(plain, 2),
            "speedup": round(ours / plain, 2)}


def paper_steps_to_grok(cap: int) -> dict:
    """Train with the paper's recipe, evaluating every 100 steps, until test accuracy >= 99% or ``cap`` steps."""
    evaluations = []

    class Grokked(Exception):
        pass

    class UntilGrokked(mt.ModularArithmetic):
        def evaluate(self, model):
            out = super().evaluate(model)
            evaluations.append(out)
            if out["test_acc"] >= 0.99:
                raise Grokked
            return out

    cfg = mt.recipes.GROKKING_PAPER.replace(steps=cap, log_every=100, checkpoint_every=10**9)
    started = time.perf_counter()
    try:
        mt.train(mt.make_grokking_model(113), UntilGrokked(p=113), cfg, progress=False)
        step = None
    except Grokked:
        step = 100 * (len(evaluations) - 1)  # evaluations at steps 0, 100, 200, ...
    last = evaluations[-1]
    return {"grokked_at_step": step, "cap": cap, "wall_s": round(time.perf_counter() - started, 1),
            "last_test_acc": round(last["test_acc"], 4), "last_train_acc": round(last["train_acc"], 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--throughput-steps", type=int, default=100)
    parser.add_argument("--paper-cap", type=int, default=12_000)
    parser.add_argument("--skip-paper", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as out:
        print("time to grok, default recipe:", time_to_grok(out))
    print("throughput:", throughput(args.throughput_steps))
    if not args.skip_paper:
        print("paper recipe:", paper_steps_to_grok(args.paper_cap))


if __name__ == "__main__":
    main()
