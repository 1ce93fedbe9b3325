"""Self-contained HTML reports (plotly inlined once, no network needed to open them)."""

import html
from pathlib import Path

import numpy as np

from mi_toolkit import plot
from mi_toolkit.analysis.fourier import (
    embedding_fourier_norms,
    logit_decomposition,
    neuron_activations,
    neuron_clusters,
)
from mi_toolkit.analysis.othello import move_probabilities
from mi_toolkit.tasks.irreps import character_table
from mi_toolkit.tasks.othello import replay

__all__ = ["grokking_summary_html", "table_html", "write_grokking_report", "write_groups_report", "write_html", "write_miiii_report", "write_othello_report",
           "write_sweep_report"]

_STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto}pre{background:#f4f4f4;padding:1em}"
    "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}"
    "th{background:#f0f0f0}.pass{color:#1a7f37;font-weight:bold}.fail{color:#cf222e;font-weight:bold}"
    ".banner{padding:1em;margin:1em 0;border-radius:6px;font-size:1.1em}"
    ".banner.bad{background:#ffebe9;border:2px solid #cf222e}.banner.good{background:#dafbe1;border:2px solid #1a7f37}"
)


def table_html(header: list[str], rows: list[list], classes: list[list[str]] | None = None) -> str:
    """An HTML table; cells are escaped, ``classes[i][j]`` styles a cell (e.g. ``"pass"``, ``"fail"``)."""
    def cell(value, cls=""):
        return f"<td class='{cls}'>{html.escape(str(value))}</td>"

    body = "".join(
        "<tr>" + "".join(cell(v, classes[i][j] if classes else "") for j, v in enumerate(row)) + "</tr>"
        for i, row in enumerate(rows)
    )
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" + body + "</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _banner(analysis: dict, found: str) -> str:
    final = analysis["final"]
    if analysis.get("grokked"):
        return (f"<div class='banner good'>Grokked: test accuracy reached 99% at step {analysis['grokked_at_step']}"
                f"; final test accuracy {final['test_acc']:.4f} at step {final['step']}. {found}.</div>")
    return (f"<div class='banner bad'><b>NOT GROKKED</b>: after {final['step']} steps ("
            f"{html.escape(str(analysis.get('stop_reason', 'end of training')))}) the test accuracy is "
            f"{final['test_acc']:.4f}"
            + ("" if analysis.get("restricted_loss") is None else
               f" and the restricted loss {_fmt(analysis['restricted_loss'])}")
            + ". This model memorised without (fully) learning the algorithm; its analysis below is not a result.</div>")


def _checks_html(analysis: dict, paper: str) -> str:
    checks = analysis.get("checks", {})
    rows = [[name, _fmt(c["value"]), c["threshold"], c["paper"], "pass" if c["passed"] else "FAIL"]
            for name, c in checks.items()]
    classes = [["", "", "", "", "pass" if c["passed"] else "fail"] for c in checks.values()]
    return "<h3>Algorithm checks</h3>" + table_html(["check", "value", "threshold", paper, "result"], rows, classes)


def _facts(analysis: dict) -> list[list[str]]:
    final = analysis["final"]
    meaning = ("test acc >= 99% and restricted loss < 0.1" if analysis.get("restricted_loss") is not None
               else "every task's test acc >= 99%")
    return [[f"grokked ({meaning})", _fmt(bool(analysis.get("grokked")))],
            ["test accuracy first >= 99% at step", _fmt(analysis["grokked_at_step"])],
            ["every algorithm check passed at step (the margin then trained)", _fmt(analysis.get("checks_passed_at_step"))],
            ["stopped at step (reason)", f"{_fmt(analysis.get('stopped_at_step', final['step']))} "
                                         f"({analysis.get('stop_reason', '-')})"],
            ["phases (memorisation end, cleanup start, cleanup end)",
             ", ".join(_fmt(v) for v in analysis["phases"].values())],
            ["final train / test loss", f"{_fmt(final['train_loss'])} / {_fmt(final['test_loss'])}"]]


