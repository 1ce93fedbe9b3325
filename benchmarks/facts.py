"""Fact-recall benchmarks on a trained fact model (``mi-toolkit facts --out DIR``), measured in one run.

1. Causal tracing: the vectorised ``mt.causal_trace`` (many restores per forward pass, one prompt at a time) and
   ``mt.causal_traces`` (every prompt in the same passes) vs a loop of TransformerLens hooks (one restore per
   forward pass, the ``n_samples`` noise draws in its batch, one prompt at a time as ROME's code does; and the same
   loop with every prompt's draws in each batch): time ratios and the largest difference, for the residual stream
   and the MLP output (each timed as the median of ``--repeats`` runs after a warm-up run).
2. ROME over ``--edits`` facts at every MLP layer (the traced layer first): efficacy, paraphrase, neighbourhood,
   their harmonic mean, and the bleed into the subjects' other relations; each edit applied alone and undone.
3. MEMIT: all ``--edits`` facts in one update over a layer range around the traced layer.
4. Reversal: a model taught half its pairs in both directions and half forwards only (``--reversal-steps``).

Usage: python benchmarks/facts.py --run DIR [--threads 1] [--repeats 5] [--edits 100] [--memit-layers 0,1]
                                  [--mom2-weight 100 1000] [--reversal-steps 1500] [--skip tracing,rome,memit,reversal]
"""

import argparse
import json
import time

import torch

import mi_toolkit as mt
from mi_toolkit.analysis.edits import edit_scores, summarise_scores
from mi_toolkit.analysis.tracing import KINDS, noise_level, window_layers
from mi_toolkit.interventions.editing import EditConfig, memit, rome, second_moments


def loop_trace(model, tokens, subject, answers, kind, noise, n_samples, seed):
    """The baseline: one restore per forward pass with plain hooks, the noise draws in its batch. ``tokens`` is one
    prompt ``[pos]`` (ROME's loop) or several of one template ``[prompt, pos]`` in the same batch (prompt ``i``
    noised with seed ``seed + i``, as ``causal_traces`` does); returns ``[prompt, layer, pos]``."""
    tokens = tokens.reshape(-1, tokens.shape[-1])
    answers = torch.tensor(answers).reshape(-1).repeat_interleave(n_samples)
    _, cache = model.run_with_cache(tokens)
    draws = torch.cat([noise * torch.randn(n_samples, len(subject), model.cfg.d_model,
                                           generator=torch.Generator().manual_seed(seed + i))
                       for i in range(len(tokens))])

    def add_noise(x, hook):
        x = x.clone()
        x[:, list(subject)] += draws
        return x

    batch = tokens.repeat_interleave(n_samples, 0)
    out = torch.empty(len(tokens), model.cfg.n_layers, tokens.shape[1])
    for layer in range(model.cfg.n_layers):
        for pos in range(tokens.shape[1]):
            hooks = [("hook_embed", add_noise)]
            for restored in window_layers(layer, 1, model.cfg.n_layers):
                name = mt.get_act_name(KINDS[kind], restored)

                def restore(x, hook, pos=pos, name=name):
                    x = x.clone()
                    x[:, pos] = cache[name][:, pos].repeat_interleave(n_samples, 0)
                    return x

                hooks.append((name, restore))
            logits = model.run_with_hooks(batch, fwd_hooks=hooks)
            probs = logits[:, -1].softmax(-1).gather(1, answers[:, None])[:, 0]
            out[:, layer, pos] = probs.view(len(tokens), n_samples).mean(1)
    return out


def bench_tracing(model, kb, n_facts: int, n_samples: int, repeats: int) -> dict:
    """Both prompt forms: the edit prompt (``<bos> First Last lives in``, 5 tokens) and a long one (4 filler words,
    then the relation's longest training template: 12 tokens). Each way is run once to warm up, then timed as the
    median of ``repeats`` runs."""
    noise = noise_level(model, kb.name_tokens())
    relation = kb.relations[0]
    records = kb.edit_records(n_facts, relation=relation, seed=0)
    longest = max(kb.templates(relation), key=len)
    filler = tuple(kb.ids[w] for w in ("so", "well", "then", "today"))
    forms = {"edit prompt": [(r.prompt, r.true) for r in records],
             "long prompt": [(kb.prompt(r.subject, relation, longest, filler), r.true) for r in records]}
    out = {}
    for form, prompts in forms.items():
        tokens = [torch.tensor(prompt.tokens) for prompt, _ in prompts]
        for kind in ("resid", "mlp"):

            def one_at_a_time():
                return [mt.causal_trace(model, t, p.subject_positions, a, kind=kind, noise=noise,
                                        n_samples=n_samples, seed=i)
                        for i, (t, (p, a)) in enumerate(zip(tokens, prompts))]

            def together():  # every prompt at once (same template: positions line up)
                return mt.causal_traces(model, torch.stack(tokens), prompts[0][0].subject_positions,
                                        [a for _, a in prompts], kind=kind, noise=noise, n_samples=n_samples, seed=0)

            def loop():
                return [loop_trace(model, t, p.subject_positions, [a], kind, noise, n_samples, i)[0]
                        for i, (t, (p, a)) in enumerate(zip(tokens, prompts))]

            def batched_loop():  # the same loop with every prompt's noise draws in each pass's batch
                return list(loop_trace(model, torch.stack(tokens), prompts[0][0].subject_positions,
                                       [a for _, a in prompts], kind, noise, n_samples, 0))

            times, results = {}, {}
            for name, fn in (("vectorised", one_at_a_time), ("together", together), ("loop", loop),
                             ("batched loop", batched_loop)):
                results[name] = fn()  # warm-up, and the result compared below
                times[name] = _median_time(fn, repeats)
            diffs = [(trace.scores - expected).abs().max().item()
                     for traces in (results["vectorised"], results["together"])
                     for trace, expected in zip(traces, results["loop"])]
            diffs += [(a - b).abs().max().item() for a, b in zip(results["batched loop"], results["loop"])]
            out[f"{form}, {kind}"] = {"tokens": len(tokens[0]), "vectorised_s": round(times["vectorised"], 4),
                                      "together_s": round(times["together"], 4), "loop_s": round(times["loop"], 4),
                                      "batched_loop_s": round(times["batched loop"], 4),
                                      "speedup": round(times["loop"] / times["vectorised"], 1),
                                      "speedup_together": round(times["loop"] / times["together"], 1),
                                      "together_vs_batched_loop": round(times["batched loop"] / times["together"], 1),
                                      "max_abs_diff": max(diffs)}
    return out


def _median_time(fn, repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (after the caller's warm-up call)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


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
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each way of tracing (median)")
    parser.add_argument("--edits", type=int, default=100)
    parser.add_argument("--memit-layers", default=None, help="e.g. 0,1 (default: the traced layer and the next)")
    parser.add_argument("--mom2-weight", type=float, nargs="+", default=[EditConfig().mom2_weight])
    parser.add_argument("--reversal-steps", type=int, default=1500)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: tracing,rome,memit,reversal")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    torch.set_num_threads(args.threads)
    skip = set(args.skip.split(","))
    run = mt.load_run(args.run)
    model, task = run.model, run.task
    peak = run.analysis["tracing"]["mlp"]["peak"][0]
    results = {"threads": args.threads, "traced_mlp_peak": run.analysis["tracing"]["mlp"]["peak"]}
    with torch.no_grad():
        if "tracing" not in skip:
            results["tracing"] = bench_tracing(model, task.kb, args.trace_facts, args.samples, args.repeats)
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
