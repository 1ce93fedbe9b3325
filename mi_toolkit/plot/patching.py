"""Figures for patching: heatmaps of patching results, attribution vs activation, attention of chosen heads."""

from collections.abc import Sequence

import plotly.graph_objects as go
import torch

__all__ = ["attention_patterns", "attribution_vs_activation", "patching_heatmap"]


def patching_heatmap(
    result: torch.Tensor,
    *,
    title: str = "Activation patching",
    layers: Sequence[int] | None = None,
    x_labels: Sequence[str] | None = None,
    x_title: str | None = None,
) -> go.Figure:
    """Heatmap of a patching result, one row per layer (or per layer and head).

    - ``[layers, pos]`` or ``[layers, n_heads]`` (or ``[layers, d_mlp]``): rows are layers.
    - ``[layers, pos, n_heads]``: rows are ``L{layer} H{head}``, columns positions.

    Args:
        result: from :func:`mi_toolkit.analysis.patching.activation_patch` or ``attribution_patch``.
        title: figure title.
        layers: the layer numbers of the rows (the ``layers`` passed to the patching call); default 0, 1, ...
        x_labels: column labels, e.g. the input's tokens as strings.
        x_title: column axis title (default "position" for 3-d results, else "index").

    Returns:
        A plotly figure with a diverging colour scale centred on 0.
    """
    values = result.detach().float().cpu()
    layers = list(range(values.shape[0])) if layers is None else list(layers)
    if values.ndim == 3:
        rows = [f"L{layer} H{head}" for layer in layers for head in range(values.shape[2])]
        values = values.permute(0, 2, 1).reshape(-1, values.shape[1])  # (layer * head, pos)
        x_title = x_title or "position"
    elif values.ndim == 2:
        rows = [f"L{layer}" for layer in layers]
        x_title = x_title or "index"
    else:
        raise ValueError(f"expected a 2-d or 3-d patching result, got shape {tuple(result.shape)}")
    columns = list(x_labels) if x_labels is not None else list(range(values.shape[1]))
    if len(columns) != values.shape[1]:
        raise ValueError(f"{len(columns)} x_labels for {values.shape[1]} columns")
    # Heatmap cells are addressed by position; labels (possibly repeated tokens) go on the ticks.
    fig = go.Figure(go.Heatmap(z=values.numpy(), x=list(range(len(columns))), y=rows, colorscale="RdBu", zmid=0,
                               hovertemplate="%{y}, column %{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_autorange="reversed",
                      xaxis=dict(tickmode="array", tickvals=list(range(len(columns))),
                                 ticktext=[str(c) for c in columns]))
    return fig


def attribution_vs_activation(comparison, *, title: str | None = None) -> go.Figure:
    """Scatter of attribution-patching estimates against activation-patching results, with the line y = x.

    Args:
        comparison: a :class:`mi_toolkit.analysis.patching.PatchingComparison`.
        title: figure title (default: the correlation and maximum error).
    """
    x, y = comparison.activation.numpy(), comparison.attribution.numpy()
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    fig = go.Figure()
    fig.add_scatter(x=x, y=y, mode="markers", name="components", marker=dict(size=6, opacity=0.7))
    fig.add_scatter(x=[low, high], y=[low, high], mode="lines", name="y = x", line=dict(dash="dash", color="grey"))
    title = title or f"Attribution vs activation patching (r = {comparison.correlation:.3f}, " \
                     f"max error {comparison.max_abs_error:.3g})"
    fig.update_layout(title=title, xaxis_title="activation patching", yaxis_title="attribution patching")
    return fig


def attention_patterns(
    patterns: torch.Tensor,
    heads: Sequence[tuple[int, int]],
    tokens: Sequence[str],
):
    """circuitsvis view of the attention of chosen heads on one sequence.

    Args:
        patterns: attention of every layer for one sequence, ``[n_layers, n_heads, query_pos, key_pos]`` (e.g.
            ``torch.stack([cache["pattern", l][0] for l in range(n_layers)])``).
        heads: ``[(layer, head), ...]`` to show.
        tokens: the sequence's tokens as strings.

    Returns:
        circuitsvis's rendered HTML (displays itself in a notebook).
    """
    import circuitsvis as cv  # heavy import, only when drawing

    chosen = torch.stack([patterns[layer, head] for layer, head in heads]).detach().float().cpu()
    names = [f"L{layer}H{head}" for layer, head in heads]
    return cv.attention.attention_heads(attention=chosen, tokens=list(tokens), attention_head_names=names)
