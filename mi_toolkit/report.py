"""Self-contained HTML reports (plotly inlined once, no network needed to open them)."""

import html
import json
from pathlib import Path

from mi_toolkit import plot
from mi_toolkit.analysis.fourier import (
    embedding_fourier_norms,
    logit_decomposition,
    neuron_activations,
    neuron_clusters,
)

__all__ = ["write_html", "write_grokking_report"]


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
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}pre{background:#f4f4f4;padding:1em}</style>"
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
    summary = {k: analysis[k] for k in ("grokked_at_step", "key_frequencies", "fraction_neurons_single_frequency",
                                        "logit_fraction_explained", "restricted_loss", "excluded_loss", "phases",
                                        "final")}
    sections = [
        ("Summary", f"<pre>{html.escape(json.dumps(summary, indent=2))}</pre>"),
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
