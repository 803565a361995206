"""Plotly figures. Every title says what is measured, on what, and in which unit.

Figures take plain numbers (lists, dicts, engine dataclasses) and never touch a model.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Optional, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

ORIGINAL, COMPRESSED = "#64748b", "#4f46e5"
LOG_TICKS = [float(f"{m}e{e}") for e in range(-6, 1) for m in (1, 2, 5) if e < 0 or m == 1]
PLACEHOLDER_CHARS = 60  # a half-width panel holds about this many characters of its 14 px text
PALETTE = ("#4f46e5", "#0891b2", "#16a34a", "#d97706", "#dc2626", "#9333ea", "#db2777", "#65a30d")


# See-through backgrounds: a chart sits on its block's colour, light or dark, and assets/style.css turns its
# text and grid light under gradio's dark mode (the template follows the page, not the other way round).
CLEAR = dict(template="plotly_white", paper_bgcolor="rgba(0,0,0,0)", plot_bgcolor="rgba(0,0,0,0)")


def millions(n: float) -> float:
    return n / 1e6


def _style(fig: go.Figure, title: str, subtitle: str = "", height: int = 380) -> go.Figure:
    text = f"{title}<br><sup>{subtitle}</sup>" if subtitle else title
    fig.update_layout(title=dict(text=text, x=0.01, xanchor="left", font=dict(size=15)), **CLEAR, height=height,
                      margin=dict(l=60, r=20, t=70 if subtitle else 50, b=50),
                      legend=dict(orientation="h", yanchor="bottom", y=-0.35, x=0), hovermode="closest")
    return fig


def placeholder(message: str, height: int = 300) -> go.Figure:
    """An empty chart that says what to do to fill it; the message wrapped, since plotly annotations do not
    wrap and a long one was cut off at both sides of a half-width panel."""
    fig = go.Figure()
    fig.add_annotation(text="<br>".join(textwrap.wrap(message, PLACEHOLDER_CHARS)), x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="#64748b"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(**CLEAR, height=height, margin=dict(l=20, r=20, t=20, b=20))
    return fig


# --- Analyze ---------------------------------------------------------------

def spectra_heatmap(points: list[str], eigenvalues: list[list[float]], tokens: int,
                    max_components: Optional[int] = None) -> go.Figure:
    """log10 share of energy per principal direction, one row per residual point."""
    k = max_components or max(len(v) for v in eigenvalues)
    z = []
    for values in eigenvalues:
        total = sum(values) or 1.0
        z.append([math.log10(max(v / total, 1e-12)) for v in values[:k]])
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(1, k + 1)), y=points, colorscale="Viridis", zmin=-8, zmax=0,
        colorbar=dict(title="log10 share"),
        hovertemplate="%{y}<br>direction %{x}<br>log10 share of energy %{z:.2f}<extra></extra>"))
    fig.update_xaxes(title="principal direction k (sorted by eigenvalue)")
    fig.update_yaxes(title="residual stream point", autorange="reversed")
    return _style(fig, "PCA eigenvalue spectrum of the residual stream, per layer",
                  f"share of the signal's energy (uncentred second moment) in each direction, log10; "
                  f"{tokens:,} calibration tokens", height=max(420, 14 * len(points) + 140))


def spectra_lines(points: list[str], explained: list[list[float]], chosen: Sequence[str], cut: Optional[int],
                  ratio: Optional[float]) -> go.Figure:
    """Energy left out by keeping the first k directions (1 - cumulative explained variance), log y."""
    fig = go.Figure()
    for i, name in enumerate(chosen):
        if name not in points:
            continue
        row = explained[points.index(name)]
        lost = [max(1 - c, 1e-12) for c in row]
        label = name if cut is None else f"{name}: keeps {100 * row[min(cut, len(row)) - 1]:.3f}% at the cut"
        fig.add_trace(go.Scatter(
            x=list(range(1, len(row) + 1)), y=lost, mode="lines", name=label, customdata=row,
            line=dict(color=PALETTE[i % len(PALETTE)], width=2),
            hovertemplate=f"{name}<br>first %{{x}} directions keep %{{customdata:.5f}}<br>"
                          "energy left out %{y:.2e}<extra></extra>"))
    if cut is not None:
        fig.add_vline(x=cut, line_dash="dash", line_color="#dc2626",
                      annotation_text=f"cut for ratio {ratio:.2f}: keep {cut}", annotation_position="top right")
    fig.update_xaxes(title="k = number of principal directions kept")
    fig.update_yaxes(title="energy left out (log)", type="log", exponentformat="power")
    return _style(fig, "Cumulative explained variance of the residual stream",
                  "shown as the energy the first k directions leave out (log scale; lower is better); "
                  "the red line is the width a ratio keeps")


def layer_scores(block_influence: list[float], redundancy: list[float]) -> go.Figure:
    layers = list(range(len(block_influence)))
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=layers, y=block_influence, name="block influence = 1 − cos(input, output)",
                         marker_color=COMPRESSED, hovertemplate="layer %{x}<br>BI %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=layers, y=redundancy, name="layer redundancy (1 = most redundant)",
                             mode="lines+markers", line=dict(color="#d97706"),
                             hovertemplate="layer %{x}<br>LR %{y:.3f}<extra></extra>"), secondary_y=True)
    fig.update_xaxes(title="layer", dtick=1 if len(layers) <= 40 else None, range=[-0.6, len(layers) - 0.4])
    fig.update_yaxes(title="block influence", type="log", tickvals=LOG_TICKS, tickformat=".1g", secondary_y=False)
    fig.update_yaxes(title="layer redundancy", range=[0, 1.05], secondary_y=True, showgrid=False)
    return _style(fig, "How much each layer changes the residual stream",
                  "block influence (log scale; high = the layer matters) and layer redundancy (its min-max "
                  "inverse; high = candidate for more slicing), on the calibration tokens")


def params_by_type(by_type: dict[str, int], total: int) -> go.Figure:
    items = sorted(by_type.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(
        x=[millions(v) for _, v in items], y=[k for k, _ in items], orientation="h", marker_color=COMPRESSED,
        text=[f"{100 * v / total:.1f}%" for _, v in items], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}<br>%{x:.3f} M parameters<extra></extra>"))
    fig.update_xaxes(title="parameters (millions)", range=[0, millions(max(by_type.values(), default=1)) * 1.18])
    return _style(fig, "Parameters per module type",
                  f"summed over layers; total {millions(total):.2f} M (tied tensors counted once)",
                  height=max(320, 24 * len(items) + 120))


def params_per_layer(per_layer: list[dict[str, int]]) -> go.Figure:
    fig = go.Figure()
    layers = list(range(len(per_layer)))
    for i, group in enumerate(("attention", "mlp", "norms", "other")):
        values = [millions(row.get(group, 0)) for row in per_layer]
        if any(values):
            fig.add_trace(go.Bar(x=layers, y=values, name=group, marker_color=PALETTE[i],
                                 hovertemplate=f"layer %{{x}}<br>{group} %{{y:.3f}} M<extra></extra>"))
    fig.update_layout(barmode="stack", legend_traceorder="normal")
    fig.update_xaxes(title="layer", dtick=1 if len(layers) <= 40 else None)
    fig.update_yaxes(title="parameters (millions)")
    return _style(fig, "Parameters per layer, by block part",
                  "'other' holds what a method added inside a layer (e.g. shortcut matrices)")


# --- Compress --------------------------------------------------------------

def plan_chart(ratios: list[float], scores: Optional[list[float]] = None, score_label: str = "score",
               applied: Optional[dict[str, list]] = None,
               reference: Optional[tuple[str, list[float]]] = None) -> go.Figure:
    """``applied``: what the method really did per layer (e.g. {"attention": widths}), shown on hover;
    ``reference``: (name, ratios) of another plan at the same total, drawn as bars beside each layer's."""
    layers = list(range(len(ratios)))
    mean = sum(ratios) / len(ratios) if ratios else 0.0
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    applied = {k: v for k, v in (applied or {}).items() if len(v) == len(ratios)}
    custom = [[v[i] for v in applied.values()] for i in range(len(ratios))] if applied else None
    extra = "".join(f"<br>{k} %{{customdata[{j}]}}" for j, k in enumerate(applied))
    fig.add_trace(go.Bar(x=layers, y=ratios, name="fraction removed", marker_color=COMPRESSED, customdata=custom,
                         hovertemplate="layer %{x}<br>remove %{y:.3f}" + extra + "<extra></extra>"))
    if reference is not None:
        fig.add_trace(go.Bar(x=layers, y=reference[1], name=reference[0], marker_color=ORIGINAL, opacity=0.55,
                             hovertemplate="layer %{x}<br>" + reference[0] + ": remove %{y:.3f}<extra></extra>"))
        fig.update_layout(barmode="group")
    if scores:
        fig.add_trace(go.Scatter(x=layers, y=scores, name=score_label, mode="lines+markers",
                                 line=dict(color="#d97706")), secondary_y=True)
        fig.update_yaxes(title=score_label, secondary_y=True, showgrid=False)
    fig.add_hline(y=mean, line_dash="dash", line_color="#dc2626", annotation_text=f"mean {mean:.3f}")
    fig.update_xaxes(title="layer", dtick=1 if len(layers) <= 40 else None)
    top = max(list(ratios) + (list(reference[1]) if reference else []), default=0)
    fig.update_yaxes(title="fraction removed", range=[0, max(0.05, top * 1.15)],
                     secondary_y=False)
    return _style(fig, "Per-layer plan: fraction of each layer to remove",
                  "edit the table to change it; the red line is the mean the plan achieves")


