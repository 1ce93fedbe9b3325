"""SAE benchmark on CPU: training throughput against a plain PyTorch loop, MMCS reached against wall time, and SAEs
on the toolkit's own models.

Both on synthetic activations with known features (512 unit directions in 256 dimensions, about 5 active per
sample; Sharkey et al. 2022). Throughput is measured side by side in one process, alternating rounds of the
toolkit's ``train_sae`` and a reference loop written the obvious way (dense encode and decode, Adam, decoder rows
renormalised after each step), so both see the same machine load; the ratio is the figure to compare.

The toolkit-model section trains the grokking transformer (p = 113, default recipe) and an SAE on its MLP
neurons at the answer position (does each feature live on the key Fourier frequencies?), then the induction model
and an SAE on its residual stream between the two layers (where the previous-token head writes).

Run from the repository root:  python benchmarks/sae.py [--quick] [--skip-models] [--saelens-python PATH]

SAELens (the reference SAE library) is measured on the same data when it is importable, or through
``--saelens-python``, an interpreter of a throwaway venv that has it (see ``saelens_status``).
"""

import argparse
import importlib.metadata
import importlib.util
import os
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

import mi_toolkit as mt
from mi_toolkit import GroundTruth, SAEConfig, mmcs, train_sae
from mi_toolkit.analysis.fourier import frequencies_from_clusters, neuron_clusters
from mi_toolkit.core.losses import next_token_loss

D_IN, N_FEATURES, D_SAE, BATCH = 256, 512, 1024, 1024


