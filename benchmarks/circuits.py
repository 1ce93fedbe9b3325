"""Circuit-discovery benchmarks, measured side by side in one run.

1. Speed: exact edge scores (vectorised), EAP, EAP-IG and EAP-IG along receiver paths against a plain loop of
   TransformerLens hooks (one forward pass per edge, the delta added to one receiver's input), on the shipped
   induction and IOI models (81 edges each)
   and on an untrained 4-layer model with MLPs and LayerNorm (1,519 edges). Peak extra resident memory of each
   method on the 4-layer model.
2. Agreement with exact on those models: top-10 overlap, Spearman over all edges, and the largest gap between
   the faithfulness curves of the top-n circuits (each estimate vs exact), for circuits of the n highest-|score|
   edges and for circuits grown greedily from the logits (Hanna et al.).
3. ACDC threshold sweeps on those models and on models trained here with other seeds (``--seeds``): time, forward
   passes, edges kept and faithfulness at every threshold, and the smallest circuit with faithfulness >= 0.9.

Usage: python benchmarks/circuits.py [--threads 2] [--repeats 3] [--seeds 5]
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch

import mi_toolkit as mt
from mi_toolkit.analysis import circuits
from patching import best_time, peak_extra_mb  # noqa: E402  (the shared timing helpers of benchmarks/)

N_CURVE = [1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 30, 40, 60]


def hook_loop(model, clean, corrupted, metric):
    """One forward pass per edge: the clean run with ``corrupted - clean`` of the sender added to the receiver."""
    graph = circuits.edge_graph(model)
    deltas = {}
    for name, tokens in (("clean", clean), ("corrupted", corrupted)):
        _, cache = model.run_with_cache(tokens)
        out = {"input": cache["blocks.0.hook_resid_pre"]}
        for layer in range(model.cfg.n_layers):
            for h in range(model.cfg.n_heads):
                out[f"a{layer}.h{h}"] = cache[f"blocks.{layer}.attn.hook_z"][:, :, h] @ model.blocks[layer].attn.W_O[h]
            if not model.cfg.attn_only:
                out[f"m{layer}"] = cache[f"blocks.{layer}.hook_mlp_out"]
        deltas[name] = out
    base = metric(model(clean)).item()
    scores = {}
    model.set_use_split_qkv_input(True)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    try:
        for sender, receiver in graph.edges:
            delta = deltas["corrupted"][sender] - deltas["clean"][sender]
            if receiver == "logits":
                name, head = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post", None
            elif receiver.count(".") == 0:
                name, head = f"blocks.{receiver[1:]}.hook_mlp_in", None
            else:
                layer, h, kind = receiver[1:].split(".")
                name, head = f"blocks.{layer}.hook_{kind}_input", int(h[1:])

            def add(x, hook, delta=delta, head=head):
                if head is None:
                    return x + delta
                x = x.clone()
                x[:, :, head] += delta
                return x

            scores[(sender, receiver)] = metric(model.run_with_hooks(clean, fwd_hooks=[(name, add)])).item() - base
    finally:
        model.set_use_split_qkv_input(False)
        if not model.cfg.attn_only:
            model.set_use_hook_mlp_in(False)
    return scores


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    rank = lambda x: x.argsort().argsort().double()  # noqa: E731
    return torch.corrcoef(torch.stack([rank(a), rank(b)]))[0, 1].item()


INDUCTION_TAUS = [0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0]
IOI_TAUS = [0.003, 0.01, 0.03, 0.1, 0.2]


def induction_spec(run):
    """(model, clean, corrupted, scoring metric, ACDC metric, thresholds) of an induction run: the loss on the
    repeated half."""
    clean, corrupted = run.task.patching_pair(16)
    loss = mt.metrics.loss(clean, positions=run.task.repeat_positions)
    return run.model, clean, corrupted, loss, loss, INDUCTION_TAUS


def ioi_spec(run):
    """The same for an IOI run: the logit difference, and for ACDC 1 - its normalised value (a distance)."""
    clean, corrupted, answer, subject = run.task.patching_pair(32)
    logit_diff = mt.metrics.logit_diff(answer, subject)
    distance = mt.metrics.normalized_distance(logit_diff, run.model(clean), run.model(corrupted))
    return run.model, clean, corrupted, logit_diff, distance, IOI_TAUS


def trained_models():
    """The shipped induction and IOI runs (``mt.load_packaged``): the same weights on every machine, where training
    them here would give each CPU's float rounding its own model."""
    return {"induction": induction_spec(mt.load_packaged("induction")), "IOI": ioi_spec(mt.load_packaged("ioi"))}