def accounting_chart(original: dict, compressed: dict) -> go.Figure:
    """Stacked parameters (embedding, head, body) of both models, with the original's total marked."""
    names = ["original", "compressed"]
    parts = (("embedding", "params_embedding", "#94a3b8"), ("head (untied copy)", "params_head", "#d97706"),
             ("transformer body", "params_non_embedding", COMPRESSED))
    fig = go.Figure()
    for label, key, color in parts:
        values = [millions(original[key]), millions(compressed[key])]
        fig.add_trace(go.Bar(x=names, y=values, name=label, marker_color=color,
                             hovertemplate=f"%{{x}}<br>{label} %{{y:.2f}} M<extra></extra>"))
    fig.add_hline(y=millions(original["params_total"]), line_dash="dash", line_color="#dc2626",
                  annotation_text=f"original total {millions(original['params_total']):.2f} M")
    for name, acc in zip(names, (original, compressed)):
        fig.add_annotation(x=name, y=millions(acc["params_total"]), text=f"{millions(acc['params_total']):.2f} M",
                           showarrow=False, yshift=12)
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title="parameters (millions)")
    return _style(fig, "Parameters: original vs compressed",
                  "a bar above the red line means the 'compressed' model is bigger", height=400)


# --- Evaluate --------------------------------------------------------------

