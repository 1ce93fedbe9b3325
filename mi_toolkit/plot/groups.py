"""Figures for the finite-group replication: irreps in the logits, the embeddings and the neurons."""

import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["irrep_overview", "neuron_irreps"]


def irrep_overview(irreps: list[dict], key_names=()) -> go.Figure:
    """Per irrep (``analysis["irreps"]``: name, dim, logit_share, embed_norm, unembed_norm): share of the logit
    variance along its character, and the norm of the embedding and of ``W_out W_U`` in its subspace."""
    names = [f"{r['name']} (d={r['dim']})" for r in irreps]
    colours = ["crimson" if r["name"] in set(key_names) else "steelblue" for r in irreps]
    fig = make_subplots(rows=1, cols=3, subplot_titles=["logit variance along tr rho(x y z^-1)",
                                                        "embedding W_E norm", "W_out W_U norm"])
    for col, key in enumerate(("logit_share", "embed_norm", "unembed_norm"), start=1):
        fig.add_bar(x=names, y=[r[key] for r in irreps], marker_color=colours, showlegend=False, row=1, col=col)
    fig.update_layout(title="Irreducible representations (key irreps in red)", height=420)
    return fig


def neuron_irreps(sizes: dict[str, int], single_fraction: float) -> go.Figure:
    """Neurons per dominant irrep (those with more than half their variance in it)."""
    fig = go.Figure(go.Bar(x=list(sizes), y=list(sizes.values())))
    fig.update_layout(title=f"MLP neurons by dominant irrep ({single_fraction:.0%} with > 85% of their variance in "
                      "one irrep)", xaxis_title="irrep", yaxis_title="neurons")
    return fig
