"""Figures for the grokking replication: losses, progress measures with phases, Fourier views of the model."""

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from mi_toolkit.analysis.fourier import fourier_basis_names

__all__ = [
    "embedding_fourier_norms",
    "logit_fraction_explained",
    "loss_curves",
    "neuron_clusters",
    "neuron_heatmaps",
    "progress_measures",
]

_PHASE_COLOURS = {"memorisation": "rgba(31,119,180,0.10)", "circuit formation": "rgba(255,127,14,0.12)",
                  "cleanup": "rgba(44,160,44,0.12)"}


def _series(history, key):
    rows = [r for r in history if r.get(key) is not None]
    return [r["step"] for r in rows], [r[key] for r in rows]


_LABELLED_WIDTH = 0.08
"""A phase's band is named only when it spans at least this share of the steps: a narrower one (memorisation that
ends at step 50 of 3,000) would print its name over the next one's."""


def _shade_phases(fig, phases, last_step, labels: bool = True, **where):
    if phases is None:
        return
    bounds = [0, phases.get("memorisation_end"), phases.get("cleanup_start"), phases.get("cleanup_end")]
    for (name, colour), start, end in zip(_PHASE_COLOURS.items(), bounds, bounds[1:]):
        if start is None:
            break
        end = end if end is not None else last_step
        wide = end - start >= _LABELLED_WIDTH * max(last_step, 1)
        label = dict(annotation_text=name, annotation_position="top left") if labels and wide else {}
        fig.add_vrect(x0=start, x1=end, fillcolor=colour, line_width=0, **label, **where)


def loss_curves(history: list[dict], phases: dict | None = None) -> go.Figure:
    """Train and test loss (log scale) over training, phases shaded; the learning rate (warmup, and the cool-down
    of a run that trained until done) on the right-hand axis."""
    fig = go.Figure()
    for key in ("train_loss", "test_loss"):
        fig.add_scatter(x=_series(history, key)[0], y=_series(history, key)[1], name=key.replace("_", " "))
    x, y = _series(history, "lr")
    if x:
        fig.add_scatter(x=x, y=y, name="learning rate", yaxis="y2", line=dict(color="grey", dash="dot", width=1))
        fig.update_layout(yaxis2=dict(title="learning rate", overlaying="y", side="right", rangemode="tozero",
                                      tickformat=".1e", showgrid=False))
    _shade_phases(fig, phases, history[-1]["step"])
    fig.update_layout(title="Loss", xaxis_title="step", yaxis_title="cross-entropy", yaxis_type="log",
                      legend=dict(x=1.08))
    return fig


def progress_measures(history: list[dict], phases: dict | None = None) -> go.Figure:
    """Restricted/excluded loss (with train/test loss), Gini of Fourier norms and total squared weights."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Restricted / excluded loss", "Gini of Fourier norms",
                                                        "Sum of squared weights"))
    for key, dash in (("train_loss", "dot"), ("test_loss", "dot"), ("restricted_loss", None),
                      ("excluded_loss", None)):
        x, y = _series(history, key)
        fig.add_scatter(x=x, y=y, name=key.replace("_", " "), line_dash=dash, row=1, col=1)
    for key in ("gini_embed", "gini_unembed"):
        x, y = _series(history, key)
        fig.add_scatter(x=x, y=y, name=key.replace("_", " "), row=1, col=2)
    x, y = _series(history, "weight_norm")
    fig.add_scatter(x=x, y=y, name="sum of squared weights", row=1, col=3)
    for col in (1, 2, 3):
        _shade_phases(fig, phases, history[-1]["step"], labels=False, row=1, col=col)  # named in the loss plot
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_xaxes(title_text="step")
    fig.update_layout(title="Progress measures", height=420)
    return fig


def embedding_fourier_norms(norms: torch.Tensor, p: int, key_freqs=()) -> go.Figure:
    """Bar chart of the norm of each Fourier component of W_E; key frequencies highlighted."""
    names = fourier_basis_names(p)
    key = {f"{fn} {k}" for k in key_freqs for fn in ("cos", "sin")}
    fig = go.Figure(go.Bar(x=names, y=norms.detach().cpu().tolist(),
                           marker_color=["crimson" if n in key else "steelblue" for n in names]))
    fig.update_layout(title="Fourier components of the embedding W_E (key frequencies in red)",
                      xaxis_title="Fourier component", yaxis_title="norm")
    return fig


def neuron_clusters(clusters, threshold: float = 0.85) -> go.Figure:
    """Neurons per dominant frequency, split by whether that frequency explains more than ``threshold``."""
    live = ~clusters.dead
    dom, expl = clusters.dominant[live], clusters.explained[live]
    freqs = sorted(set(dom.tolist()))
    fig = go.Figure()
    for label, mask in ((f"> {threshold:.0%} explained", expl > threshold), (f"<= {threshold:.0%}", expl <= threshold)):
        fig.add_bar(x=[str(k) for k in freqs], y=[int(((dom == k) & mask).sum()) for k in freqs], name=label)
    fig.update_layout(barmode="stack", title=f"MLP neurons by dominant frequency "
                      f"({clusters.fraction_single_frequency(threshold):.0%} single-frequency)",
                      xaxis_title="frequency k", yaxis_title="neurons")
    return fig


def neuron_heatmaps(acts: torch.Tensor, neurons, labels=None) -> go.Figure:
    """Activation of chosen neurons over the (a, b) grid; ``acts`` is ``(p, p, d_mlp)``."""
    neurons = list(neurons)
    fig = make_subplots(rows=1, cols=len(neurons),
                        subplot_titles=labels or [f"neuron {n}" for n in neurons])
    for i, n in enumerate(neurons):
        fig.add_heatmap(z=acts[:, :, n].detach().cpu().numpy(), coloraxis="coloraxis", row=1, col=i + 1)
    fig.update_xaxes(title_text="b")
    fig.update_yaxes(title_text="a", col=1)
    fig.update_layout(title="Neuron activations over (a, b)", coloraxis={"colorscale": "RdBu_r"}, height=330)
    return fig


def logit_fraction_explained(decomposition) -> go.Figure:
    """Share of logit variance explained by each key frequency's ``cos(w_k (a + b - c))`` term."""
    fig = go.Figure(go.Bar(x=[str(k) for k in decomposition.freqs],
                           y=decomposition.fraction_per_freq.tolist()))
    fig.update_layout(title=f"Logits explained by cos(w_k(a+b-c)): {decomposition.fraction_explained:.1%} in all",
                      xaxis_title="key frequency k", yaxis_title="fraction of logit variance")
    return fig