def recovery_curve(report: dict) -> go.Figure:
    """The distillation loss per optimizer step (a ``RecoveryReport``'s dict), KL apart when hidden states count."""
    losses = report["losses"]
    steps = list(range(1, len(losses) + 1))
    fig = go.Figure(go.Scatter(x=steps, y=losses, mode="lines+markers" if len(losses) <= 40 else "lines",
                               name="loss", line=dict(color=COMPRESSED),
                               hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>"))
    if report.get("hidden_matched"):
        fig.add_trace(go.Scatter(x=steps, y=report["kl"], mode="lines", name="KL part", line=dict(color=ORIGINAL,
                                 dash="dot"), hovertemplate="step %{x}<br>KL %{y:.4f}<extra></extra>"))
    fig.update_xaxes(title="optimizer step")
    fig.update_yaxes(title="KL(original ‖ compressed), nats/token" if not report.get("hidden_matched")
                     else "KL + weighted hidden-state loss")
    text = report.get("text") or {}
    on = f"{text['source']}, {text['nsamples']} × {text['seqlen']} tokens; " if text else ""
    return _style(fig, f"Recovery ({report['kind']}): distillation loss per step",
                  f"{on}{report['steps']} steps in {report['seconds']:.0f} s, stopped by {report['stopped_by']}")


def method_curve(entry: dict) -> go.Figure:
    """A method's own training curve (a ``result.plots`` entry with ``curve``, ``title``, ``x_label``,
    ``y_label`` and an optional ``note``), e.g. PruneNet's reward by episode."""
    ys = entry["curve"]
    xs = list(range(1, len(ys) + 1))
    fig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines+markers" if len(ys) <= 40 else "lines",
                               line=dict(color=COMPRESSED), hovertemplate="%{x}<br>%{y:.4f}<extra></extra>"))
    fig.update_xaxes(title=entry["x_label"])
    fig.update_yaxes(title=entry["y_label"])
    return _style(fig, entry["title"], entry.get("note", ""))


