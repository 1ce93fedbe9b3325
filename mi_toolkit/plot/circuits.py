"""Figures for circuits: the circuit as a graph, faithfulness curves, edge-score heatmaps, ACDC threshold sweeps."""

import plotly.graph_objects as go
import torch

from mi_toolkit.analysis.circuits.acdc import ACDCSweep

__all__ = ["acdc_sweep", "circuit_graph", "edge_score_heatmap", "faithfulness_curves"]

_LINE_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd"]
_KIND_COLOURS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728", "mlp": "#9467bd", "logits": "#444444"}


def _node_positions(graph) -> dict[str, tuple[float, float]]:
    """x: the sender's layer (input at -1, logits at n_layers); y: heads spread out, the MLP below them."""
    pos = {"input": (-1.0, 0.0), "logits": (float(graph.n_layers), 0.0)}
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            pos[f"a{layer}.h{h}"] = (layer - 0.25, (graph.n_heads - 1) / 2 - h)
        pos[f"m{layer}"] = (layer + 0.25, -(graph.n_heads + 1) / 2)
    return pos


def circuit_graph(circuit, scores=None, *, title: str = "Circuit") -> go.Figure:
    """The circuit's edges between its nodes: colour by the receiver's input (query, key, value, MLP, logits),
    width by ``|score|`` when ``scores`` (:class:`~mi_toolkit.analysis.circuits.EdgeScores`) are given.

    Args:
        circuit: a :class:`~mi_toolkit.analysis.circuits.Circuit`.
        scores: optional edge scores for the widths and hover text.
        title: figure title.
    """
    graph = circuit.graph
    pos = _node_positions(graph)
    edges = circuit.edges
    score = {edge: float(torch.as_tensor(scores[edge]).sum()) for edge in edges} if scores is not None else {}
    values = {edge: abs(score[edge]) if scores is not None else 1.0 for edge in edges}
    top = max(values.values(), default=1.0) or 1.0
    fig = go.Figure()
    shown = set()
    for sender, receiver in edges:
        kind = receiver.rsplit(".", 1)[1] if receiver.count(".") == 2 else ("logits" if receiver == "logits" else "mlp")
        node = receiver.rsplit(".", 1)[0] if receiver.count(".") == 2 else receiver
        (x0, y0), (x1, y1) = pos[sender], pos[node]
        label = f"{sender} → {receiver}" + (f": {score[(sender, receiver)]:.4g}" if scores is not None else "")
        bend = {"q": 0.2, "k": 0.0, "v": -0.2}.get(kind, 0.0)  # q, k and v edges between one pair stay apart
        fig.add_trace(go.Scatter(
            x=[x0, (x0 + x1) / 2, x1], y=[y0, (y0 + y1) / 2 + bend, y1],
            mode="lines", line=dict(color=_KIND_COLOURS[kind], width=1 + 7 * values[(sender, receiver)] / top),
            hovertext=label, hoverinfo="text", name={"q": "query", "k": "key", "v": "value"}.get(kind, kind),
            legendgroup=kind, showlegend=kind not in shown, opacity=0.8))
        shown.add(kind)
    used = {s for s, _ in edges} | {r.rsplit(".", 1)[0] if r.count(".") == 2 else r for _, r in edges}
    names = [n for n in pos if n in used]
    fig.add_trace(go.Scatter(
        x=[pos[n][0] for n in names], y=[pos[n][1] for n in names], mode="markers+text", text=names,
        textposition="top center", marker=dict(size=16, color="white", line=dict(color="black", width=1.5)),
        hoverinfo="text", showlegend=False))
    fig.update_layout(
        title=f"{title} ({circuit.n_edges} of {graph.n_edges} edges)", plot_bgcolor="white",
        xaxis=dict(tickmode="array", tickvals=list(range(-1, graph.n_layers + 1)),
                   ticktext=["input"] + [f"layer {i}" for i in range(graph.n_layers)] + ["logits"], showgrid=False,
                   zeroline=False),
        yaxis=dict(visible=False), legend_title_text="receiver input", height=520)
    return fig