def reference_train(x: torch.Tensor, cfg: SAEConfig) -> torch.Tensor:
    """A plain SAE training loop (no buffer, no resampling, no normalisation); returns W_dec."""
    g = torch.Generator().manual_seed(cfg.seed)
    W_dec = F.normalize(torch.randn(cfg.d_sae, cfg.d_in, generator=g), dim=-1).requires_grad_()
    W_enc = W_dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(cfg.d_sae, requires_grad=True)
    b_dec = x[:4096].mean(0).clone().requires_grad_()
    opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=cfg.lr)
    for step in range(cfg.steps):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        batch = x[idx]
        pre = (batch - b_dec) @ W_enc + b_enc
        if cfg.activation == "relu":
            f = F.relu(pre)
        else:
            values, indices = pre.topk(cfg.k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
        x_hat = f @ W_dec + b_dec
        loss = (x_hat - batch).pow(2).sum(-1).mean()
        if cfg.activation == "relu":
            loss = loss + cfg.l1_coefficient * f.sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.copy_(F.normalize(W_dec, dim=-1))
    return W_dec.detach()


def throughput(x: torch.Tensor, cfg: SAEConfig, rounds: int) -> tuple[float, float]:
    """Median activations/s of train_sae and of the reference loop, in alternating rounds."""
    ours, ref = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        train_sae(x, cfg, progress=False)
        ours.append(cfg.steps * cfg.batch_size / (time.perf_counter() - start))
        start = time.perf_counter()
        reference_train(x, cfg)
        ref.append(cfg.steps * cfg.batch_size / (time.perf_counter() - start))
    return statistics.median(ours), statistics.median(ref)


def mmcs_over_time(x: torch.Tensor, data: GroundTruth, cfg: SAEConfig, every: int) -> list[tuple[int, float, float]]:
    """(step, training seconds, MMCS) every ``every`` steps; time spent computing MMCS is not counted."""
    log, excluded = [], 0.0
    start = time.perf_counter()

    def callback(step, sae):
        nonlocal excluded
        if (step + 1) % every == 0:
            t = time.perf_counter()
            log.append((step + 1, t - start - excluded, mmcs(sae.W_dec, data.features)))
            excluded += time.perf_counter() - t

    train_sae(x, cfg, progress=False, callback=callback)
    return log


def saelens_status() -> str:
    """Whether SAELens is importable here (it is then benchmarked in this process)."""
    try:
        version = importlib.metadata.version("sae-lens")
    except importlib.metadata.PackageNotFoundError:
        return ("SAELens is not installed in this environment, so it is not measured here. Its latest release (6.x) "
                "allows transformer-lens <4 and installs beside mi_toolkit without touching transformer-lens, but "
                "it pulls in datasets, nltk, babe, simple-parsing, statsmodels and plotly-express, which mi_toolkit "
                "does not need. To measure it, make a throwaway venv that sees this environment and pass its "
                "interpreter: python -m venv --system-site-packages /tmp/saelens && /tmp/saelens/bin/pip install "
                "sae-lens && python benchmarks/sae.py --saelens-python /tmp/saelens/bin/python")
    return f"SAELens {version} beside transformer-lens {importlib.metadata.version('transformer-lens')}"


def saelens_measure(x: torch.Tensor, data: GroundTruth, steps: int) -> None:
    """Train SAELens's TopK and standard (ReLU + L1) SAEs on the same data with its SAETrainer."""
    from sae_lens import (SAETrainer, StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE,
                          TopKTrainingSAEConfig)
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    def batches():
        g = torch.Generator().manual_seed(0)
        while True:
            yield x[torch.randint(0, len(x), (BATCH,), generator=g)]

    common = dict(d_in=D_IN, d_sae=D_SAE, normalize_activations="expected_average_only_in")
    for kind, make in (("topk", lambda: TopKTrainingSAE(TopKTrainingSAEConfig(k=8, **common))),
                       ("relu", lambda: StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=1.0, **common)))):
        for n in (max(steps // 6, 1), steps):
            cfg = SAETrainerConfig(total_training_samples=n * BATCH, train_batch_size_samples=BATCH, lr=3e-3,
                                   lr_end=3e-3, logger=LoggingConfig(log_to_wandb=False),
                                   n_batches_for_norm_estimate=10)
            start = time.perf_counter()
            sae = SAETrainer(cfg, make(), batches()).fit()
            seconds = time.perf_counter() - start
            print(f"SAELens {kind}: {n} steps {seconds:.1f}s ({n * BATCH / seconds:,.0f} activations/s), "
                  f"MMCS {mmcs(sae.W_dec, data.features):.3f}", flush=True)


def _report(name: str, sae, model, hook: str, tokens, seconds: float, **loss_kwargs) -> None:
    quality = mt.evaluate_sae(sae, mt.collect_activations(model, hook, tokens, positions=loss_kwargs.get("positions")))
    loss = mt.ce_loss_recovered(model, sae, hook, tokens, **loss_kwargs)
    print(f"{name}: trained in {seconds:.1f}s; L0 {quality.l0:.2f}, explained variance "
          f"{quality.explained_variance:.4f}, dead {quality.n_dead}/{sae.cfg.d_sae}; loss clean {loss.clean:.4f}, "
          f"with SAE {loss.sae:.4f}, zero-ablated {loss.zero_ablated:.3f}, mean-ablated {loss.mean_ablated:.3f}; "
          f"CE loss recovered {loss.recovered_vs_zero:.4f} (vs zero) {loss.recovered_vs_mean:.4f} (vs mean)",
          flush=True)


def grokking_sae(steps: int) -> None:
    """An SAE on the grokking model's MLP neurons at the answer position; do its features follow the frequencies?"""
    task = mt.ModularArithmetic(p=113)
    model = mt.make_grokking_model(113)
    mt.train(model, task, mt.recipes.GROKKING_FAST.replace(log_every=10**9, checkpoint_every=10**9), progress=False)
    model.eval()
    print(f"grokking model (p=113, fast recipe): test accuracy {task.evaluate(model)['test_acc']:.4f}")
    hook = "blocks.0.mlp.hook_post"
    start = time.perf_counter()
    sae = train_sae((model, hook, task.tokens, -1),
                    SAEConfig(d_in=512, d_sae=1024, activation="topk", k=16, steps=steps, batch_size=1024),
                    progress=False)
    _report("SAE on grokking blocks.0.mlp.hook_post (last position), TopK k=16, d_sae=1024", sae, model, hook,
            task.tokens, time.perf_counter() - start, positions=-1,
            metric=mt.metrics.answer_loss(task.labels))
    clusters = neuron_clusters(model, task)
    freqs, dominant = frequencies_from_clusters(clusters), clusters.dominant
    W = sae.W_dec.detach()  # unit rows
    share = torch.stack([W[:, dominant == k].pow(2).sum(-1) for k in freqs])  # (n_key, d_sae)
    live = W.abs().sum(-1) > 0
    print(f"  key frequencies {freqs}; median share of a feature's decoder norm^2 on key-frequency neurons "
          f"{share.sum(0)[live].median():.3f}, on its best single frequency {share.max(0).values[live].median():.3f}")


def induction_sae(steps: int) -> None:
    """An SAE on the induction model's residual stream between its two layers."""
    run = mt.train_induction_model(progress=False)
    model, task = run.model.eval(), run.task
    batches = [task.train_batch(10_000 + i) for i in range(64)]  # held-out steps of the task
    tokens = torch.cat([b[0] for b in batches])
    hook = "blocks.0.hook_resid_post"
    start = time.perf_counter()
    sae = train_sae((model, hook, tokens),
                    SAEConfig(d_in=model.cfg.d_model, d_sae=512, activation="topk", k=8, steps=steps,
                              batch_size=1024), progress=False)
    # The model is trained (and scored) only where the next token is a repeat; elsewhere it is random.
    eval_tokens, predictable = tokens[:256], torch.cat([b[1] for b in batches])[:256]

    def repeat_loss(logits):
        return next_token_loss(logits, eval_tokens, predictable)

    _report(f"SAE on induction {hook} (all positions, {len(tokens)} sequences), TopK k=8, d_sae=512", sae, model,
            hook, eval_tokens, time.perf_counter() - start, metric=repeat_loss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (a smoke run)")
    parser.add_argument("--skip-models", action="store_true", help="skip the SAEs on the toolkit's models")
    parser.add_argument("--saelens-python", help="an interpreter with sae-lens installed, to measure it as well")
    parser.add_argument("--saelens-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps, rounds, mmcs_steps = (30, 1, 100) if args.quick else (150, 3, 600)
    if args.saelens_only:
        data = GroundTruth(N_FEATURES, D_IN, feature_probability=0.01, seed=0)
        saelens_measure(data.sample(100_000), data, mmcs_steps)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ground truth {N_FEATURES} features in "
          f"{D_IN} dims, ~{N_FEATURES * 0.01:.1f} active per sample; SAE d_sae={D_SAE}, batch {BATCH}")
    data = GroundTruth(N_FEATURES, D_IN, feature_probability=0.01, seed=0)
    x = data.sample(100_000)

    print("\n## Training throughput (activations / s, median of alternating rounds)")
    print(f"{'SAE':<10}{'train_sae':>12}{'reference':>12}{'ratio':>8}")
    for kind in ("relu", "topk"):
        cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, activation=kind, k=8, batch_size=BATCH, steps=steps,
                        resample_every=0)
        ours, ref = throughput(x, cfg, rounds)
        print(f"{kind:<10}{ours:>12,.0f}{ref:>12,.0f}{ours / ref:>8.2f}")

    print("\n## MMCS against training time (512 features / 256 dims)")
    for kind in ("topk", "relu"):
        cfg = SAEConfig(d_in=D_IN, d_sae=D_SAE, activation=kind, k=8, batch_size=BATCH, steps=mmcs_steps)
        log = mmcs_over_time(x, data, cfg, every=max(mmcs_steps // 12, 1))
        print(f"{kind}: " + ", ".join(f"{s} steps {t:.1f}s {m:.3f}" for s, t, m in log))
        reached = next((t for _, t, m in log if m >= 0.95), None)
        print(f"{kind}: MMCS >= 0.95 after {reached:.1f}s" if reached is not None else f"{kind}: MMCS < 0.95")

    if not args.skip_models:
        print("\n## SAEs on the toolkit's models")
        grokking_sae(mmcs_steps)
        induction_sae(mmcs_steps)

    print("\n## SAELens (same data, d_sae, batch, lr; its SAETrainer fed the same activations)")
    if args.saelens_python:
        command = [args.saelens_python, __file__, "--saelens-only"] + (["--quick"] if args.quick else [])
        subprocess.run(command, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    elif importlib.util.find_spec("sae_lens") is not None:
        print(saelens_status())
        saelens_measure(x, data, mmcs_steps)
    else:
        print(saelens_status())


if __name__ == "__main__":
    main()
