"""Fact-recall benchmarks on a trained fact model (``mi-toolkit facts --out DIR``), measured in one run.

1. Causal tracing: the vectorised ``mt.causal_trace`` (many restores per forward pass, one prompt at a time) and
   ``mt.causal_traces`` (every prompt in the same passes) vs a loop of TransformerLens hooks (one restore per
   forward pass, the ``n_samples`` noise draws in its batch): time ratios and the largest difference, for the
   residual stream and the MLP output.
2. ROME over ``--edits`` facts at every MLP layer (the traced layer first): efficacy, paraphrase, neighbourhood,
   their harmonic mean, and the bleed into the subjects' other relations; each edit applied alone and undone.
3. MEMIT: all ``--edits`` facts in one update over a layer range around the traced layer.
4. Reversal: a model taught half its pairs in both directions and half forwards only (``--reversal-steps``).

Usage: python benchmarks/facts.py --run DIR [--threads 1] [--edits 100] [--memit-layers 0,1] [--mom2-weight 100 1000]
                                  [--reversal-steps 1500] [--skip tracing,rome,memit,reversal]
"""

import argparse
import json
import time

import torch

import mi_toolkit as mt
from mi_toolkit.analysis.edits import edit_scores, summarise_scores
from mi_toolkit.analysis.tracing import KINDS, noise_level, window_layers
from mi_toolkit.interventions.editing import EditConfig, memit, rome, second_moments


def loop_trace(model, tokens, subject, answer, kind, noise, n_samples, seed):
    """One restore per forward pass with plain hooks (the baseline)."""
    _, cache = model.run_with_cache(tokens[None])
    gen = torch.Generator().manual_seed(seed)
    draws = noise * torch.randn(n_samples, len(subject), model.cfg.d_model, generator=gen)

    def add_noise(x, hook):
        x = x.clone()
        x[:, list(subject)] += draws
        return x

    out = torch.empty(model.cfg.n_layers, len(tokens))
    for layer in range(model.cfg.n_layers):
        for pos in range(len(tokens)):
            hooks = [("hook_embed", add_noise)]
            for restored in window_layers(layer, 1, model.cfg.n_layers):
                name = mt.get_act_name(KINDS[kind], restored)

                def restore(x, hook, pos=pos, name=name):
                    x = x.clone()
                    x[:, pos] = cache[name][0, pos]
                    return x

                hooks.append((name, restore))
            logits = model.run_with_hooks(tokens[None].repeat(n_samples, 1), fwd_hooks=hooks)
            out[layer, pos] = logits[:, -1].softmax(-1)[:, answer].mean()
    return out


def bench_tracing(model, kb, n_facts: int, n_samples: int) -> dict:
    """Both prompt forms: the edit prompt (``<bos> First Last lives in``, 5 tokens) and a long one (4 filler words,
    then the relation's longest training template: 11 tokens)."""
    noise = noise_level(model, kb.name_tokens())
    relation = kb.relations[0]
    records = kb.edit_records(n_facts, relation=relation, seed=0)
    longest = max(kb.templates(relation), key=len)
    filler = tuple(kb.ids[w] for w in ("so", "well", "then", "today"))
    forms = {"edit prompt": [(r.prompt, r.true) for r in records],
             "long prompt": [(kb.prompt(r.subject, relation, longest, filler), r.true) for r in records]}
    out = {}
    for form, prompts in forms.items():
        for kind in ("resid", "mlp"):
            times, diffs = {"vectorised": 0.0, "loop": 0.0}, []
            for i, (prompt, answer) in enumerate(prompts):
                tokens = torch.tensor(prompt.tokens)
                started = time.perf_counter()
                trace = mt.causal_trace(model, tokens, prompt.subject_positions, answer, kind=kind, noise=noise,
                                        n_samples=n_samples, seed=i)
                times["vectorised"] += time.perf_counter() - started
                started = time.perf_counter()
                expected = loop_trace(model, tokens, prompt.subject_positions, answer, kind, noise, n_samples, i)
                times["loop"] += time.perf_counter() - started
                diffs.append((trace.scores - expected).abs().max().item())
            started = time.perf_counter()  # every prompt at once (same template: positions line up)
            together = mt.causal_traces(model, torch.tensor([p.tokens for p, _ in prompts]),
                                        prompts[0][0].subject_positions, [a for _, a in prompts], kind=kind,
                                        noise=noise, n_samples=n_samples, seed=0)
            times["together"] = time.perf_counter() - started
            for i, (prompt, answer) in enumerate(prompts):
                expected = loop_trace(model, torch.tensor(prompt.tokens), prompt.subject_positions, answer, kind,
                                      noise, n_samples, i)
                diffs.append((together[i].scores - expected).abs().max().item())
            out[f"{form}, {kind}"] = {"tokens": len(prompts[0][0].tokens), "vectorised_s": round(times["vectorised"], 3),
                                      "together_s": round(times["together"], 3), "loop_s": round(times["loop"], 3),
                                      "speedup": round(times["loop"] / times["vectorised"], 1),
                                      "speedup_together": round(times["loop"] / times["together"], 1),
                                      "max_abs_diff": max(diffs)}
    return out