def faithfulness_curves(curves: dict, *, title: str = "Faithfulness of top-n circuits") -> go.Figure:
    """Faithfulness against the number of edges, one line (with its bootstrap band) per method, and the random
    circuits' spread in grey.

    Args:
        curves: ``{label: FaithfulnessCurve}`` (:func:`~mi_toolkit.analysis.circuits.faithfulness_curve`).
        title: figure title.
    """
    fig = go.Figure()
    for i, (label, curve) in enumerate(curves.items()):
        colour = _LINE_COLOURS[i % len(_LINE_COLOURS)]
        x = curve.n_edges
        fig.add_trace(go.Scatter(x=x + x[::-1], y=curve.high + curve.low[::-1], fill="toself", fillcolor=colour,
                                 opacity=0.15, line=dict(width=0), hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=x, y=curve.faithfulness, mode="lines+markers", name=label,
                                 line=dict(color=colour)))
    first = next(iter(curves.values()))
    x = first.n_edges
    fig.add_trace(go.Scatter(x=x + x[::-1], y=first.random_high + first.random_low[::-1], fill="toself",
                             fillcolor="grey", opacity=0.2, line=dict(width=0), hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=x, y=first.random_mean, mode="lines", name="random circuits",
                             line=dict(color="grey", dash="dash")))
    fig.update_layout(title=title, xaxis_title=f"edges in the circuit (of {first.total_edges})",
                      yaxis_title="faithfulness", hovermode="x unified", height=450)
    return fig


def edge_score_heatmap(scores, *, title: str | None = None) -> go.Figure:
    """Edge scores as a receivers x senders heatmap (non-edges blank).

    Args:
        scores: :class:`~mi_toolkit.analysis.circuits.EdgeScores`.
        title: figure title (default names the method).
    """
    graph = scores.graph
    values = (scores.tensor if scores.tensor.ndim == 2 else scores.tensor.sum(-1)).detach().float().cpu()
    values = torch.where(graph.valid, values, torch.tensor(float("nan")))
    # One edge often dwarfs the rest: the colour scale saturates at the 98th percentile of |score| (hover shows all).
    finite = values[graph.valid].abs()
    limit = max(float(finite.quantile(0.98)) if len(finite) else 1.0, 1e-12)
    fig = go.Figure(go.Heatmap(
        z=values.numpy(), x=list(graph.senders), y=list(graph.receivers), colorscale="RdBu", zmid=0, zmin=-limit,
        zmax=limit, hovertemplate="%{x} → %{y}: %{z:.4g}<extra></extra>"))
    fig.update_layout(title=title or f"Edge scores ({scores.method})", xaxis_title="sender",
                      yaxis_title="receiver", yaxis=dict(autorange="reversed", dtick=1),
                      height=max(400, 16 * len(graph.receivers) + 150))
    return fig


def acdc_sweep(sweeps: dict[str, ACDCSweep] | ACDCSweep, *, target: float | None = 0.9,
               title: str = "ACDC: faithfulness against circuit size, by threshold") -> go.Figure:
    """Each ACDC run of a sweep as a point (edges kept, faithfulness), labelled with its threshold and joined from
    the largest threshold to the smallest, one line per sweep; a dotted line at ``target`` faithfulness.

    Args:
        sweeps: ``{label: ACDCSweep}`` (:func:`~mi_toolkit.analysis.circuits.acdc_sweep`), or one ``ACDCSweep``.
        target: the faithfulness to mark (None: no line).
        title: figure title.
    """
    sweeps = {"ACDC": sweeps} if isinstance(sweeps, ACDCSweep) else sweeps
    if not sweeps:
        raise ValueError("no sweeps given")
    fig = go.Figure()
    for i, (label, sweep) in enumerate(sweeps.items()):
        rows = sorted(sweep.table(), key=lambda row: -row["threshold"])
        fig.add_trace(go.Scatter(
            x=[row["edges"] for row in rows], y=[row["faithfulness"] for row in rows], mode="lines+markers+text",
            text=[f"τ={row['threshold']:g}" for row in rows], textposition="top left", name=label,
            line=dict(color=_LINE_COLOURS[i % len(_LINE_COLOURS)]),
            customdata=[[row["threshold"], 100 * row["edge_fraction"]] for row in rows],
            hovertemplate="τ=%{customdata[0]:g}: %{x} edges (%{customdata[1]:.0f}%), faithfulness %{y:.3f}"
                          "<extra>" + label + "</extra>"))
    if target is not None:
        fig.add_hline(y=target, line=dict(color="grey", dash="dot"), annotation_text=f"faithfulness {target:g}",
                      annotation_position="bottom right")
    totals = {r.circuit.graph.n_edges for sweep in sweeps.values() for r in sweep.results}
    of = f" (of {totals.pop()})" if len(totals) == 1 else ""
    fig.update_layout(title=title, xaxis_title=f"edges kept{of}", yaxis_title="faithfulness", height=450)
    return fig