def grokking_summary_html(analysis: dict) -> str:
    """The opening of a grokking report: a banner (grokked or not, where, why it stopped) and the algorithm checks
    with value, threshold, the paper's figure and pass/fail."""
    return (_banner(analysis, f"Key frequencies {analysis['key_frequencies']}") + table_html(["", ""], _facts(analysis))
            + _checks_html(analysis, "Nanda et al. (2023)"))


def write_groups_report(path, model, task, history: list[dict], analysis: dict) -> None:
    """The finite-group run's report: summary and checks, losses, irreps in logits / embeddings / neurons, and
    the character table."""
    key = [r["name"] for r in analysis["key_irreps"]]
    found = "Key irreps " + (", ".join(f"{r['name']} (dim {r['dim']}, {r['logit_share']:.0%} of the logits)"
                                       for r in analysis["key_irreps"]) or "none")
    names, classes, chars = character_table(task.group)
    table = table_html(["irrep", "dim", "type", *[f"class {i} ({len(c)})" for i, c in enumerate(classes)]],
                       [[n, r["dim"], r["kind"], *[f"{v:.3g}" if abs(v) > 1e-9 else "0" for v in row.tolist()]]
                        for n, r, row in zip(names, analysis["irreps"], chars)])
    sections = [
        ("Summary", _banner(analysis, found) + table_html(["", ""], _facts(analysis))
         + _checks_html(analysis, "Chughtai et al. (2023)")),
        ("Loss", plot.loss_curves(history, analysis["phases"])),
        ("Irreps", plot.irrep_overview(analysis["irreps"], key)),
        ("Neurons", plot.neuron_irreps(analysis["neuron_irrep_sizes"], analysis["fraction_neurons_single_irrep"])),
        (f"Character table of {task.group.name} (real characters; class sizes in brackets)", table),
    ]
    write_html(path, f"Grokking composition in {task.group.name} (order {task.group.order})", sections)


def write_miiii_report(path, model, task, history: list[dict], analysis: dict) -> None:
    """The multi-task run's report: summary, losses, every task's accuracy, the omega spike, key frequencies."""
    grokked = analysis["task_grokked_at_step"]
    rows = [[q, _fmt(grokked[str(q)]), f"{analysis['task_test_acc'][str(q)]:.4f}",
             analysis["task_key_frequencies"][str(q)], f"{analysis['task_logit_fraction_explained'][str(q)]:.3f}"]
            for q in analysis["primes"]]
    tasks = table_html(["q", "test acc >= 99% at step", "final test acc", "key frequencies (2 pi k n / q)",
                        "logit variance they explain"], rows)
    found = f"Tasks grokked in the order q = {analysis['grok_order']}"
    sections = [
        ("Summary", _banner(analysis, found) + table_html(["", ""], _facts(analysis)) + tasks),
        ("Loss", plot.loss_curves(history, analysis["phases"])),
        ("Every task", plot.task_accuracies(history, analysis["primes"])),
        ("Omega spike", plot.omega_curve(history)),
    ]
    write_html(path, f"miiii: (x0 + {task.p} x1) mod q for every prime q < {task.p}", sections)


def write_html(path: str | Path, title: str, sections: list[tuple[str, object]]) -> None:
    """Write ``sections`` (heading, plotly figure or HTML string) to one HTML file with plotly.js inlined once."""
    parts, first = [], True
    for heading, body in sections:
        if hasattr(body, "to_html"):
            body = body.to_html(full_html=False, include_plotlyjs="inline" if first else False)
            first = False
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{body}")
    Path(path).write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>\n" + "\n".join(parts) + "</body></html>"
    )


def write_grokking_report(path, model, task, history: list[dict], analysis: dict) -> None:
    """The grokking run's report: losses, progress measures with phases, and the Fourier algorithm."""
    freqs = analysis["key_frequencies"]
    clusters = neuron_clusters(model, task)
    acts = neuron_activations(model, task.tokens).reshape(task.p, task.p, -1)
    # One example neuron per key frequency: the one that frequency explains best.
    examples = []
    for k in freqs:
        scores = clusters.explained * (clusters.dominant == k)
        examples.append((int(scores.argmax()), f"neuron {int(scores.argmax())} (freq {k})"))
    sections = [
        ("Summary", grokking_summary_html(analysis)),
        ("Loss", plot.loss_curves(history, analysis["phases"])),
        ("Progress measures", plot.progress_measures(history, analysis["phases"])),
        ("Embedding in the Fourier basis", plot.embedding_fourier_norms(embedding_fourier_norms(model, task.p),
                                                                       task.p, freqs)),
        ("Neuron frequency clusters", plot.neuron_clusters(clusters)),
    ]
    if examples:
        sections.append(("Neuron activations", plot.neuron_heatmaps(acts, *zip(*examples))))
    sections.append(("Logits explained", plot.logit_fraction_explained(logit_decomposition(model, task, freqs))))
    write_html(path, f"Grokking (a {task.op} b) mod {task.p}", sections)