def speed(name, model, clean, corrupted, metric, repeats):
    n_edges = circuits.edge_graph(model).n_edges
    loop_s, loop = best_time(lambda: hook_loop(model, clean, corrupted, metric), 1)
    row = [f"{name:<10} edges {n_edges:>5}  hook loop {loop_s:8.3f} s"]
    results = {}
    for method in circuits.METHODS:
        seconds, results[method] = best_time(
            lambda m=method: circuits.edge_scores(model, clean, corrupted, metric, m), repeats)
        row.append(f"{method} {seconds:.3f} s ({loop_s / seconds:.1f}x)")
    exact = results["exact"]
    err = max(abs(exact[edge] - value) for edge, value in loop.items())
    print("  ".join(row) + f"  |exact - loop| max {err:.1e}")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5, help="training seeds for the ACDC sweeps (seed 0 is the "
                        "shipped model; IOI takes at most 3)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    started = time.perf_counter()
    models = trained_models()
    print(f"loaded the shipped induction and IOI models in {time.perf_counter() - started:.1f} s\n")

    print("1. Speed: every edge scored, against one forward pass per edge")
    scores = {name: speed(name, *spec[:4], args.repeats) for name, spec in models.items()}
    big = mt.build_model(dict(n_layers=4, d_model=128, n_heads=8, d_head=16, d_mlp=512, d_vocab=512, n_ctx=32,
                              act_fn="gelu", normalization_type="LN"), seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    big_clean, big_corrupted = torch.randint(0, 512, (2, 8, 20), generator=gen)
    big_metric = mt.metrics.logit_diff(big_clean[:, -1], big_corrupted[:, -1])
    speed("4L+MLP", big, big_clean, big_corrupted, big_metric, 1)
    def gradient():  # one forward and backward pass of the model itself: the activations a gradient keeps
        inputs = big.embed(big_clean).detach().requires_grad_(True)
        with big.hooks(fwd_hooks=[("hook_embed", lambda x, hook: inputs)]):
            big_metric(big(big_clean)).backward()

    reference = peak_extra_mb(gradient)
    memory = {m: peak_extra_mb(lambda m=m: circuits.edge_scores(big, big_clean, big_corrupted, big_metric, m))
              for m in ("eap", "eap-ig", "exact", "eap-ig-receivers")}
    ratio = (lambda mb: f" ({mb / reference:.1f}x)" if mb and reference else "")  # noqa: E731  (None off Linux)
    print(f"   peak extra memory, 4-layer model: one forward + backward of the model {reference} MB; "
          + ", ".join(f"{m} {mb} MB{ratio(mb)}" for m, mb in memory.items()))

    print("\n2. Agreement with exact edge scores")
    for name, (model, clean, corrupted, metric, *_rest) in models.items():
        exact = scores[name]["exact"]
        for how in ("top", "greedy"):
            curves = {m: circuits.faithfulness_curve(model, scores[name][m], clean, metric, N_CURVE,
                                                     corrupted_tokens=corrupted, how=how) for m in circuits.METHODS}
            print(f"{name}, circuits of the {'n highest-|score| edges' if how == 'top' else 'greedy n edges'}:")
            for method in circuits.METHODS[1:]:
                est = scores[name][method]
                overlap = len(set(exact.top(10)) & set(est.top(10)))
                gaps = [abs(a - b) for a, b in zip(curves[method].faithfulness, curves["exact"].faithfulness)]
                rho = spearman(exact.flat(), est.flat())
                print(f"{'':<10} {method:<16} top-10 overlap {overlap}/10  Spearman {rho:.3f}"
                      f"  faithfulness curve gap vs exact: max {max(gaps):.3f}, mean {sum(gaps) / len(gaps):.3f}")
            print(f"{'':<10} {'curve n =':<16} " + " ".join(f"{n:5d}" for n in N_CURVE))
            for method, curve in curves.items():
                print(f"{'':<10} {method:<16} " + " ".join(f"{f:5.2f}" for f in curve.faithfulness))
            print(f"{'':<10} {'random':<16} " + " ".join(f"{f:5.2f}" for f in curves["exact"].random_mean))

    print("\n3. ACDC threshold sweeps (faithfulness under the ACDC metric: the loss for induction, 1 - normalised "
          "logit difference for IOI, whose ratio equals the logit difference's)")
    sweeps = {f"{name} (shipped)": spec for name, spec in models.items()}
    for seed in range(1, args.seeds):
        sweeps[f"induction seed {seed}"] = induction_spec(mt.train_induction_model(seed=seed, progress=False))
    for seed in range(1, min(args.seeds, 3)):
        sweeps[f"IOI seed {seed}"] = ioi_spec(mt.train_ioi_model(seed=seed, progress=False))
    for name, (model, clean, corrupted, _metric, acdc_metric, thresholds) in sweeps.items():
        sweep = circuits.acdc_sweep(model, clean, corrupted, thresholds=thresholds, metric=acdc_metric)
        for r in sweep.results:
            print(f"{name:<18} tau {r.threshold:<5} {r.seconds:6.2f} s  {r.forward_passes:3d} passes for "
                  f"{r.edges_tested:3d} tests  edges {r.circuit.n_edges:2d}/{r.circuit.graph.n_edges} "
                  f"({r.edge_fraction:.0%})  faithfulness {r.faithfulness:.3f}")
        best = sweep.smallest(0.9)
        print(f"{name:<18} smallest circuit with faithfulness >= 0.9: " + (
            f"tau {best.threshold}, {best.circuit.n_edges} edges ({best.edge_fraction:.1%}), {best.faithfulness:.3f}"
            if best else "none") + "\n")


if __name__ == "__main__":
    main()
