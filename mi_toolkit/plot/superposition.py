"""Figures for toy models of superposition: the geometry of 2-D instances and features represented vs sparsity."""

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from mi_toolkit.analysis.superposition import SuperpositionMetrics
from mi_toolkit.models.toy import ToyModel

__all__ = ["features_vs_sparsity", "superposition_geometry"]


def superposition_geometry(model: ToyModel, instances: list[int] | None = None, *, cols: int = 5) -> go.Figure:
    """Each feature's column ``W_i`` drawn as an arrow in the 2-D hidden space, one panel per instance.

    Args:
        model: a toy model with ``d_hidden == 2``.
        instances: which instances to draw; default all.
        cols: panels per row.
    """
    if model.cfg.d_hidden != 2:
        raise ValueError(f"the geometry plot needs d_hidden == 2, got {model.cfg.d_hidden}")
    W = model.W.detach().float().cpu()  # (instance, 2, n_features)
    instances = list(range(len(W))) if instances is None else list(instances)
    rows = math.ceil(len(instances) / cols)
    titles = [f"1 - S = {model.cfg.feature_probability[i]:.3g}" for i in instances]
    fig = make_subplots(rows=rows, cols=min(cols, len(instances)), subplot_titles=titles)
    limit = max(1.2, W.norm(dim=1).max().item() * 1.1)
    for panel, i in enumerate(instances):
        row, col = panel // cols + 1, panel % cols + 1
        for j in range(model.cfg.n_features):
            x, y = W[i, 0, j].item(), W[i, 1, j].item()
            fig.add_scatter(x=[0, x], y=[0, y], mode="lines+markers", marker_size=[0, 8], showlegend=panel == 0,
                            name=f"feature {j}", legendgroup=str(j), line_color=_colour(j), row=row, col=col)
        fig.update_xaxes(range=[-limit, limit], showticklabels=False, row=row, col=col)
        fig.update_yaxes(range=[-limit, limit], showticklabels=False, scaleanchor=f"x{panel + 1 if panel else ''}",
                         row=row, col=col)
    fig.update_layout(title="Feature directions in the hidden space (columns of W)", height=260 * rows + 80)
    return fig


def features_vs_sparsity(metrics: SuperpositionMetrics) -> go.Figure:
    """Features represented per hidden dimension, and each feature's dimensionality, against 1 / (1 - S)."""
    x = (1 / metrics.feature_probability).tolist()
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Features per dimension", "Dimensions per feature"))
    fig.add_scatter(x=x, y=(metrics.n_represented / metrics.d_hidden).tolist(), mode="lines+markers",
                    name="represented / m", row=1, col=1)
    n_features = metrics.norms.shape[1]
    for j in range(n_features):
        fig.add_scatter(x=x, y=metrics.dimensions_per_feature[:, j].tolist(), mode="markers", name=f"feature {j}",
                        marker_color=_colour(j), row=1, col=2)
    for col in (1, 2):
        fig.update_xaxes(type="log", title="1 / (1 - S)", row=1, col=col)
    fig.update_yaxes(title="features / dimension", row=1, col=1)
    fig.update_yaxes(title="D_i", range=[0, 1.1], row=1, col=2)
    fig.update_layout(title="Superposition grows with sparsity")
    return fig


def _colour(j: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")
    return palette[j % len(palette)]
