"""``mi-toolkit`` command line: one subcommand per experiment.

- ``mi-toolkit grokking --out DIR``: train until grokked and every algorithm check passes (or a cap), measure,
  report. Exit status 0 when the model is done (or an exact ``--steps`` budget ran), 1 when training until done
  reached the cap without grokking or with a check failing, 2 for bad arguments.
- ``mi-toolkit groups --group S5 --out DIR``: the same for composition in a finite group (key irreps instead of
  key frequencies).
- ``mi-toolkit miiii --p 37 --out DIR``: one model learns every task ``(x0 + p x1) mod q``, q < p prime.
- ``mi-toolkit facts --out DIR``: a small transformer learns a synthetic knowledge base (2,400 facts); causal
  tracing finds where it recalls them and ROME edits some at the traced layer. Exit status 0 when recall reached
  its target, 1 otherwise, 2 for bad arguments.
- ``mi-toolkit lm --out DIR``: a byte-pair tokenizer and a one-layer language model (d_mlp 512) trained on the
  Python standard library's source; held-out loss against the unigram baseline. Exit status 0 when the held-out
  loss is below the baseline, 1 otherwise, 2 for bad input.
- ``mi-toolkit othello --out DIR``: an Othello-GPT trained on random legal 6x6 games, probed ("mine / theirs /
  empty" at every layer, with baselines) and edited along its probes. Exit status 0 when its top-1 move is legal in
  at least 99% of held-out positions, 1 otherwise, 2 for bad input.
- ``mi-toolkit packaged``: the run directories shipped in the package (``mt.load_packaged(name)``) and the command
  that wrote each; ``mi-toolkit packaged NAME --out DIR`` writes one again (seed 0, the defaults; the shipped
  weights byte for byte on 2 threads). Exit status 0 when written, 1 when a grokking-style run did not grok, 2 for
  bad arguments or an ``--out`` that holds another run.
- ``mi-toolkit sweep grokking --p 59,97,113 --seeds 0-4 --out DIR``: the same over a grid, on Ray. Exit status 0
  when every run grokked, 1 otherwise.
"""

import argparse
import json
import sys

__all__ = ["main"]


def _training_fields(args: argparse.Namespace) -> dict:
    """The training settings every grokking-style subcommand takes (``_training_arguments``)."""
    fields = dict(recipe=args.recipe, steps=args.steps, max_steps=args.max_steps, grad_filter=args.filter,
                  weight_decay=args.weight_decay, optimizer=args.optimizer, muon_lr=args.muon_lr, device=args.device)
    if args.embedding_decay_after is not None:  # else the experiment's own default
        fields["embedding_decay_after"] = None if args.embedding_decay_after == "keep" else args.embedding_decay_after
    return fields


def _decay_factor(text: str) -> float | str:
    if text == "keep":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0 or 'keep', got {text!r}") from None


def _grokking_config(args: argparse.Namespace, **fields):
    from mi_toolkit.experiments.grokking import GrokkingConfig

    return GrokkingConfig(**_training_fields(args), **fields)


def _grokking(args: argparse.Namespace) -> int:
    from mi_toolkit.experiments.grokking import run_grokking

    return _run("grokking", lambda: _grokking_config(args, p=args.p, seed=args.seed, frac_train=args.frac_train),
                run_grokking, args, lambda a: {"key_frequencies": a["key_frequencies"]})


def _groups(args: argparse.Namespace) -> int:
    from mi_toolkit.experiments.groups import GroupsConfig, run_groups

    def config():
        return GroupsConfig(group=args.group, frac_train=args.frac_train, seed=args.seed, **_training_fields(args))

    return _run("groups", config, run_groups, args,
                lambda a: {"key_irreps": a["key_irreps"], "logit_fraction_explained": a["logit_fraction_explained"]})


def _miiii(args: argparse.Namespace) -> int:
    from mi_toolkit.experiments.miiii import MiiiiConfig, run_miiii

    def config():
        return MiiiiConfig(p=args.p, frac_train=args.frac_train, seed=args.seed, **_training_fields(args))

    return _run("miiii", config, run_miiii, args,
                lambda a: {"grok_order": a["grok_order"], "task_grokked_at_step": a["task_grokked_at_step"],
                           "omega": a["omega"]})


