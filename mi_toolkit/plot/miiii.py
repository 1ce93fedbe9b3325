"""Figures for multi-task modular arithmetic (miiii): per-task accuracy over training, the omega spike."""

import plotly.graph_objects as go

__all__ = ["omega_curve", "task_accuracies"]


def task_accuracies(history: list[dict], primes: list[int], split: str = "test") -> go.Figure:
    """Each task's accuracy over training (one line per prime q, small primes in light colours)."""
    fig = go.Figure()
    for i, q in enumerate(primes):
        rows = [r for r in history if f"{split}_acc_q{q}" in r]
        shade = int(200 - 170 * i / max(len(primes) - 1, 1))
        fig.add_scatter(x=[r["step"] for r in rows], y=[r[f"{split}_acc_q{q}"] for r in rows], name=f"q = {q}",
                        line={"color": f"rgb({shade},{shade // 2},{255 - shade})"})
    fig.update_layout(title=f"{split.capitalize()} accuracy of each task (x0 + p x1) mod q", xaxis_title="step",
                      yaxis_title="accuracy", yaxis_range=[0, 1.02])
    return fig


def omega_curve(history: list[dict]) -> go.Figure:
    """Number of active frequencies in the neurons over training, at both thresholds (mean + 2 std, + 1 std)."""
    fig = go.Figure()
    for key, label in (("omega_k2", "mean + 2 std (the paper's text)"), ("omega_k1", "mean + 1 std (its figure code)")):
        rows = [r for r in history if key in r]
        fig.add_scatter(x=[r["step"] for r in rows], y=[r[key] for r in rows], mode="lines+markers", name=label)
    fig.update_layout(title="Omega: active frequencies of |FFT2| of the neurons over (x0, x1)", xaxis_title="step",
                      yaxis_title="active frequencies")
    return fig
