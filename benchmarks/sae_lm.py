"""The dictionary-learning replication on the language model trained here (``mi-toolkit lm``): an SAE on the MLP
neurons of the one-layer model (``blocks.0.mlp.hook_post``, 512 neurons as in Bricken et al. 2023), trained from
activations streamed through :class:`~mi_toolkit.core.activations.ActivationStream` over training-set windows, then
measured on held-out windows:

- explained variance, L0, dead features (:func:`mi_toolkit.analysis.sae.evaluate_sae`);
- CE loss recovered with the SAE spliced in (:func:`mi_toolkit.interventions.splicing.ce_loss_recovered`);
- the feature density histogram; ultra-low-frequency features (density below ``--ulf-density``) and the mean
  pairwise cosine similarity of their encoder directions (against the same for as many other live features);
- the fraction of features dense in the neuron basis: features whose decoder row needs more than ``--dense-k``
  neurons to hold 90% of its squared norm (:func:`mi_toolkit.analysis.sae.decoder_spread`), with the spread's
  distribution at other cut-offs.

The published findings are printed beside ours. Targets (issue 15): explained variance >= 0.9 and CE loss recovered
>= 0.9 at L0 <= 30.

Run from the repository root (after ``mi-toolkit lm --out runs/lm``):

    python benchmarks/sae_lm.py --run runs/lm [--json benchmarks/out/sae_lm.json] [--html benchmarks/out/sae_lm.html]
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import mi_toolkit as mt
from mi_toolkit.analysis.sae import decoder_spread, density_histogram, evaluate_sae
from mi_toolkit.core.activations import ActivationStream, collect_activations
from mi_toolkit.interventions.splicing import ce_loss_recovered

HOOK = "blocks.0.mlp.hook_post"
PUBLISHED = {
    "dense_in_neuron_basis": "open replication of Bricken et al.: 92% of features dense in the neuron basis",
    "ultra_low": "Bricken et al. 2023 and the open replication: many ultra-low-frequency features, sharing one "
                 "encoder direction (high mutual cosine similarity)",
}


def training_windows(task, n: int, seed: int) -> torch.Tensor:
    """``n`` training windows at seeded random starts."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(task.train_tokens) - task.seq_len + 1, (n,), generator=gen)
    return task.windows(task.train_tokens, starts)


def mean_pairwise_cosine(directions: torch.Tensor) -> float | None:
    """Mean cosine similarity over distinct pairs of rows (None for fewer than two rows)."""
    if len(directions) < 2:
        return None
    unit = F.normalize(directions.float(), dim=-1)
    sims = unit @ unit.T
    n = len(unit)
    return ((sims.sum() - sims.diagonal().sum()) / (n * (n - 1))).item()