def _run(command: str, make_config, runner, args: argparse.Namespace, found) -> int:
    """Build the config (bad input: exit 2 before any work), run, print a JSON summary, and exit 0 when done."""
    try:
        config = make_config()
    except ValueError as err:
        print(f"mi-toolkit {command}: {err}", file=sys.stderr)
        return 2
    from mi_toolkit.core.io import CheckpointError

    try:
        run = runner(args.out, config, progress=not args.quiet, report=not args.no_report)
    except (FileExistsError, CheckpointError) as err:  # an --out that holds another run: nothing was overwritten
        print(f"mi-toolkit {command}: {err}", file=sys.stderr)
        return 2
    a = run.analysis
    summary = {
        "out": str(run.path),
        "grokked": a["grokked"],
        "grokked_at_step": a["grokked_at_step"],
        "stopped_at_step": a["stopped_at_step"],
        "stop_reason": a["stop_reason"],
        "final": a["final"],
        **found(a),
        "checks": {name: {"value": c["value"], "passed": c["passed"]} for name, c in a["checks"].items()},
        "phases": a["phases"],
        "seconds": a["seconds"],
    }
    print(json.dumps(summary, indent=2))
    if not a["grokked"]:
        print(f"mi-toolkit {command}: the model did NOT grok in {a['stopped_at_step']} steps (test accuracy "
              f"{a['final']['test_acc']:.3f}); it memorised, and its analysis is not a result. Train longer "
              "(--max-steps) or use more training data (--frac-train).", file=sys.stderr)
        return 0 if a["stop_reason"] == "step budget" else 1
    failed = [name for name, c in a["checks"].items() if not c["passed"]]
    if failed:
        print(f"mi-toolkit {command}: grokked, but these algorithm checks failed: {failed}", file=sys.stderr)
    return 1 if failed and a["stop_reason"] == "cap" else 0


def _facts(args: argparse.Namespace) -> int:
    from mi_toolkit.experiments.facts import FactsConfig, run_facts

    try:
        config = FactsConfig(preset=args.preset, seed=args.seed, target_recall=args.target_recall,
                             n_traced=args.n_traced, n_edits=args.n_edits, device=args.device)
        run = run_facts(args.out, config, progress=not args.quiet, report=not args.no_report)
    except (ValueError, FileExistsError) as err:
        print(f"mi-toolkit facts: {err}", file=sys.stderr)
        return 2
    a = run.analysis
    summary = {"out": str(run.path), **{k: a[k] for k in ("n_facts", "recall", "paraphrase_recall", "steps",
                                                           "seconds")},
               "mlp_peak": a["tracing"]["mlp"]["peak"], "edits": a.get("edits")}
    print(json.dumps(summary, indent=2))
    if a["recall"] < args.target_recall:
        print(f"mi-toolkit facts: recall {a['recall']:.4f} stayed below {args.target_recall}", file=sys.stderr)
        return 1
    return 0


def _lm(args: argparse.Namespace) -> int:
    from mi_toolkit.experiments.lm import LMConfig, run_lm

    try:
        config = LMConfig(preset=args.preset, root=args.root, seed=args.seed, steps=args.steps, device=args.device)
        run = run_lm(args.out, config, progress=not args.quiet, report=not args.no_report)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"mi-toolkit lm: {err}", file=sys.stderr)
        return 2
    a = run.analysis
    print(json.dumps({"out": str(run.path), **{k: a[k] for k in ("heldout_loss", "unigram_loss", "n_files",
                                                                  "n_tokens", "steps", "seconds")}}, indent=2))
    return 0 if a["heldout_loss"] < a["unigram_loss"] else 1


def _othello(args: argparse.Namespace) -> int:
    from mi_toolkit.experiments.othello import OthelloConfig, run_othello

    try:
        config = OthelloConfig(preset=args.preset, size=args.size, seed=args.seed, steps=args.steps,
                               device=args.device)
        run = run_othello(args.out, config, progress=not args.quiet, report=not args.no_report)
    except (ValueError, FileExistsError) as err:
        print(f"mi-toolkit othello: {err}", file=sys.stderr)
        return 2
    a = run.analysis
    best, best_logistic = (max(a["probes"][kind], key=lambda row: row["test"]) for kind in ("mine", "mine_logistic"))
    print(json.dumps({"out": str(run.path), **{k: a[k] for k in ("legal_top1", "n_params", "steps", "games_seen",
                                                                  "seconds")},
                      **{name: {k: row.get(k) for k in ("hook_name", "test", "test_low", "test_high", "test_occupied",
                                                 "test_occupied_low", "test_occupied_high", "control",
                                                 "random_model")}
                         for name, row in (("probe_mine", best), ("probe_mine_logistic", best_logistic))},
                      "edits": {k: a["edits"][k] for k in ("none", "probe", "random", "reduction")}}, indent=2))
    if a["legal_top1"] < 0.99:
        print(f"mi-toolkit othello: legal top-1 {a['legal_top1']:.4f} is below 0.99", file=sys.stderr)
        return 1
    return 0


