"""Feature dashboards: one self-contained HTML page for a set of SAE features (plotly.js inlined once).

Per feature: the top-activating contexts with every token highlighted by its activation (hover a token for its
value), the activation histogram, the direct logit effects and, for an SAE on MLP neurons, the neuron alignment.
The numbers come from :func:`mi_toolkit.analysis.dashboard.feature_dashboard_data`.
"""

import html
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go
import plotly.offline
from jaxtyping import Int
from torch import Tensor

from mi_toolkit.analysis.dashboard import FeatureDashboard, feature_dashboard_data
from mi_toolkit.core.tl import HookedTransformer
from mi_toolkit.models.sae import SAE

__all__ = ["feature_dashboard", "feature_dashboard_html", "feature_histogram"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1500px;padding:0 1em;color:#222}
h1{margin:.6em 0 .2em}.sub{color:#555;margin-bottom:.8em}
nav{display:flex;flex-wrap:wrap;gap:4px;margin-bottom:1em}
nav a{font-size:12px;padding:2px 6px;border:1px solid #ccc;border-radius:4px;text-decoration:none;color:#234}
section{border:1px solid #ddd;border-radius:8px;margin:1em 0;padding:.6em 1em}
section h2{margin:.1em 0;font-size:1.2em}.stats{color:#555;font-size:13px;margin-bottom:.4em}
.cols{display:flex;gap:1.5em;align-items:flex-start}.left{flex:0 0 380px;min-width:0}.right{flex:1;min-width:0}
h3{font-size:13px;text-transform:uppercase;letter-spacing:.04em;color:#666;margin:.6em 0 .3em}
table{border-collapse:collapse;font-size:12px;width:100%}td{padding:1px 4px;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;width:4em}
.pos{background:#e6f0ff}.neg{background:#ffe9e6}
.tokname{font-family:ui-monospace,monospace;white-space:pre;overflow:hidden;text-overflow:ellipsis;max-width:9em;
display:inline-block;vertical-align:bottom}
.ctx{font-family:ui-monospace,monospace;font-size:12.5px;line-height:1.9;border-bottom:1px solid #f0f0f0;
white-space:nowrap;overflow-x:auto}
.ctx .val{display:inline-block;width:4.5em;color:#666;text-align:right;margin-right:.6em}
.tok{white-space:pre;padding:1px 0;border-radius:2px}.tok.max{outline:1.5px solid #c04000}
.tok.id{border:1px solid #ddd;padding:0 3px;margin-right:2px}.none{color:#999;font-size:12px}
"""


def feature_histogram(data: FeatureDashboard, i: int) -> go.Figure:
    """The histogram of the ``i``-th feature's non-zero activations (a small plotly bar chart)."""
    edges, counts = data.histogram_edges[i], data.histogram_counts[i]
    fig = go.Figure(go.Bar(x=((edges[1:] + edges[:-1]) / 2).tolist(), y=counts.tolist(),
                           width=(edges[1] - edges[0]).item(), marker_color="#e07b00",
                           hovertemplate="activation %{x:.3g}: %{y} tokens<extra></extra>"))
    fig.update_layout(height=170, width=370, margin=dict(l=40, r=10, t=8, b=30), bargap=0.05,
                      xaxis_title="activation (non-zero)", yaxis_title="tokens", template="plotly_white",
                      font=dict(size=10))
    return fig


def _contexts(data: FeatureDashboard, i: int) -> str:
    peak = max(data.max_activation[i].item(), 1e-12)
    lines = []
    for j, value in enumerate(data.context_values[i].tolist()):
        if value <= 0:
            continue
        spans = []
        for w, (token, act) in enumerate(zip(data.context_tokens[i, j].tolist(),
                                             data.context_activations[i, j].tolist())):
            if token < 0:
                continue
            alpha = min(max(act, 0.0) / peak, 1.0)
            text = html.escape(data.token_strings.get(token, str(token)).replace("\n", "\u23ce") or "\u2205")
            cls = "tok" + (" max" if w == data.window_before else "") + (
                " id" if data.token_strings.get(token) == str(token) else "")
            spans.append(f"<span class='{cls}' style='background:rgba(255,120,0,{alpha:.2f})' "
                         f"title='token {token}: {act:.4g}'>{text}</span>")
        where = f"sequence {data.context_sequence[i, j].item()}, position {data.context_position[i, j].item()}"
        lines.append(f"<div class='ctx' title='{where}'><span class='val'>{value:.3g}</span>{''.join(spans)}</div>")
    return "".join(lines) or "<div class='none'>never fires on these tokens</div>"


def _logits(data: FeatureDashboard, i: int) -> str:
    if data.logit_top_tokens is None:
        return f"<div class='none'>{html.escape(data.logit_note)}</div>"
    rows = []
    for a, b, c, d in zip(data.logit_top_tokens[i].tolist(), data.logit_top_values[i].tolist(),
                          data.logit_bottom_tokens[i].tolist(), data.logit_bottom_values[i].tolist()):
        rows.append(f"<tr><td class='pos'>{_name(data, a)}</td><td class='num pos'>{b:+.3f}</td>"
                    f"<td class='neg'>{_name(data, c)}</td><td class='num neg'>{d:+.3f}</td></tr>")
    return ("<table><tr><th colspan=2>promotes</th><th colspan=2>suppresses</th></tr>" + "".join(rows) + "</table>"
            f"<div class='none'>{html.escape(data.logit_note)}</div>")


def _name(data: FeatureDashboard, token: int) -> str:
    text = data.token_strings.get(token, str(token)).replace("\n", "\u23ce")
    return f"<span class='tokname' title='token {token}'>{html.escape(text) or chr(0x2205)}</span>"


def _neurons(data: FeatureDashboard, i: int) -> str:
    if data.neuron_indices is None:
        return ""
    rows = "".join(f"<tr><td>neuron {n}</td><td class='num'>{w:+.3f}</td></tr>"
                   for n, w in zip(data.neuron_indices[i].tolist(), data.neuron_weights[i].tolist()))
    share = data.top_neuron_fraction[i].item()
    return (f"<h3>Neuron alignment</h3><div class='stats'>top neuron holds {share:.0%} of the decoder row's squared "
            f"norm</div><table><tr><th>neuron</th><th>W_dec</th></tr>{rows}</table>")


def feature_dashboard_html(data: FeatureDashboard, *, title: str | None = None) -> str:
    """The dashboard page for ``data``: a navigation strip, then one card per feature.

    Args:
        data: from :func:`mi_toolkit.analysis.dashboard.feature_dashboard_data`.
        title: page title; default names the hook and the SAE.

    Returns:
        A complete HTML document with plotly.js inlined once (no network needed to open it).
    """
    cfg = data.sae_cfg
    title = title or f"SAE features at {data.hook_name}"
    nav, cards = [], []
    for i, feature in enumerate(data.features.tolist()):
        stats = (f"max activation {data.max_activation[i].item():.3g} &middot; fires on "
                 f"{100 * data.density[i].item():.3g}% of {data.n_tokens:,} tokens")
        nav.append(f"<a href='#f{feature}' title='max {data.max_activation[i].item():.3g}'>{feature}</a>")
        histogram = feature_histogram(data, i).to_html(full_html=False, include_plotlyjs=False,
                                                       config={"displayModeBar": False})
        cards.append(
            f"<section id='f{feature}'><h2>Feature {feature}</h2><div class='stats'>{stats}</div><div class='cols'>"
            f"<div class='left'><h3>Activation histogram</h3>{histogram}<h3>Logit effects</h3>{_logits(data, i)}"
            f"{_neurons(data, i)}</div><div class='right'><h3>Top activations</h3>{_contexts(data, i)}</div>"
            "</div></section>")
    sub = (f"{len(data.features)} features of an SAE with d_in {cfg.d_in}, d_sae {cfg.d_sae} ({cfg.activation}) at "
           f"<code>{html.escape(data.hook_name)}</code>, over {data.n_tokens:,} tokens. Token highlight: activation "
           "relative to the feature's maximum; hover a token for its value, the outlined token is the maximum.")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script>{plotly.offline.get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(title)}</h1><div class='sub'>{sub}</div><nav>{''.join(nav)}</nav>"
            + "\n".join(cards) + "</body></html>")


def feature_dashboard(
    sae: SAE,
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    features: Int[Tensor, " n_features"] | Sequence[int],
    *,
    hook_name: str,
    out: str | Path,
    title: str | None = None,
    **options,
) -> Path:
    """Write one self-contained HTML dashboard for ``features`` of ``sae`` (top-activating contexts with per-token
    highlighting, activation histogram, logit effects, neuron alignment).

    Args:
        sae: the SAE.
        model: the model it reads.
        tokens: the sequences to search.
        features: feature indices, e.g. ``range(50)`` or the densest features of ``mt.evaluate_sae``.
        hook_name: the SAE's hook point.
        out: the HTML file to write (parent directories are created).
        title: page title.
        **options: passed to :func:`mi_toolkit.analysis.dashboard.feature_dashboard_data` (``k``, ``window``,
            ``n_bins``, ``n_logits``, ``n_neurons``, ``decode``, ``batch_size``).

    Returns:
        The path written.
    """
    data = feature_dashboard_data(sae, model, tokens, list(features), hook_name=hook_name, **options)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(feature_dashboard_html(data, title=title), encoding="utf-8")
    return out