@dataclass
class Panel:
    """One chart of a method's plots: a per-layer series, a curve, or a grid (one row per layer)."""

    title: str
    values: list
    kind: str  # "layers" (bars, one per layer or residual point), "curve" (line), "grid" (heatmap, a row each)
    x_label: str = ""
    y_label: str = ""


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(values) -> bool:
    return isinstance(values, list) and any(_number(v) for v in values) and all(v is None or _number(v) for v in values)


def method_panels(plots: dict, prefix: str = "") -> list[Panel]:
    """Every drawable entry of a result's ``plots``, read by shape alone so a new method's plots are drawn
    without UI code: a list of numbers (one per layer), a list of dicts (one chart per numeric field, e.g.
    DOTResize's merge map), a list of lists (one row per layer: SliceGPT's spectra), a ``curve`` dict
    (PruneNet's reward) and nested dicts (compensation ranks per half). Anything else is skipped."""
    panels: list[Panel] = []
    for key, value in plots.items():
        name = f"{prefix}{key}".replace("_", " ")
        if isinstance(value, dict) and _numbers(value.get("curve")):
            panels.append(Panel(value.get("title", name), value["curve"], "curve", value.get("x_label", "step"),
                                value.get("y_label", "")))
        elif isinstance(value, dict):
            panels += method_panels(value, f"{name}: ")
        elif _numbers(value):
            panels.append(Panel(name, value, "layers", y_label=name))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            fields = [f for f in value[0] if _numbers([v.get(f) for v in value])]
            panels += [Panel(f"{name}: {f}".replace("_", " "), [v.get(f) for v in value], "layers",
                             y_label=f.replace("_", " ")) for f in fields]
        elif isinstance(value, list) and value and all(_numbers(v) for v in value):
            panels.append(Panel(name, value, "grid", "index within the row"))
    return panels


def along(count: int, layers: Optional[int]) -> str:
    """What the entries of a per-model series are, from its length: one per layer, per half, or per residual
    point (before each half, and the output: a rotation's bases)."""
    if layers and count == layers:
        return "layer"
    if layers and count == 2 * layers:
        return "half (attention, MLP of each layer)"
    if layers and count == 2 * layers + 1:
        return "residual point (before each half, then the output)"
    return "index"


def _grid(rows: list[list]) -> tuple[list[list], str]:
    """A heatmap's colours: log10 when the values are positive and span orders of magnitude (spectra)."""
    flat = [v for row in rows for v in row if v is not None]
    if flat and min(flat) >= 0 and max(flat) > 1e3 * max(min(flat), 1e-300):
        return [[None if v is None else math.log10(max(v, 1e-12)) for v in row] for row in rows], "log10 value"
    return rows, "value"


