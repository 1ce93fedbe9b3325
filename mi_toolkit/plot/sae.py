"""Figures for sparse autoencoders: the feature-density histogram and a feature's top activations."""

import plotly.graph_objects as go
import torch

from mi_toolkit.analysis.sae import DensityHistogram

__all__ = ["feature_density", "feature_activations"]


def feature_density(hist: DensityHistogram) -> go.Figure:
    """Histogram of log10 feature density (from :func:`mi_toolkit.analysis.sae.density_histogram`)."""
    edges = hist.log10_edges
    centres = ((edges[1:] + edges[:-1]) / 2).tolist()
    fig = go.Figure(go.Bar(x=centres, y=hist.counts.tolist(), width=(edges[1] - edges[0]).item()))
    fig.update_layout(title=f"Feature density ({hist.n_dead} dead features not shown)",
                      xaxis_title="log10(fraction of inputs on which the feature fires)", yaxis_title="features")
    return fig


def feature_activations(values: torch.Tensor, labels: list[str] | None = None, *, title: str = "") -> go.Figure:
    """A bar per input of one feature's activation, e.g. its max-activating examples.

    Args:
        values: ``[n]`` activations.
        labels: one label per bar (e.g. the input's tokens).
        title: figure title.
    """
    labels = labels if labels is not None else [str(i) for i in range(len(values))]
    fig = go.Figure(go.Bar(x=values.detach().cpu().tolist(), y=labels, orientation="h"))
    fig.update_layout(title=title, xaxis_title="feature activation", yaxis_autorange="reversed")
    return fig