def write_sweep_report(path, rows: list[dict]) -> None:
    """A sweep's report: how many runs grokked and passed the checks, key frequencies across seeds for each p,
    the steps-to-grok distribution, and every run in a table."""
    ok = [r for r in rows if r.get("grokked")]
    passed = [r for r in rows if r.get("passed_checks")]
    steps = sorted(r["grokked_at_step"] for r in ok if r.get("grokked_at_step") is not None)
    median = steps[len(steps) // 2] if steps else None
    cls = "good" if rows and len(passed) == len(rows) else "bad"
    banner = (f"<div class='banner {cls}'>{len(ok)} of {len(rows)} runs grokked; {len(passed)} passed every "
              f"algorithm check. Steps to grok: median {_fmt(median)}, max {_fmt(steps[-1] if steps else None)}."
              "</div>")
    check_names = list(next((r["checks"] for r in rows if r.get("checks")), {}))
    header = ["run", "grokked", "at step", "stopped", "key frequencies", *check_names, "seconds", "error"]
    table, classes = [], []
    for r in rows:
        checks = r.get("checks") or {}
        table.append([r["run"], r.get("grokked"), _fmt(r.get("grokked_at_step")), _fmt(r.get("stopped_at_step")),
                      r.get("key_frequencies"), *[_fmt(checks[c]["value"]) if c in checks else "-" for c in check_names],
                      _fmt(r.get("seconds")), r.get("error") or ""])
        classes.append(["", "pass" if r.get("grokked") else "fail", "", "", "",
                        *["pass" if checks.get(c, {}).get("passed") else "fail" for c in check_names], "", ""])
    sections = [("Summary", banner + table_html(header, table, classes))]
    if ok:
        sections += [("Key frequencies", plot.sweep_key_frequencies(rows)),
                     ("Steps to grok", plot.sweep_steps_to_grok(rows))]
    write_html(path, f"Grokking sweep: {len(rows)} runs", sections)


def _with_interval(row: dict, key: str = "test") -> str:
    """``row[key]`` with its 95% interval over held-out games where the analysis has one (older runs do not)."""
    low, high = row.get(f"{key}_low"), row.get(f"{key}_high")
    return f"{row[key]:.4f}" + ("" if low is None else f" [95% interval {low:.4f}-{high:.4f}]")


def write_othello_report(path, model, task, history: list[dict], analysis: dict, target: float = 0.99) -> None:
    """The Othello run's report: the legal-move rate (a banner against ``target``), training, the rate by move
    number, probes by layer with baselines and per square, an example game with the model's move probabilities, and
    the probe-edit errors."""
    a = analysis
    task_layers = model.cfg.n_layers
    good = a["legal_top1"] >= target
    banner = (f"<div class='banner {'good' if good else 'bad'}'>{'' if good else '<b>BELOW TARGET</b>: '}top-1 "
              f"prediction legal in {100 * a['legal_top1']:.3f}% of held-out positions (target {100 * target:g}%)"
              "</div>")
    mine, colour = a["probes"]["mine"], a["probes"]["colour"]
    best = max(mine, key=lambda row: row["test"])
    best_colour = max(colour, key=lambda row: row["test"])
    logistic = a["probes"]["mine_logistic"]
    best_logistic = max(logistic, key=lambda row: row["test"])
    e = a["edits"]
    rows = [["legal top-1 (held-out games)", f"{a['legal_top1']:.5f}"], ["held-out loss", f"{a['heldout_loss']:.4f}"],
            ["parameters", f"{a['n_params']:,}"], ["steps / games seen", f"{a['steps']:,} / {a['games_seen']:,}"],
            ["seconds (training, analysis)", f"{a['seconds']['train']}, {a['seconds']['analysis']}"],
            ["training precision", ", ".join(f"{k.replace('_', '-')} {v}" for k, v in a.get("precision", {}).items())
                                   or "not recorded (an earlier run)"],
            ["best mine/theirs/empty probe", f"{best['hook_name']}: {_with_interval(best)} (occupied squares "
                                             f"{_with_interval(best, 'test_occupied')}; control {_fmt(best['control'])}"
                                             f", random model {_fmt(best['random_model'])}, majority "
                                             f"{_fmt(best['majority'])})"],
            ["best mine/theirs/empty probe, logistic (AdamW)",
             f"{best_logistic['hook_name']}: {_with_interval(best_logistic)} (occupied squares "
             f"{_with_interval(best_logistic, 'test_occupied')}; control {_fmt(best_logistic['control'])}, random "
             f"model {_fmt(best_logistic['random_model'])})"],
            ["best black/white/empty probe", f"{best_colour['hook_name']}: {_with_interval(best_colour)} (occupied "
                                             f"{_with_interval(best_colour, 'test_occupied')})"],
            ["probe edits: errors per case (none / probe / random)",
             f"{e['none']:.3f} / {e['probe']:.3f} / {e['random']:.3f} ({e['reduction']:.1f}x fewer)"]]
    game = a["example_game"]
    record = replay([game], task.size)
    probs = move_probabilities(model, task, game)
    length = sum(1 for square in game if square >= 0)
    shown = sorted({int(t) for t in np.linspace(min(4, length - 2), length - 2, 3).round()})  # moves with a next one
    boards = [record.boards[0, t] for t in shown] + [probs[t] for t in shown]
    titles = [f"after move {t + 1}" for t in shown] + [f"P(move {t + 2})" for t in shown]
    marks = [[game[t]] for t in shown] + [np.flatnonzero(record.legal[0, t]) for t in shown]
    sections = [
        ("Summary", banner + table_html(["", "value"], rows)),
        ("Training", plot.othello_training(history)),
        ("Legal top-1 by move number", plot.legal_by_move(a["legal_by_move"])),
        ("Probes by layer", plot.probe_accuracy_by_layer(
            {"mine/theirs/empty": mine, "mine/theirs/empty, logistic": logistic, "black/white/empty": colour})),
        ("Probe accuracy per square (best layer, held out)",
         plot.board_heatmaps([best["test_per_square"], best_colour["test_per_square"]],
                             [f"mine/theirs/empty ({plot.short_hook_name(best['hook_name'])})",
                              f"black/white/empty ({plot.short_hook_name(best_colour['hook_name'])})"],
                             kinds=["values", "values"])),
        ("An example game (red: the move just played; on the probabilities: the legal moves)",
         plot.board_heatmaps(boards, titles, cols=3, marks=marks)),
        ("Probe edits (Li et al.'s test)", plot.edit_errors(e)),
        ("Probe edits by the first edited layer", table_html(
            ["edited layers", "errors, no edit", "probe edit", "random edit", "fewer errors"],
            [[f"{k} to {task_layers - 1}", f"{v['none']:.3f}", f"{v['probe']:.3f}", f"{v['random']:.3f}",
              f"{v['reduction']:.2f}x"] for k, v in e["by_first_layer"].items()])
         + table_html(["margin (edits from the chosen layer)", "probe edit", "random edit", "fewer errors"],
                      [[k, f"{v['probe']:.3f}", f"{v['random']:.3f}", f"{v['reduction']:.2f}x"]
                       for k, v in e["by_margin"].items()])
         + f"<p>{e['cases']} flips that change the legal moves; a square counts as predicted when its probability "
           f"exceeds {e['threshold']}; the edit sets the probe's score difference to the margin ({e['margin']} "
           f"unless stated). The model's own error on the unedited boards is {e['unedited']:.3f}; an edit is "
           f"not expected to do much better than that.</p>"),
    ]
    write_html(path, f"Othello-GPT on a {task.size}x{task.size} board", sections)