def method_plots(plots: dict, subtitle: str = "", layers: Optional[int] = None) -> Optional[go.Figure]:
    """One chart per drawable ``plots`` entry (``method_panels``), stacked, on a model of ``layers`` layers;
    None when there is none."""
    panels = method_panels(plots)
    if not panels:
        return None
    fig = make_subplots(rows=len(panels), cols=1, subplot_titles=[p.title for p in panels],
                        vertical_spacing=min(0.12, 0.5 / len(panels)))
    for row, p in enumerate(panels, start=1):
        xs = list(range(len(p.values))) if p.kind != "curve" else list(range(1, len(p.values) + 1))
        where = p.x_label if p.kind == "curve" else along(len(p.values), layers)
        if p.kind == "grid":
            z, scale = _grid(p.values)
            fig.add_trace(go.Heatmap(z=z, colorscale="Viridis", showscale=False,
                                     hovertemplate=f"{where} %{{y}}<br>%{{x}}<br>{scale} %{{z:.3g}}<extra></extra>"),
                          row=row, col=1)
            fig.update_yaxes(title_text=where.split(" (")[0], autorange="reversed", row=row, col=1)
        elif p.kind == "curve":
            fig.add_trace(go.Scatter(x=xs, y=p.values, mode="lines+markers" if len(xs) <= 40 else "lines",
                                     line=dict(color=COMPRESSED), hovertemplate="%{x}<br>%{y:.4g}<extra></extra>"),
                          row=row, col=1)
        else:
            fig.add_trace(go.Bar(x=xs, y=p.values, marker_color=PALETTE[(row - 1) % len(PALETTE)],
                                 hovertemplate=f"{where.split(' (')[0]} %{{x}}<br>{p.y_label} %{{y:.4g}}<extra></extra>"),
                          row=row, col=1)
        fig.update_xaxes(title_text=p.x_label if p.kind == "grid" else where, row=row, col=1,
                         dtick=1 if p.kind != "grid" and len(xs) <= 40 else None)  # whole layers, not 0.5
        if p.kind != "grid":
            fig.update_yaxes(title_text=p.y_label[:28], row=row, col=1)
    fig.update_layout(showlegend=False)
    fig.update_annotations(font_size=12)
    return _style(fig, "What the method measured and chose, along the model", subtitle, height=140 + 240 * len(panels))


def live_curves(curves: dict[str, tuple[str, list[float], list[float]]]) -> go.Figure:
    """The curves a running job draws (name -> (x label, xs, ys)), e.g. a search's best KL by generation;
    redrawn as points arrive, one colour per curve."""
    fig = go.Figure()
    for k, (name, (x_label, xs, ys)) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=xs, y=ys, name=name, mode="lines+markers" if len(ys) <= 60 else "lines",
                                 line=dict(color=PALETTE[k % len(PALETTE)]),
                                 hovertemplate=x_label + " %{x}<br>" + name + " %{y:.4g}<extra></extra>"))
        fig.update_xaxes(title=x_label)
    names = list(curves)
    fig.update_yaxes(title=names[0] if len(names) == 1 else "value")
    last = {name: ys[-1] for name, (_, _, ys) in curves.items() if ys}
    return _style(fig, "Live: " + ", ".join(names) + " as the run goes",
                  "; ".join(f"latest {name} {y:.4g}" for name, y in last.items()))


def perplexity_chart(rows: list[tuple[str, float]], protocol: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=[r[0] for r in rows], y=[r[1] for r in rows],
                           marker_color=[ORIGINAL if r[0] == "original" else COMPRESSED for r in rows],
                           text=[f"{r[1]:.2f}" for r in rows], textposition="outside", cliponaxis=False,
                           hovertemplate="%{x}<br>perplexity %{y:.3f}<extra></extra>"))
    fig.update_yaxes(title="perplexity (lower is better)", range=[0, max(r[1] for r in rows) * 1.15])
    return _style(fig, "Perplexity", protocol)