def _packaged(args: argparse.Namespace) -> int:
    from mi_toolkit.core.io import CheckpointError
    from mi_toolkit.experiments.packaged import PACKAGED, build_packaged

    if args.name is None:
        if args.out is not None:
            print("mi-toolkit packaged: name the run to write into --out (mi-toolkit packaged lists them)",
                  file=sys.stderr)
            return 2
        for name, packaged in PACKAGED.items():
            print(f"{name:<14} {packaged.command:<40} {packaged.summary}")
        return 0
    if args.out is None:
        print("mi-toolkit packaged: --out DIR is required to build a run", file=sys.stderr)
        return 2
    try:
        run = build_packaged(args.name, args.out, progress=not args.quiet)
    except (FileExistsError, CheckpointError) as err:  # an --out that holds another run: nothing was overwritten
        print(f"mi-toolkit packaged: {err}", file=sys.stderr)
        return 2
    grokked = run.analysis.get("grokked")
    summary = {"out": str(run.path), "name": args.name, "command": PACKAGED[args.name].command}
    if "grokked" in run.analysis:  # only the grokking family's runs grok or not
        summary["grokked"] = grokked
    print(json.dumps(summary, indent=2))
    if grokked is False:
        print(f"mi-toolkit packaged: {args.name} did NOT grok this time (analysis.json)", file=sys.stderr)
        return 1
    return 0


