"""Figures for the language model trained on Python source: its loss curves against the unigram baseline."""

import plotly.graph_objects as go

__all__ = ["lm_training"]


def lm_training(history: list[dict], unigram_loss: float | None = None) -> go.Figure:
    """Training loss and held-out loss per logged step (records of :func:`mi_toolkit.train` with ``heldout_loss``),
    with the unigram baseline as a dashed line.

    Args:
        history: the run's metrics records.
        unigram_loss: the baseline to draw (nats), or None.
    """
    fig = go.Figure()
    train = [(r["step"], r["loss"]) for r in history if r.get("loss") is not None]
    heldout = [(r["step"], r["heldout_loss"]) for r in history if r.get("heldout_loss") is not None]
    for name, points in (("training loss", train), ("held-out loss", heldout)):
        if points:
            fig.add_trace(go.Scatter(x=[s for s, _ in points], y=[v for _, v in points], mode="lines", name=name))
    if unigram_loss is not None:
        fig.add_hline(y=unigram_loss, line_dash="dash", annotation_text=f"unigram baseline {unigram_loss:.3f}")
    fig.update_layout(xaxis_title="step", yaxis_title="cross-entropy (nats)", title="Language model training")
    return fig