def zeroshot_chart(models: dict[str, dict]) -> go.Figure:
    """``models``: name -> run_zeroshot() output; the bars use each task's reported metric."""
    fig = go.Figure()
    for name, res in models.items():
        tasks = res.get("tasks", {})
        names = list(tasks)
        metrics = [tasks[t].get("metric", "acc") for t in names]
        values = [tasks[t][metric] for t, metric in zip(names, metrics)]
        errs = [tasks[t].get(f"{metric}_stderr") or 0 for t, metric in zip(names, metrics)]
        labels = [f"{t} ({metric}, n={tasks[t].get('n', '?')})" for t, metric in zip(names, metrics)]
        fig.add_trace(go.Bar(x=labels, y=values, name=name, error_y=dict(type="data", array=errs),
                             marker_color=ORIGINAL if name == "original" else COMPRESSED,
                             hovertemplate=f"{name}<br>%{{x}}<br>%{{y:.3f}}<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title="accuracy (higher is better)", range=[0, 1])
    return _style(fig, "Zero-shot accuracy per task",
                  "acc or acc_norm as labelled, ± standard error; few examples (limit) make wide error bars")


SPEED_METRICS = (("prefill_tokens_per_s", "prefill tokens/s"), ("decode_tokens_per_s_b1", "decode tokens/s, batch 1"),
                 ("decode_tokens_per_s_b16", "decode tokens/s, batch 16"), ("ttft_ms", "time to first token (ms)"),
                 ("peak_memory_mb", "peak memory (MB)"))


def speed_chart(models: dict[str, dict]) -> go.Figure:
    present = [(k, label) for k, label in SPEED_METRICS if any(m.get(k) is not None for m in models.values())]
    fig = make_subplots(rows=1, cols=max(1, len(present)), subplot_titles=[label for _, label in present])
    for col, (key, _label) in enumerate(present, start=1):
        for name, res in models.items():
            if res.get(key) is not None:
                low, high = (res.get("spread") or {}).get(key) or (res[key], res[key])
                fig.add_trace(go.Bar(x=[name], y=[res[key]], name=name, showlegend=False,
                                     marker_color=ORIGINAL if name == "original" else COMPRESSED,
                                     error_y=dict(type="data", symmetric=False, array=[high - res[key]],
                                                  arrayminus=[res[key] - low]),
                                     hovertemplate=f"{name}<br>%{{y:.1f}}<extra></extra>"), row=1, col=col)
    fig.update_annotations(font_size=11)
    device = next((m.get("device") for m in models.values() if m.get("device")), "")
    return _style(fig, "Speed and memory", f"measured on {device}; median of the repeats, bars from the lowest to "
                  "the highest; higher tokens/s and lower ms/MB are better")


def history_scatter(points: list[dict]) -> go.Figure:
    """``points``: {label, params, ppl, protocol, original: bool}; one trace per protocol."""
    fig = go.Figure()
    protocols = sorted({p["protocol"] for p in points})
    for i, proto in enumerate(protocols):
        group = [p for p in points if p["protocol"] == proto]
        fig.add_trace(go.Scatter(
            x=[millions(p["params"]) for p in group], y=[p["ppl"] for p in group], mode="markers+text",
            text=[p["label"] for p in group], textposition="top center", name=proto,
            marker=dict(size=[16 if p.get("original") else 11 for p in group],
                        symbol=["star" if p.get("original") else "circle" for p in group],
                        color=PALETTE[i % len(PALETTE)]),
            hovertemplate="%{text}<br>%{x:.2f} M parameters<br>perplexity %{y:.3f}<extra></extra>"))
    fig.update_xaxes(title="total parameters (millions)")
    fig.update_yaxes(title="perplexity (lower is better)")
    return _style(fig, "This session's runs: perplexity vs parameters",
                  "bottom-left is better; the star is the original; only points with the same protocol compare")
