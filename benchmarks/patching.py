"""Patching benchmarks on the induction model and the grokking model, measured side by side in one run.

For each model:
1. A full ``head_out`` sweep (every layer, position and head): mi_toolkit's vectorised ``activation_patch`` vs
   TransformerLens's ``get_act_patch_attn_head_out_by_pos`` (one forward pass per patch): time ratio and the
   largest difference between the two results. Both are timed from tokens to results: TL's time includes the
   ``run_with_cache`` of the clean input that its function takes (the toolkit runs it inside). The toolkit runs
   twice: with the metric as built (it declares the positions it reads, so patches that cannot reach them are
   skipped) and wrapped so that it declares nothing (every patch runs, as in TL's loop).
2. Attribution vs activation patching on ``head_out``: time ratio and correlation, against the toolkit's sweep
   and against TL's one-pass-per-patch sweep.
3. Peak extra resident memory of the vectorised sweep (Linux: VmHWM after resetting it through
   /proc/self/clear_refs), at the default chunk size and with one patch per forward pass.

Usage: python benchmarks/patching.py [--threads 2] [--repeats 3] [--induction-batches 8 32] [--grok-steps N]
                                    [--grokking-run DIR]
"""

import argparse
import ctypes
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's loop draws a progress bar per sweep

import torch
import transformer_lens.patching as tlp

import mi_toolkit as mt


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_extra_mb(fn) -> float | None:
    """Peak resident memory above the current level while ``fn`` runs (None where Linux's counters are missing)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back, or the sweep reuses it unseen
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _status_kb("VmRSS")
    except OSError:
        return None
    fn()
    return round((_status_kb("VmHWM") - before) / 1024, 1)


def measure(name: str, model, clean, corrupted, metric, repeats: int) -> dict:
    def tl_sweep():
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean)
        return tlp.get_act_patch_attn_head_out_by_pos(model, corrupted, clean_cache, metric)

    ours_s, ours = best_time(lambda: mt.activation_patch(model, clean, corrupted, metric, "head_out"), repeats)
    undeclared = lambda logits: metric(logits)  # noqa: E731
    every_s, every = best_time(lambda: mt.activation_patch(model, clean, corrupted, undeclared, "head_out"), repeats)
    tl_s, theirs = best_time(tl_sweep, repeats)
    attr_s, attribution = best_time(lambda: mt.attribution_patch(model, clean, corrupted, metric, "head_out"),
                                    repeats)
    comparison = mt.compare_patching(ours, attribution)
    n_patches = ours.numel()
    return {
        "model": name,
        "batch x pos": f"{clean.shape[0]} x {clean.shape[1]}",
        "patches": n_patches,
        "toolkit_head_out_s": round(ours_s, 4),
        "tl_head_out_s": round(tl_s, 4),
        "speedup_vs_tl": round(tl_s / ours_s, 1),
        "max_abs_diff_vs_tl": float(f"{(ours - theirs).abs().max().item():.3g}"),
        "toolkit_every_patch_s": round(every_s, 4),
        "speedup_vs_tl_every_patch": round(tl_s / every_s, 1),
        "max_abs_diff_vs_tl_every_patch": float(f"{(every - theirs).abs().max().item():.3g}"),
        "attribution_s": round(attr_s, 4),
        "attribution_speedup_vs_activation": round(ours_s / attr_s, 1),
        "attribution_speedup_vs_tl_sweep": round(tl_s / attr_s, 1),
        "attribution_correlation": round(comparison.correlation, 4),
        "attribution_max_abs_error": round(comparison.max_abs_error, 4),
        "peak_extra_mb_default_chunk": peak_extra_mb(
            lambda: mt.activation_patch(model, clean, corrupted, metric, "head_out")),
        "peak_extra_mb_chunk_1": peak_extra_mb(
            lambda: mt.activation_patch(model, clean, corrupted, metric, "head_out", chunk_size=1)),
        "peak_extra_mb_tl_loop": peak_extra_mb(tl_sweep),
    }


def induction_pair(task, model, batch: int):
    clean, corrupted = task.patching_pair(batch)
    with torch.no_grad():
        metric = mt.metrics.normalized(mt.metrics.loss(clean, positions=task.repeat_positions), model(clean),
                                       model(corrupted))
    return clean, corrupted, metric


def induction_setup():
    started = time.perf_counter()
    run = mt.train_induction_model(progress=False)
    model, task = run.model, run.task
    tokens = task.eval_tokens()
    scores = {
        "train_s": round(time.perf_counter() - started, 1),
        "induction_score_layer1": round(mt.model_head_scores(model, tokens, "induction")[1].max().item(), 3),
        "prev_token_score_layer0": round(mt.model_head_scores(model, tokens, "previous_token")[0].max().item(), 3),
    }
    return model, task, scores


def grokking_setup(steps: int, run_dir: str | None):
    started = time.perf_counter()
    if run_dir is not None:
        run = mt.load_run(run_dir)
        model, task = run.model, run.task
    else:
        task = mt.ModularArithmetic(p=113)
        model = mt.make_grokking_model(113)
        mt.train(model, task, mt.recipes.GROKKING_FAST.replace(steps=steps, log_every=steps, checkpoint_every=10**9),
                 progress=False)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    rows = task.test_indices[torch.randperm(len(task.test_indices), generator=gen)[:64]]
    clean = task.tokens[rows]
    corrupted = clean.clone()
    corrupted[:, 1] = (clean[:, 1] + torch.randint(1, task.p, (64,), generator=gen)) % task.p  # another b
    answer = task.labels[rows]
    wrong = (corrupted[:, 0] + corrupted[:, 1]) % task.p
    with torch.no_grad():
        test_acc = (model(task.test_tokens)[:, -1].argmax(-1) == task.test_labels).float().mean().item()
        metric = mt.metrics.normalized_logit_diff(answer, wrong, model(clean), model(corrupted))
    return model, clean, corrupted, metric, {"train_or_load_s": round(time.perf_counter() - started, 1),
                                             "test_acc": round(test_acc, 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grok-steps", type=int, default=1500,
                        help="steps of the default recipe to train the grokking model for")
    parser.add_argument("--induction-batches", type=int, nargs="+", default=[8, 32],
                        help="batch sizes of the induction model's clean/corrupted pair")
    parser.add_argument("--grokking-run", default=None, help="load this run directory instead of training")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, best of {args.repeats}")

    model, task, info = induction_setup()
    print("induction model:", info)
    for batch in args.induction_batches:
        print(measure("induction (2L attn-only)", model, *induction_pair(task, model, batch), args.repeats))

    model, clean, corrupted, metric, info = grokking_setup(args.grok_steps, args.grokking_run)
    print("grokking model:", info)
    print(measure("grokking (p=113, 1L)", model, clean, corrupted, metric, args.repeats))


if __name__ == "__main__":
    main()