def _device_and_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--quiet`` and ``--no-report``, which every experiment with a preset takes."""
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")


def _int_list(text: str) -> list[int]:
    """``"59,97,113"`` or ``"0-4"`` (inclusive) or a mix: ``"0-2,7"``."""
    values = []
    for part in text.split(","):
        start, _, end = part.partition("-")
        values += list(range(int(start), int(end) + 1)) if end else [int(start)]
    return values


def _sweep(args: argparse.Namespace) -> int:
    from mi_toolkit.experiments.sweeps import sweep

    try:
        ps, seeds = _int_list(args.p), _int_list(args.seeds)
        fracs = [float(f) for f in args.frac_train.split(",")]
        for p in ps:
            for frac in fracs:
                _grokking_config(args, p=p, frac_train=frac)  # bad input is refused before any run starts
    except ValueError as err:
        print(f"mi-toolkit sweep: {err}", file=sys.stderr)
        return 2
    try:
        rows = sweep(args.out, ps, seeds, fracs, base=_grokking_config(args), address=args.address,
                     use_ray=False if args.sequential else None, num_cpus=args.cpus, progress=not args.quiet)
    except FileExistsError as err:
        print(f"mi-toolkit sweep: {err}", file=sys.stderr)
        return 2
    grokked = sum(bool(r.get("grokked")) for r in rows)
    passed = sum(bool(r.get("passed_checks")) for r in rows)
    print(json.dumps({"out": args.out, "runs": len(rows), "grokked": grokked, "passed_checks": passed,
                      "not_grokked": [r["run"] for r in rows if not r.get("grokked") and not r.get("error")],
                      "errors": {r["run"]: r["error"] for r in rows if r.get("error")}}, indent=2))
    return 0 if grokked == len(rows) else 1


def _training_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", choices=["fast", "paper"], default="fast",
                        help="'fast' (measured on 2 CPU cores, see README) or 'paper' (Nanda et al.'s exact recipe)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None,
                        help="an exact budget of steps (default: train until grokked and every algorithm check passes)")
    budget.add_argument("--max-steps", type=int, default=None,
                        help="the cap when training until done (default: the recipe's, 5000 for 'fast')")
    parser.add_argument("--filter", choices=["none", "ema", "ma"], default=None,
                        help="override the recipe's Grokfast gradient filter")
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="override the recipe's weight decay (default: the recipe's; see README)")
    parser.add_argument("--optimizer", choices=["adamw", "muon"], default=None,
                        help="override the recipe's optimiser (default: the recipe's; for groups below order 50, Muon)")
    parser.add_argument("--muon-lr", type=float, default=None,
                        help="train the weight matrices with Muon at this learning rate (default: the recipe's "
                        "optimiser)")
    parser.add_argument("--embedding-decay-after", type=_decay_factor, default=None, metavar="FACTOR|keep",
                        help="once test accuracy first reaches 99%%, multiply the embeddings' and unembedding's weight "
                             "decay by this (AdamW only; 'keep': no change; default: the experiment's, 0 for grokking)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mi-toolkit", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    runs = (("grokking", "train the modular-addition transformer until it groks; analyse; report", _grokking,
             [("--p", int, 113, "modulus, odd (default 113)")], (0.3, "0.3")),
            ("groups", "train a transformer to compose elements of a finite group; find its irreps", _groups,
             [("--group", str, "S5", "S5, A4, D7, C113, products such as C5xC5 (default S5)")],
             (None, "0.6; 0.9 below order 50; 0.95 up to order 10")),
            ("miiii", "one model, every task (x0 + p x1) mod q for the primes q < p (Syrkis)", _miiii,
             [("--p", int, 37, "the base; the tasks are the primes below it (default 37)")], (0.8, "0.8")))
    for name, help_text, func, own, (frac, frac_text) in runs:
        r = sub.add_parser(name, help=help_text)
        r.add_argument("--out", required=True, help="run directory (new, empty, or an interrupted run to resume)")
        for flag, kind, default, flag_help in own:
            r.add_argument(flag, type=kind, default=default, help=flag_help)
        r.add_argument("--seed", type=int, default=0, help="fixes the split and the initialisation (default 0)")
        r.add_argument("--frac-train", type=float, default=frac,
                       help=f"training fraction of the pairs (default {frac_text})")
        _training_arguments(r)
        r.add_argument("--no-report", action="store_true", help="skip report.html")
        r.set_defaults(func=func)

    f = sub.add_parser("facts", help="learn a knowledge base; trace where facts are recalled; edit them (ROME)")
    f.add_argument("--out", required=True, help="run directory (new, empty, or an interrupted run to resume)")
    f.add_argument("--preset", choices=["small", "tiny"], default="small",
                   help="'small': 4 layers, d_model 128, 2,400 facts (default); 'tiny': 80 facts, seconds")
    f.add_argument("--seed", type=int, default=0, help="seeds the model and the batches (default 0)")
    f.add_argument("--target-recall", type=float, default=0.99, help="stop training at this recall (default 0.99)")
    f.add_argument("--n-traced", type=int, default=32, help="facts traced for the heatmaps (default 32)")
    f.add_argument("--n-edits", type=int, default=20, help="ROME edits scored at the traced layer (default 20)")
    _device_and_output_arguments(f)
    f.set_defaults(func=_facts)

    lm = sub.add_parser("lm", help="train a tokenizer and a one-layer language model on the standard library")
    lm.add_argument("--out", required=True, help="run directory (new or empty)")
    lm.add_argument("--preset", choices=["small", "tiny"], default="small",
                    help="'small': vocabulary 4096, d_mlp 512, ~12 minutes on 2 cores (default); 'tiny': seconds")
    lm.add_argument("--root", default=None, help="directory of *.py files (default: the standard library)")
    lm.add_argument("--seed", type=int, default=0, help="seeds the file split, the model and the batches")
    lm.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    _device_and_output_arguments(lm)
    lm.set_defaults(func=_lm)

    o = sub.add_parser("othello", help="train an Othello-GPT on random legal games; probe and edit its board")
    o.add_argument("--out", required=True, help="run directory (new, empty, or an interrupted run to resume)")
    o.add_argument("--preset", choices=["small", "tiny"], default="small",
                   help="'small': 4 layers, d_model 128, ~8 minutes on 2 cores (default; the shipped model); "
                        "'tiny': seconds")
    o.add_argument("--size", type=int, default=6, help="board side, even, 4 to 8 (default 6)")
    o.add_argument("--seed", type=int, default=0, help="seeds the model and the games (default 0)")
    o.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    _device_and_output_arguments(o)
    o.set_defaults(func=_othello)

    from mi_toolkit.experiments.packaged import PACKAGED

    pre = sub.add_parser("packaged", help="list the runs shipped in the package, or write one again (NAME --out DIR)")
    pre.add_argument("name", nargs="?", choices=list(PACKAGED), help="the shipped run to write again; none: list them")
    pre.add_argument("--out", default=None, help="run directory (new, empty, or an interrupted run to resume)")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(func=_packaged)

    s = sub.add_parser("sweep", help="run an experiment over a grid of settings (on Ray where installed)")
    experiments = s.add_subparsers(dest="experiment", required=True)
    sg = experiments.add_parser("grokking", help="universality: grokking over moduli, seeds and training fractions")
    sg.add_argument("--out", required=True, help="sweep directory (an earlier sweep there is continued)")
    sg.add_argument("--p", default="59,97,113", help="moduli, e.g. 59,97,113 (default)")
    sg.add_argument("--seeds", default="0-4", help="seeds, e.g. 0-4 or 0,3 (default 0-4)")
    sg.add_argument("--frac-train", default="0.3", help="training fractions, e.g. 0.3,0.5 (default 0.3)")
    sg.add_argument("--address", default=None,
                    help="join an existing Ray cluster ('auto' or 'ray://HOST:PORT'); default: a local Ray here")
    sg.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    sg.add_argument("--sequential", action="store_true", help="no Ray: one run after another in this process")
    _training_arguments(sg)
    sg.set_defaults(func=_sweep)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
