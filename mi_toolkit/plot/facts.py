"""Figures for fact recall and editing: causal-tracing heatmaps, knockout curves, edit scores, training curves."""

from collections.abc import Sequence

import plotly.graph_objects as go
import torch

__all__ = ["edit_scores", "facts_training", "knockout_curves", "trace_heatmap"]

_TITLES = {"resid": "residual stream", "mlp": "MLP output", "attn": "attention output"}


def trace_heatmap(effect, words: Sequence[str] | None = None, *, kind: str = "mlp", title: str | None = None
                  ) -> go.Figure:
    """Indirect effect ``[layer, pos]`` (a :class:`~mi_toolkit.analysis.tracing.Trace`'s ``indirect_effect``, or a
    mean of several) as a heatmap: rows are layers, columns the prompt's tokens.

    Args:
        effect: the indirect effects, or a ``Trace``.
        words: the prompt's tokens as text (column labels).
        kind: what was restored (for the title).
        title: figure title.
    """
    if hasattr(effect, "indirect_effect"):
        kind, effect = effect.kind, effect.indirect_effect
    values = torch.as_tensor(effect).detach().float().cpu()
    if values.ndim != 2:
        raise ValueError(f"expected [layer, pos] effects, got shape {tuple(values.shape)}")
    columns = list(range(values.shape[1]))
    labels = [f"{i}: {w}" for i, w in enumerate(words)] if words is not None else [str(c) for c in columns]
    if len(labels) != len(columns):
        raise ValueError(f"{len(labels)} words for {len(columns)} positions")
    fig = go.Figure(go.Heatmap(z=values.T.numpy(), x=list(range(values.shape[0])), y=columns, colorscale="Purples",
                               hovertemplate="layer %{x}, position %{y}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title or f"Indirect effect of restoring the {_TITLES.get(kind, kind)}",
                      xaxis=dict(title="layer", dtick=1), yaxis=dict(tickmode="array", tickvals=columns, ticktext=labels,
                                                      autorange="reversed"))
    return fig


def knockout_curves(curves: dict, *, title: str = "Attention knockout: the last position cut off from ...") -> go.Figure:
    """Relative change of ``P(answer)`` per layer for each group of blocked positions (``{name: [layer values]}``,
    or ``{name: Knockout}``)."""
    fig = go.Figure()
    for name, values in curves.items():
        values = values.relative_change if hasattr(values, "relative_change") else values
        values = [100 * float(v) for v in values]
        fig.add_trace(go.Scatter(x=list(range(len(values))), y=values, mode="lines+markers", name=name))
    fig.update_layout(title=title, xaxis_title="layer (centre of the window)", yaxis_title="change of P(answer), %")
    return fig


def edit_scores(by_layer: dict, *, title: str = "Edit scores by edited layer",
                keys: Sequence[str] = ("efficacy", "paraphrase", "neighbourhood", "score")) -> go.Figure:
    """Grouped bars of edit scores (``{layer or label: summarise_scores(...) dict}``)."""
    labels = [str(k) for k in by_layer]
    fig = go.Figure([go.Bar(name=key, x=labels, y=[s[key] for s in by_layer.values()]) for key in keys])
    fig.update_layout(barmode="group", title=title, xaxis_title="edited layer", yaxis_title="share",
                      yaxis_range=[0, 1.05])
    return fig


def facts_training(history: list[dict]) -> go.Figure:
    """Recall on the training templates and the paraphrases, and the loss, over training."""
    steps = [r["step"] for r in history]
    fig = go.Figure()
    for key in ("recall", "paraphrase_recall"):
        fig.add_trace(go.Scatter(x=steps, y=[r.get(key) for r in history], name=key))
    fig.add_trace(go.Scatter(x=steps, y=[r.get("eval_loss") for r in history], name="eval loss", yaxis="y2"))
    fig.update_layout(title="Fact recall over training", xaxis_title="step", yaxis_title="accuracy",
                      yaxis2=dict(title="loss", overlaying="y", side="right", type="log"))
    return fig
