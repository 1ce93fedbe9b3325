"""Figures of Othello world models: boards (states, per-square probe accuracy, move probabilities), the legal-move
rate by move number, probe accuracy by layer beside its baselines, and probe-edit errors."""

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

__all__ = ["board_heatmaps", "edit_errors", "legal_by_move", "othello_training", "probe_accuracy_by_layer",
           "short_hook_name"]

_STATE_COLOURS = [[0, "#2e7d32"], [0.33, "#2e7d32"], [0.33, "#111111"], [0.67, "#111111"], [0.67, "#f5f5f5"],
                  [1, "#f5f5f5"]]
"""Empty (green), black, white, as a discrete colour scale over 0, 1, 2."""


def _grid(values) -> np.ndarray:
    values = np.asarray(torch.as_tensor(values).detach().float().cpu())
    if values.ndim == 1:
        side = int(round(len(values) ** 0.5))
        if side * side != len(values):
            raise ValueError(f"{len(values)} values do not fill a square board")
        values = values.reshape(side, side)
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"expected a board [size, size] or [size*size], got shape {values.shape}")
    return values


def board_heatmaps(boards: Sequence, titles: Sequence[str], *, kinds: Sequence[str] | None = None,
                   cols: int | None = None, marks: Sequence | None = None, title: str | None = None) -> go.Figure:
    """Boards side by side.

    Args:
        boards: each ``[size, size]`` or ``[size*size]``: a state (0 empty, 1 black, 2 white) or values in [0, 1]
            (probe accuracy per square, move probabilities).
        titles: one per board.
        kinds: per board, ``"state"`` or ``"values"`` (default: ``"state"`` for integer boards).
        cols: boards per row (default all in one row).
        marks: per board, squares (row-major) to outline, e.g. the legal moves or the square just played.
        title: the figure's title.
    """
    grids = [_grid(b) for b in boards]
    if len(titles) != len(grids):
        raise ValueError(f"{len(titles)} titles for {len(grids)} boards")
    kinds = kinds or ["state" if np.allclose(g, np.round(g)) and g.min() >= -1 and g.max() <= 2 else "values"
                      for g in grids]
    cols = cols or len(grids)
    rows = -(-len(grids) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(titles), horizontal_spacing=0.04,
                        vertical_spacing=0.08)
    size = grids[0].shape[0]
    letters = [chr(ord("A") + c) for c in range(size)]
    for i, (grid, kind) in enumerate(zip(grids, kinds)):
        r, c = i // cols + 1, i % cols + 1
        if kind == "state":
            text = np.where(grid == 1, "●", np.where(grid == 2, "○", ""))
            fig.add_trace(go.Heatmap(z=grid, zmin=0, zmax=2, colorscale=_STATE_COLOURS, showscale=False, x=letters,
                                     text=text, hovertemplate="%{x}%{y}: %{z}<extra></extra>", xgap=2, ygap=2),
                          row=r, col=c)
        else:
            text = [[f"{v:.2f}" if v >= 0.005 else "" for v in row] for row in grid.tolist()]
            fig.add_trace(go.Heatmap(z=grid, zmin=0, zmax=1, colorscale="Viridis", showscale=i == len(grids) - 1,
                                     x=letters, text=text, texttemplate="%{text}", textfont=dict(size=11), xgap=2,
                                     ygap=2, hovertemplate="%{x}%{y}: %{z:.3f}<extra></extra>"), row=r, col=c)
        if marks is not None and marks[i] is not None:
            for square in np.asarray(marks[i]).ravel():
                y, x = divmod(int(square), size)
                fig.add_shape(type="rect", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5,
                              line=dict(color="red", width=3), row=r, col=c)
        fig.update_yaxes(autorange="reversed", tickvals=list(range(size)), ticktext=[str(k + 1) for k in range(size)],
                         scaleanchor=f"x{i + 1 if i else ''}", row=r, col=c)
    fig.update_layout(title=title, height=300 * rows + 90, width=300 * cols + 120, plot_bgcolor="white",
                      margin=dict(t=90))
    return fig


