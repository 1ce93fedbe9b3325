"""Plots of a universality sweep: which frequencies each seed learns, and how long grokking takes."""

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["sweep_key_frequencies", "sweep_steps_to_grok"]


def sweep_key_frequencies(rows: list[dict]) -> go.Figure:
    """One panel per modulus: the key frequencies of every run (x: seed, marker: training fraction); a run that did
    not grok is drawn as a cross at frequency 0."""
    ps = sorted({r["p"] for r in rows})
    fig = make_subplots(rows=1, cols=len(ps), subplot_titles=[f"p = {p}" for p in ps], shared_yaxes=False)
    fracs = sorted({r["frac_train"] for r in rows})
    symbols = ["circle", "square", "diamond", "triangle-up", "star"]
    for col, p in enumerate(ps, start=1):
        for i, frac in enumerate(fracs):
            sel = [r for r in rows if r["p"] == p and r["frac_train"] == frac]
            xs, ys, xs_bad = [], [], []
            for r in sel:
                if r.get("grokked"):
                    xs += [r["seed"]] * len(r.get("key_frequencies") or [])
                    ys += r.get("key_frequencies") or []
                else:
                    xs_bad.append(r["seed"])
            fig.add_scatter(x=xs, y=ys, mode="markers", marker_symbol=symbols[i % len(symbols)], marker_size=9,
                            name=f"frac {frac:g}", legendgroup=f"{frac}", showlegend=col == 1, row=1, col=col)
            if xs_bad:
                fig.add_scatter(x=xs_bad, y=[0] * len(xs_bad), mode="markers", marker_symbol="x", marker_size=12,
                                marker_color="red", name="not grokked", showlegend=False, row=1, col=col)
        fig.update_yaxes(range=[-1, (p - 1) // 2 + 1], row=1, col=col)
    fig.update_xaxes(title_text="seed", dtick=1)
    fig.update_yaxes(title_text="key frequency k", row=1, col=1)
    fig.update_layout(title="Key frequencies across seeds (universality: the same algorithm, different frequencies)",
                      height=420)
    return fig


def sweep_steps_to_grok(rows: list[dict]) -> go.Figure:
    """Histogram of the step at which test accuracy first reached 99%, per training fraction."""
    fig = go.Figure()
    for frac in sorted({r["frac_train"] for r in rows}):
        steps = [r["grokked_at_step"] for r in rows if r["frac_train"] == frac and r.get("grokked_at_step") is not None]
        fig.add_histogram(x=steps, name=f"frac {frac:g}", opacity=0.7, nbinsx=20)
    fig.update_layout(barmode="overlay", title="Steps to grok (test accuracy >= 99%)", xaxis_title="step",
                      yaxis_title="runs", height=380)
    return fig
