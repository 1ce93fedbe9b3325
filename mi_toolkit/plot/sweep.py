"""Plots of a universality sweep: which frequencies each seed learns, and how long grokking takes."""

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["sweep_key_frequencies", "sweep_steps_to_grok"]


def sweep_key_frequencies(rows: list[dict]) -> go.Figure:
    """One panel per modulus: the key frequencies of every run (x: seed; colour and marker: training fraction, side
    by side); a run that did not grok is a red cross at frequency 0; runs that failed with an error are left out."""
    rows = [r for r in rows if not r.get("error")]
    ps = sorted({r["p"] for r in rows})
    fig = make_subplots(rows=1, cols=len(ps), subplot_titles=[f"p = {p}" for p in ps])
    fracs = sorted({r["frac_train"] for r in rows})
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
    symbols = ["circle", "square", "diamond", "triangle-up", "star"]
    shown = set()
    for col, p in enumerate(ps, start=1):
        for i, frac in enumerate(fracs):
            offset = (i - (len(fracs) - 1) / 2) * 0.15  # fractions side by side at each seed
            sel = [r for r in rows if r["p"] == p and r["frac_train"] == frac]
            good = [r for r in sel if r.get("grokked")]
            xs = [r["seed"] + offset for r in good for _ in r.get("key_frequencies") or []]
            ys = [k for r in good for k in r.get("key_frequencies") or []]
            fig.add_scatter(x=xs, y=ys, mode="markers", name=f"frac {frac:g}", legendgroup=f"frac {frac:g}",
                            marker=dict(symbol=symbols[i % len(symbols)], size=9, color=colours[i % len(colours)]),
                            showlegend=bool(xs) and f"frac {frac:g}" not in shown, row=1, col=col)
            if xs:  # plotly drops legend entries of empty traces
                shown.add(f"frac {frac:g}")
            bad = [r["seed"] + offset for r in sel if not r.get("grokked")]
            if bad:
                fig.add_scatter(x=bad, y=[0] * len(bad), mode="markers", name="not grokked", legendgroup="bad",
                                marker=dict(symbol="x", size=12, color="red"), showlegend="bad" not in shown,
                                row=1, col=col)
                shown.add("bad")
        fig.update_yaxes(range=[-1, (p - 1) // 2 + 1], row=1, col=col)
    fig.update_xaxes(title_text="seed", dtick=1)
    fig.update_yaxes(title_text="key frequency k", row=1, col=1)
    fig.update_layout(title="Key frequencies across seeds (universality: the same algorithm, different frequencies)",
                      height=420)
    return fig


def sweep_steps_to_grok(rows: list[dict]) -> go.Figure:
    """Histogram of the step at which test accuracy first reached 99%, per training fraction (grokked runs)."""
    rows = [r for r in rows if r.get("grokked")]
    fig = go.Figure()
    for frac in sorted({r["frac_train"] for r in rows}):
        steps = [r["grokked_at_step"] for r in rows if r["frac_train"] == frac and r.get("grokked_at_step") is not None]
        fig.add_histogram(x=steps, name=f"frac {frac:g}", opacity=0.7, nbinsx=20)
    fig.update_layout(barmode="overlay", title="Steps to grok (test accuracy >= 99%)", xaxis_title="step",
                      yaxis_title="runs", height=380)
    return fig