def bench_rome(model, task, n_edits: int, layers: list[int]) -> dict:
    kb = task.kb
    C = second_moments(model, task, layers)
    records = kb.edit_records(n_edits, seed=1)
    base = [edit_scores(model, r) for r in records]
    out = {}
    for layer in layers:
        started = time.perf_counter()
        scores = []
        for r in records:
            with rome(model, kb, r, layer, C[layer]):
                scores.append(edit_scores(model, r))
        out[layer] = {k: round(v, 4) for k, v in summarise_scores(scores, base).items()}
        out[layer]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"ROME at layer {layer}: {out[layer]}", flush=True)
    return out


def bench_memit(model, task, n_edits: int, layers: list[int], mom2_weight: float) -> dict:
    kb = task.kb
    C = second_moments(model, task, layers)
    records = kb.edit_records(n_edits, seed=1)
    base = [edit_scores(model, r) for r in records]
    started = time.perf_counter()
    edit = memit(model, kb, records, layers, C, EditConfig(mom2_weight=mom2_weight))
    seconds = time.perf_counter() - started
    with edit:
        scores = [edit_scores(model, r) for r in records]
    summary = {k: round(v, 4) for k, v in summarise_scores(scores, base).items()}
    # How much the facts not edited moved: recall on their training templates, edited model vs not.
    edited = {(r.subject, r.relation) for r in records}
    keep = torch.tensor([(s, r) not in edited for s, r, _ in kb.facts for _ in kb.templates(r)])
    prompts, answers = task.eval_prompts()

    def recall() -> float:
        hits = mt.facts.answer_logits(model, prompts).argmax(-1) == answers
        return hits[keep].float().mean().item()

    recall_before = recall()
    with edit:
        recall_after = recall()
    return {**summary, "layers": layers, "mom2_weight": mom2_weight, "seconds": round(seconds, 1),
            "other_facts_recall_before": recall_before, "other_facts_recall_after": recall_after}


def bench_reversal(steps: int, seed: int = 0) -> dict:
    task = mt.tasks.ReversalTask(seed=seed)
    model = mt.make_fact_model(task.d_vocab, task.kb.n_ctx, seed=seed, **mt.models.FACT_PRESETS["tiny"])
    started = time.perf_counter()
    result = mt.train(model, task, mt.recipes.FACTS_TINY.replace(steps=steps, log_every=steps), progress=False)
    return {**result.history[-1], "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a run directory of mi-toolkit facts")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trace-facts", type=int, default=10)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--memit-layers", default=None, help="e.g. 0,1 (default: the traced layer and the next)")
    parser.add_argument("--mom2-weight", type=float, nargs="+", default=[EditConfig().mom2_weight])
    parser.add_argument("--reversal-steps", type=int, default=1500)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: tracing,rome,memit,reversal")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    run = mt.load_run(args.run)
    model, task = run.model, run.task
    peak = run.analysis["tracing"]["mlp"]["peak"][0]
    results = {"threads": args.threads, "traced_mlp_peak": run.analysis["tracing"]["mlp"]["peak"]}
    with torch.no_grad():
        if "tracing" not in skip:
            results["tracing"] = bench_tracing(model, task.kb, args.trace_facts, args.samples)
            print("tracing:", results["tracing"], flush=True)
    if "rome" not in skip:
        layers = [peak] + [layer for layer in range(model.cfg.n_layers) if layer != peak]
        results["rome"] = bench_rome(model, task, args.edits, layers)
    if "memit" not in skip:
        layers = ([int(x) for x in args.memit_layers.split(",")] if args.memit_layers
                  else [peak, min(peak + 1, model.cfg.n_layers - 1)])
        results["memit"] = [bench_memit(model, task, args.edits, sorted(set(layers)), w) for w in args.mom2_weight]
        print("MEMIT:", results["memit"], flush=True)
    if "reversal" not in skip:
        results["reversal"] = bench_reversal(args.reversal_steps)
        print("reversal:", results["reversal"], flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