def legal_by_move(rates, *, title: str = "Top-1 prediction legal, by move number (held-out games)") -> go.Figure:
    """The share of legal top-1 predictions after each move
    (:func:`~mi_toolkit.analysis.othello.legal_rate_by_move`)."""
    rates = torch.as_tensor(rates).float()
    fig = go.Figure(go.Scatter(x=list(range(1, len(rates) + 1)), y=rates.tolist(), mode="lines+markers",
                               hovertemplate="after move %{x}: %{y:.4f}<extra></extra>"))
    fig.add_hline(y=0.99, line_dash="dot", annotation_text="99%")
    fig.update_layout(title=title, xaxis_title="moves played", yaxis_title="legal top-1", yaxis_range=[
        min(0.9, float(rates.min()) - 0.01), 1.002], height=380)
    return fig


def probe_accuracy_by_layer(tables: dict[str, list[dict]], *, title: str = "Linear probes of the board, held out"
                            ) -> go.Figure:
    """Probe accuracy per hook point for each label kind, with the baselines of the first kind.

    Args:
        tables: label kind -> :meth:`~mi_toolkit.analysis.probes.LayerProbes.table` rows (an ``"test_occupied"``
            field, where present, is drawn too).
    """
    fig = go.Figure()
    dashes = {"control": "dot", "random_model": "dash", "majority": "dashdot"}
    for i, (kind, rows) in enumerate(tables.items()):
        names = [short_hook_name(row["hook_name"]) for row in rows]
        fig.add_trace(go.Scatter(x=names, y=[row["test"] for row in rows], mode="lines+markers",
                                 name=f"{kind}: all squares"))
        if "test_occupied" in rows[0]:
            fig.add_trace(go.Scatter(x=names, y=[row["test_occupied"] for row in rows], mode="lines+markers",
                                     name=f"{kind}: occupied squares"))
        if i == 0:
            for baseline, dash in dashes.items():
                values = [row[baseline] for row in rows]
                if not all(np.isnan(values)):
                    fig.add_trace(go.Scatter(x=names, y=values, mode="lines", line=dict(dash=dash, color="grey"),
                                             name=f"{kind}: {baseline.replace('_', ' ')}"))
    fig.update_layout(title=title, xaxis_title="hook point", yaxis_title="accuracy", yaxis_range=[0, 1.01],
                      height=420)
    return fig


def short_hook_name(hook_name: str) -> str:
    """``blocks.3.hook_resid_post`` -> ``L3``; the embedding's ``blocks.0.hook_resid_pre`` -> ``embed``; others as
    they are."""
    if hook_name == "blocks.0.hook_resid_pre":
        return "embed"
    parts = hook_name.split(".")
    return f"L{parts[1]}" if parts[0] == "blocks" and hook_name.endswith("resid_post") else hook_name


def edit_errors(errors: dict, *, title: str = "Errors against the edited board's legal moves") -> go.Figure:
    """Mean false positives + false negatives per case: no edit, the probe edit, an equal-norm random edit (and the
    model's error on the unedited board, for scale). ``errors``:
    :class:`~mi_toolkit.interventions.probe_edits.FlipErrors` or its dict."""
    get = errors.get if isinstance(errors, dict) else lambda k: getattr(errors, k)
    labels = ["no edit", "probe edit", "random edit (equal norm)", "no edit, unedited board"]
    values = [get("none"), get("probe"), get("random"), get("unedited")]
    fig = go.Figure(go.Bar(x=labels, y=values, text=[f"{v:.2f}" for v in values], textposition="outside",
                           marker_color=["#9e9e9e", "#1e88e5", "#e53935", "#bdbdbd"]))
    fig.update_layout(title=title, yaxis_title="mean errors per case", height=380)
    return fig


def othello_training(history: list[dict], *, title: str = "Training (held-out games)") -> go.Figure:
    """Held-out loss and legal top-1 rate against the step."""
    steps = [r["step"] for r in history if "legal_top1" in r]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=steps, y=[r["legal_top1"] for r in history if "legal_top1" in r], name="legal top-1"),
                  secondary_y=False)
    fig.add_trace(go.Scatter(x=steps, y=[r["loss"] for r in history if "legal_top1" in r], name="held-out loss",
                             line=dict(dash="dash")), secondary_y=True)
    fig.update_yaxes(title_text="legal top-1", secondary_y=False)
    fig.update_yaxes(title_text="loss (nats)", secondary_y=True)
    fig.update_layout(title=title, xaxis_title="step", height=380)
    return fig