def replicate(run, config: mt.SAEConfig, *, n_train_windows: int, n_eval_windows: int, ulf_density: float,
              dense_k: int, seed: int, progress: bool) -> tuple[dict, object]:
    """Train the SAE on the run's MLP neurons and measure it; returns ``(numbers, density histogram)``."""
    model, task = run.model, run.task
    stream = ActivationStream(model, HOOK, training_windows(task, n_train_windows, seed), batch_size=64)
    started = time.perf_counter()
    sae = mt.train_sae(stream, config, progress=progress)
    train_seconds = time.perf_counter() - started
    heldout = task.heldout_windows(n_eval_windows)
    acts = collect_activations(model, HOOK, heldout)
    metrics = evaluate_sae(sae, acts, ultra_low_density=ulf_density)
    recovered = ce_loss_recovered(model, sae, HOOK, heldout[: min(len(heldout), 256)])
    spread = decoder_spread(sae, fraction=0.9)
    live = ~metrics.dead
    ulf = metrics.ultra_low
    gen = torch.Generator().manual_seed(seed)
    others = torch.nonzero(live & ~ulf).flatten()
    others = others[torch.randperm(len(others), generator=gen)[: max(int(ulf.sum()), 2)]]
    enc = sae.W_enc.detach().T.cpu()  # (d_sae, d_in): one encoder direction per feature
    n_for = spread.n_for_fraction[live]
    numbers = {
        "sae": {"activation": config.activation, "d_sae": config.d_sae, "k": config.k, "aux_k": config.aux_k,
                "resample_every": config.resample_every, "steps": config.steps,
                "batch_size": config.batch_size, "train_windows": n_train_windows, "train_seconds": train_seconds},
        "eval_tokens": int(acts.shape[0]),
        "l0": metrics.l0,
        "explained_variance": metrics.explained_variance,
        "ce_loss": {"clean": recovered.clean, "sae": recovered.sae, "zero_ablated": recovered.zero_ablated,
                    "mean_ablated": recovered.mean_ablated},
        "ce_loss_recovered": recovered.recovered_vs_zero,
        "ce_loss_recovered_vs_mean": recovered.recovered_vs_mean,
        "dead": metrics.n_dead,
        "ultra_low": {"density_below": ulf_density, "count": metrics.n_ultra_low,
                      "mean_pairwise_encoder_cosine": mean_pairwise_cosine(enc[ulf]),
                      "baseline_other_live_features": mean_pairwise_cosine(enc[others])},
        "dense_in_neuron_basis": {
            "definition": f"live features whose decoder row needs > {dense_k} of {config.d_in} neurons for 90% of its "
                          "squared norm",
            "fraction": (n_for > dense_k).float().mean().item() if len(n_for) else None,
            "fraction_by_cutoff": {str(c): (n_for > c).float().mean().item() for c in (1, 3, 5, 10, 25, 50)},
            "median_neurons_for_90pct": n_for.median().item() if len(n_for) else None,
            "median_participation_ratio": spread.participation_ratio[live].median().item() if live.any() else None,
        },
        "targets_met": {"explained_variance>=0.9": metrics.explained_variance >= 0.9,
                        "ce_loss_recovered>=0.9": recovered.recovered_vs_zero >= 0.9,
                        "l0<=30": metrics.l0 <= 30},
    }
    return numbers, density_histogram(metrics.density)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run directory of `mi-toolkit lm`")
    parser.add_argument("--activation", choices=["topk", "batchtopk", "relu", "jumprelu"], default="topk")
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=24, help="TopK: active features per token")
    parser.add_argument("--l1", type=float, default=1.0, help="ReLU: L1 coefficient")
    parser.add_argument("--aux-k", type=int, default=0, help="TopK: AuxK's dead features per input (0: off)")
    parser.add_argument("--resample-every", type=int, default=mt.SAEConfig.resample_every,
                        help="dead-feature resampling period in steps (0: off)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--train-windows", type=int, default=8192, help="training windows streamed (x n_ctx tokens)")
    parser.add_argument("--eval-windows", type=int, default=1024, help="held-out windows measured")
    parser.add_argument("--ulf-density", type=float, default=1e-4)
    parser.add_argument("--dense-k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the numbers here")
    parser.add_argument("--html", default=None, help="write the density histogram here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()

    run = mt.load_run(args.run)
    config = mt.SAEConfig(d_in=run.model.cfg.d_mlp, d_sae=args.d_sae, activation=args.activation, k=args.k,
                          l1_coefficient=args.l1, aux_k=args.aux_k, resample_every=args.resample_every,
                          steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    numbers, hist = replicate(run, config, n_train_windows=args.train_windows, n_eval_windows=args.eval_windows,
                              ulf_density=args.ulf_density, dense_k=args.dense_k, seed=args.seed,
                              progress=not args.quiet)
    numbers["lm"] = {k: run.analysis.get(k) for k in ("heldout_loss", "unigram_loss")}
    numbers["density_histogram"] = {"log10_edges": [round(e, 3) for e in hist.log10_edges.tolist()],
                                    "counts": hist.counts.tolist(), "dead": hist.n_dead}
    n = numbers
    print(f"SAE {args.activation} d_sae={args.d_sae} k={args.k}: trained {n['sae']['train_seconds']:.0f} s on "
          f"{args.train_windows} windows; measured on {n['eval_tokens']:,} held-out tokens")
    print(f"  L0 {n['l0']:.1f}   explained variance {n['explained_variance']:.4f}   CE loss recovered "
          f"{n['ce_loss_recovered']:.4f} (vs mean ablation {n['ce_loss_recovered_vs_mean']:.4f}); "
          f"CE clean {n['ce_loss']['clean']:.4f}, spliced {n['ce_loss']['sae']:.4f}, zero-ablated "
          f"{n['ce_loss']['zero_ablated']:.4f}")
    print(f"  targets: {n['targets_met']}")
    print(f"  dead features {n['dead']}")
    u = n["ultra_low"]
    print(f"  ultra-low-frequency (< {u['density_below']:g}): {u['count']} features; mean pairwise encoder cosine "
          f"{u['mean_pairwise_encoder_cosine']} (other live features: {u['baseline_other_live_features']})")
    print(f"    published: {PUBLISHED['ultra_low']}")
    d = n["dense_in_neuron_basis"]
    print(f"  dense in the neuron basis ({d['definition']}): {d['fraction']}; by cut-off {d['fraction_by_cutoff']};"
          f" median neurons for 90% {d['median_neurons_for_90pct']}")
    print(f"    published: {PUBLISHED['dense_in_neuron_basis']}")
    print("  density histogram (log10 bin start: features):",
          {round(e, 2): c for e, c in zip(hist.log10_edges.tolist(), hist.counts.tolist()) if c})
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(n, indent=2))
    if args.html:
        mt.plot.feature_density(hist).write_html(args.html, include_plotlyjs="inline")


if __name__ == "__main__":
    main()
