"""The universality grid as Markdown: one row per (p, frac_train), then every run, from a sweep's summary.jsonl.

    mi-toolkit sweep grokking --p 53,59,67,79,89,97,113,127 --seeds 0-4 --frac-train 0.3,0.6 --out DIR
    python benchmarks/universality.py DIR

The README's "Universality grid" tables are this script's output. Every row of the summary is reported: runs that
did not grok, failed a check or raised an error count against their configuration.
"""

import argparse
import statistics
from pathlib import Path

from mi_toolkit.core.io import read_jsonl

CHECK = "single-frequency neurons"


def _median_max(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):g}, {max(values):g}" if values else "-"


def _range(values: list) -> str:
    values = [v for v in values if v is not None]
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def grid_table(rows: list[dict]) -> str:
    lines = ["| p | frac | grokked | grokked, all checks passed | steps to grok (median, max) | stopped at (median, max) "
             "| key freqs (per run) | single-freq. neurons (min-max) | wall s (median, max) |",
             "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["p"], r["frac_train"]), []).append(r)
    for (p, frac), runs in sorted(groups.items()):
        checks = [r["checks"].get(CHECK, {}).get("value") for r in runs if r.get("checks")]
        lines.append(
            f"| {p} | {frac:g} | {sum(r['grokked'] for r in runs)}/{len(runs)} "
            f"| {sum(r['grokked'] and r['passed_checks'] for r in runs)}/{len(runs)} "
            f"| {_median_max([r['grokked_at_step'] for r in runs])} | {_median_max([r['stopped_at_step'] for r in runs])} "
            f"| {', '.join(str(len(r['key_frequencies'] or [])) for r in runs)} | {_range(checks)} "
            f"| {_median_max([r['seconds'] for r in runs])} |")
    return "\n".join(lines)


def every_run(rows: list[dict]) -> str:
    names = list(next((r["checks"] for r in rows if r.get("checks")), {}))
    headers = ["n key freqs" if n == "key frequencies" else n for n in names]
    lines = ["| run | grokked | steps to grok | checks passed at | stopped | key frequencies | "
             + " | ".join(headers) + " | all checks | s |",
             "|" + "---|" * (8 + len(names))]
    for r in sorted(rows, key=lambda r: (r["p"], r["frac_train"], r["seed"])):
        values = [r["checks"][n]["value"] if n in (r.get("checks") or {}) else None for n in names]
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in values]
        lines.append(f"| {r['run']} | {r['grokked']} | {r['grokked_at_step']} | {r.get('checks_passed_at_step')} "
                     f"| {r['stopped_at_step']} | {r['key_frequencies']} | " + " | ".join(cells)
                     + f" | {r['passed_checks']} | {r['seconds']} |" + (f" error: {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args()
    rows = read_jsonl(args.sweep_dir / "summary.jsonl")
    grokked = sum(r["grokked"] for r in rows)
    passed = sum(r["grokked"] and r["passed_checks"] for r in rows)
    print(f"{len(rows)} runs: {grokked} grokked, {passed} grokked and passed every algorithm check\n")
    print(grid_table(rows), "\n\n<details><summary>Every run</summary>\n")
    print(every_run(rows), "\n\n</details>")


if __name__ == "__main__":
    main()
