"""Feature-dashboard benchmark: the time to write one HTML page for 50 SAE features (target <= 30 s on 2 cores).

The model has the shape of a small language model (one layer, d_model 128, d_mlp 512 as in Bricken et al. 2023,
d_vocab 4096, context 128); the SAE reads its MLP neurons (d_in 512, d_sae 4096, TopK k = 32), trained briefly on
those activations so that its features fire like a real SAE's. The dashboard searches 256 sequences of 128 tokens
(32,768 token positions) and shows, per feature, 10 contexts, a histogram, 10 + 10 logit effects and 5 neurons.
Only ``mt.feature_dashboard`` is timed: the forward passes, the encoding, the statistics, rendering and writing.

Run from the repository root:  python benchmarks/dashboard.py [--out benchmarks/out/dashboard.html]
"""

import argparse
import os
import time
from pathlib import Path

import torch

import mi_toolkit as mt

HOOK = "blocks.0.mlp.hook_post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/out/dashboard.html")
    parser.add_argument("--features", type=int, default=50)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()} (cores: {os.cpu_count()})", flush=True)

    model = mt.build_model(dict(n_layers=1, d_model=128, d_head=32, n_heads=4, d_mlp=512, d_vocab=4096, n_ctx=128,
                                act_fn="gelu", normalization_type="LN"), seed=0).eval()
    tokens = torch.randint(0, 4096, (256, 128), generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    sae = mt.train_sae((model, HOOK, tokens[:64]), mt.SAEConfig(d_in=512, d_sae=4096, activation="topk", k=32,
                                                                steps=40, batch_size=512, buffer_size=8192),
                       progress=False)
    print(f"SAE trained in {time.perf_counter() - start:.1f}s (not part of the timing)", flush=True)
    density = mt.evaluate_sae(sae, mt.collect_activations(model, HOOK, tokens[:32])).density
    features = density.argsort(descending=True)[: args.features].tolist()  # the most active features

    start = time.perf_counter()
    path = mt.feature_dashboard(sae, model, tokens, features, hook_name=HOOK, out=args.out)
    seconds = time.perf_counter() - start
    size = Path(path).stat().st_size / 2**20
    print(f"dashboard for {len(features)} features over {tokens.numel():,} tokens: {seconds:.1f}s "
          f"(target <= 30 s), {size:.1f} MiB -> {path}", flush=True)


if __name__ == "__main__":
    main()
