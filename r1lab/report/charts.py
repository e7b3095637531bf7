"""The report's charts (plotly figures), each built from a RunData alone. Every title says where its numbers
come from: measured on twin, measured on GPU, or modelled. A builder returns None when its data is absent
(the report then says which file is missing instead of drawing an empty chart)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from r1lab.report import analysis as A
from r1lab.report.data import RunData

TEMPLATE = "plotly_white"
PCT_DASH = {"p50": "solid", "p90": "dash", "p99": "dot"}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f"]


def _title(text: str, source: str) -> dict[str, Any]:
    return {"text": f"{text}<br><sup>{source}</sup>", "x": 0.01}


def _layout(fig: go.Figure, title: str, source: str, height: int = 480) -> go.Figure:
    fig.update_layout(template=TEMPLATE, title=_title(title, source), height=height,
                      margin={"l": 70, "r": 30, "t": 90, "b": 60}, legend={"orientation": "v"})  # fmt: skip
    tidy_axes(fig)
    return fig


def _conc_axis(fig: go.Figure, **kw: Any) -> None:
    fig.update_xaxes(type="log", title_text="concurrency", **kw)  # ticks: the sweep's own points (tidy_axes)


MIN_P99_SAMPLES = 100  # below this, a "p99" is the slowest request or close to it


def fmt_tick(v: float) -> str:
    """A tick label in few characters: 20k, 1.5M, 0.5, 3."""
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks between lo and hi (powers of ten only when that would be more than 9 ticks)."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    vals = [m * 10.0**k for k in range(k0, k1 + 1) for m in (1, 2, 5)]
    inside = [v for v in vals if lo / 1.001 <= v <= hi * 1.001]
    if len(inside) > 9:
        inside = [v for v in inside if math.log10(v).is_integer()]
    if len(inside) < 3:  # a narrow range (within a decade or so): finer round ticks
        fine = [m * 10.0**k for k in range(k0, k1 + 1) for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8)]
        inside = [v for v in fine if lo / 1.001 <= v <= hi * 1.001] or inside
    return [float(f"{v:.6g}") for v in inside]


def _axis_values(fig: go.Figure) -> dict[str, list[float]]:
    """Positive finite data values per layout axis name (xaxis, yaxis2, ...)."""
    out: dict[str, list[float]] = {}
    for tr in fig.data:
        for letter in ("x", "y"):
            ref = getattr(tr, f"{letter}axis", None) or letter
            vals = getattr(tr, letter, None)
            if vals is None:
                continue
            name = f"{letter}axis{ref[1:]}"
            for v in vals:
                if (
                    isinstance(v, numbers.Real)
                    and not isinstance(v, bool)
                    and math.isfinite(v)
                    and float(v) > 0
                ):
                    out.setdefault(name, []).append(float(v))  # numpy ints too (pandas columns)
    return out


def tidy_axes(fig: go.Figure) -> go.Figure:
    """Readable axes: log axes get 1-2-5 ticks in human units (no minor-tick labels; concurrency gets the sweep's
    own points), a second y axis gets its own round ticks instead of ticks synced to the first one's grid."""
    values = _axis_values(fig)
    for name in [k for k in fig.layout.to_plotly_json() if k.startswith(("xaxis", "yaxis"))]:
        ax = fig.layout[name]
        if ax.overlaying:
            ax.update(tickmode="auto", nticks=6)
        vals = values.get(name)
        if ax.type != "log" or not vals or ax.tickvals is not None:
            continue
        title = (ax.title.text or "") if ax.title else ""
        if title == "concurrency":
            ticks = sorted(set(vals))
            text = [f"{v:g}" for v in ticks]
        else:
            ticks = log_ticks(min(vals), max(vals))
            text = [fmt_tick(v) for v in ticks]
        ax.update(tickmode="array", tickvals=ticks, ticktext=text, minor={"showgrid": False}, dtick=None)
    return fig


def small_samples(data: RunData) -> list[tuple[str, str, int]]:
    """Load points whose p99 comes from fewer than MIN_P99_SAMPLES requests: (scenario, point, requests)."""
    out = []
    for p in data.points:
        n = int(p.get("requests") or 0) - int(p.get("errors") or 0)
        if 0 < n < MIN_P99_SAMPLES:
            out.append((str(p.get("scenario")), str(p.get("point")), n))
    return out


def _sample_warning(fig: go.Figure, data: RunData, y: float = -0.16) -> None:
    few = small_samples(data)
    if few:
        listed = ", ".join(f"{s} {p} (n={n})" for s, p, n in few[:6]) + (" ..." if len(few) > 6 else "")
        fig.add_annotation(text=f"⚠ p99 from fewer than {MIN_P99_SAMPLES} requests (close to the slowest one): {listed}",
                           xref="paper", yref="paper", x=0, y=y, showarrow=False, align="left",
                           font={"size": 11, "color": "#b35900"})  # fmt: skip


def latency_vs_concurrency(data: RunData) -> go.Figure | None:
    sweeps = A.sweep_points(data)
    if not sweeps:
        return None
    metrics = [
        ("ttft_ms", "TTFT (ms)"),
        ("tpot_ms", "TPOT (ms)"),
        ("itl_ms", "ITL (ms)"),
        ("e2el_ms", "E2E latency (ms)"),
    ]
    fig = make_subplots(rows=2, cols=2, subplot_titles=[m[1] for m in metrics], horizontal_spacing=0.1,
                        vertical_spacing=0.14)  # fmt: skip
    for si, (scenario, pts) in enumerate(sweeps.items()):
        color = COLORS[si % len(COLORS)]
        for mi, (key, _) in enumerate(metrics):
            for pct, dash in PCT_DASH.items():
                ys = [(p.get(key) or {}).get(pct) for p in pts]
                fig.add_trace(go.Scatter(
                    x=[p["concurrency"] for p in pts], y=ys, mode="lines+markers", name=f"{scenario} {pct}",
                    legendgroup=f"{scenario} {pct}", showlegend=mi == 0, line={"color": color, "dash": dash},
                ), row=mi // 2 + 1, col=mi % 2 + 1)  # fmt: skip
    _conc_axis(fig)
    fig.update_yaxes(type="log", title_text="ms")
    _sample_warning(fig, data, y=-0.1)
    return _layout(fig, "Latency percentiles against concurrency (p50 solid, p90 dashed, p99 dotted)",
                   data.source_label, 740)  # fmt: skip


def reasoning(data: RunData) -> go.Figure | None:
    """A reasoning model's two phases per load point: time to first token vs to first answer token (p50, p99),
    and reasoning vs answer tokens per request (mean)."""
    pts = [p for p in data.points if p.get("reasoning_requests")]
    if not pts:
        return None
    labels = [f"{p.get('scenario')} {p.get('point')}" for p in pts]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["time to first token / answer token (ms)",
                                                        "tokens per request (mean)"])  # fmt: skip
    for key, name, color in (
        ("ttft_token_ms", "first token", COLORS[0]),
        ("ttfo_ms", "first answer token", COLORS[1]),
    ):
        for pct, dash in (("p50", "solid"), ("p99", "dot")):
            fig.add_trace(go.Scatter(x=labels, y=[(p.get(key) or {}).get(pct) for p in pts], mode="lines+markers",
                                     name=f"{name} {pct}", line={"color": color, "dash": dash}), row=1, col=1)  # fmt: skip
    for key, name, color in (
        ("reasoning_tokens", "reasoning", COLORS[2]),
        ("answer_tokens", "answer", COLORS[3]),
    ):
        fig.add_trace(go.Bar(x=labels, y=[(p.get(key) or {}).get("mean") for p in pts], name=name,
                             marker_color=color), row=1, col=2)  # fmt: skip
    fig.update_layout(barmode="stack")
    return _layout(fig, "Reasoning phase: time to first answer token and tokens per phase", data.source_label)


def throughput_vs_concurrency(data: RunData) -> go.Figure | None:
    sweeps = A.sweep_points(data)
    if not sweeps:
        return None
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    notes = []
    for si, (scenario, pts) in enumerate(sweeps.items()):
        color = COLORS[si % len(COLORS)]
        xs = [p["concurrency"] for p in pts]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[p.get("output_tok_s") for p in pts],
                mode="lines+markers",
                name=f"{scenario}: output tok/s",
                line={"color": color},
            ),
            secondary_y=False,
        )
        fig.add_trace(go.Scatter(x=xs, y=[p.get("rps") for p in pts], mode="lines+markers", name=f"{scenario}: requests/s",
                                 line={"color": color, "dash": "dot"}), secondary_y=True)  # fmt: skip
        sat = A.saturation(data, scenario) if len(pts) >= 2 else None
        if sat and sat.get("saturated"):
            fig.add_trace(go.Scatter(x=[sat["knee_concurrency"]], y=[sat["knee_throughput"]], mode="markers+text",
                                     marker={"symbol": "star", "size": 18, "color": color}, name=f"{scenario}: saturation",
                                     text=[f"saturation c={sat['knee_concurrency']}"], textposition="top left"),
                          secondary_y=False)  # fmt: skip
        elif sat:
            notes.append(f"{scenario}: {sat.get('note', 'not saturated')}")
    _conc_axis(fig)
    fig.update_yaxes(title_text="output tokens/s", secondary_y=False, rangemode="tozero")
    fig.update_yaxes(title_text="requests/s", secondary_y=True, rangemode="tozero", showgrid=False)
    if notes:
        fig.add_annotation(text="<br>".join(notes), xref="paper", yref="paper", x=0.01, y=0.99, showarrow=False,
                           align="left", bgcolor="rgba(255,255,255,0.8)")  # fmt: skip
    return _layout(fig, "Throughput against concurrency, saturation marked", data.source_label)


def pareto(data: RunData) -> go.Figure | None:
    pts = [p for p in data.points if p.get("tok_s_per_user") and p.get("tok_s_per_gpu")]
    if not pts:
        return None
    fig = go.Figure()
    for si, scenario in enumerate(dict.fromkeys(p["scenario"] for p in pts)):
        ps = [p for p in pts if p["scenario"] == scenario]
        fig.add_trace(go.Scatter(
            x=[p["tok_s_per_user"] for p in ps], y=[p["tok_s_per_gpu"] for p in ps], mode="markers+text",
            text=[f"c={p.get('concurrency')}" for p in ps], textposition="top center",
            marker={"size": 11, "color": COLORS[si % len(COLORS)]}, name=f"{scenario} ({data.source_label})",
        ))  # fmt: skip
    front = sorted(pts, key=lambda p: -p["tok_s_per_user"])
    frontier, best = [], -1.0
    for p in front:
        if p["tok_s_per_gpu"] > best:
            frontier.append(p)
            best = p["tok_s_per_gpu"]
    fig.add_trace(go.Scatter(x=[p["tok_s_per_user"] for p in frontier], y=[p["tok_s_per_gpu"] for p in frontier],
                             mode="lines", line={"color": "black", "dash": "dash", "shape": "hv"},
                             name="Pareto frontier (measured)"))  # fmt: skip
    topo = data.plan_topology()
    if topo:
        pp = [q for q in topo.get("points", []) if q.get("tok_s_per_user") and q.get("tok_s_per_gpu")]
        if pp:
            fig.add_trace(go.Scatter(x=[q["tok_s_per_user"] for q in pp], y=[q["tok_s_per_gpu"] for q in pp],
                                     mode="markers", marker={"symbol": "circle-open", "size": 11, "color": "gray"},
                                     name="planner prediction (modelled)",
                                     text=[f"{q['scenario']} c={q.get('concurrency')}" for q in pp]))  # fmt: skip
    fig.update_xaxes(title_text="output tokens/s per user (1000 / mean TPOT)", rangemode="tozero")
    fig.update_yaxes(title_text="output tokens/s per GPU", rangemode="tozero")
    return _layout(fig, "Tokens/s per user against tokens/s per GPU (up-right is better)", data.source_label)


def latency_cdfs(data: RunData) -> go.Figure | None:
    df = data.requests
    if df.empty:
        return None
    ok = df[df["error"].isna() & df["t_first"].notna() & ~df["warmup"].fillna(False).astype(bool)]
    if ok.empty:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=["TTFT", "E2E latency"])
    for i, ((sc, pt), g) in enumerate(ok.groupby(["scenario", "point"], sort=False)):
        color = COLORS[i % len(COLORS)]
        ttft = (g["t_first"] - g["t_send"]).to_numpy() * 1000
        e2e = np.array([c[-1] for c in g["chunk_t"]]) * 1000 - g["t_send"].to_numpy() * 1000
        for col, vals in ((1, ttft), (2, e2e)):
            x, y = A.ecdf(vals)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line={"color": color, "shape": "hv"},
                                     name=f"{sc} {pt}", legendgroup=f"{sc} {pt}", showlegend=col == 1),
                          row=1, col=col)  # fmt: skip
    fig.update_xaxes(type="log", title_text="ms")
    fig.update_yaxes(title_text="fraction of requests", range=[0, 1.02])
    return _layout(fig, "Latency CDFs per load point", data.source_label, 520)


def _shade_points(fig: go.Figure, data: RunData, rows: int, t0: float) -> None:
    for i, w in enumerate(A.point_windows(data)):
        fig.add_vrect(x0=w["start"] - t0, x1=w["end"] - t0, fillcolor=COLORS[i % len(COLORS)], opacity=0.07,
                      line_width=0, row="all", col=1)  # fmt: skip
        fig.add_annotation(x=(w["start"] + w["end"]) / 2 - t0, y=1.0, yref="paper", showarrow=False,
                           text=f"{w['scenario']}<br>{w['point']}", font={"size": 9})  # fmt: skip


def server_timeseries(data: RunData) -> go.Figure | None:
    groups = [("KV-cache usage (%)", A.KV_USAGE, 100.0), ("running requests", A.RUNNING, 1.0),
              ("waiting requests", A.WAITING, 1.0)]  # fmt: skip
    present = [(t, A.series(data.metrics, n), s) for t, n, s in groups]
    if all(s.empty for _, s, _ in present):
        return None
    t0 = float(data.metrics["time"].min())
    fig = make_subplots(
        rows=3, cols=1, shared_xaxes=True, subplot_titles=[g[0] for g in groups], vertical_spacing=0.08
    )
    for r, (_, s, scale) in enumerate(present, start=1):
        for i, ((src, labels), g) in enumerate(s.groupby(["source", "labels"], sort=True)):
            extra = ",".join(
                f"{k}={v}"
                for k, v in A.labels_json(str(labels)).items()
                if k in ("worker_type", "dp_rank", "engine")
            )
            fig.add_trace(go.Scatter(x=g["time"] - t0, y=g["value"] * scale, mode="lines",
                                     name=f"{g['metric'].iloc[0]} {src} {extra}".strip(),
                                     line={"color": COLORS[(3 * (r - 1) + i) % len(COLORS)]}), row=r, col=1)  # fmt: skip
    _shade_points(fig, data, 3, t0)
    fig.update_xaxes(title_text="seconds since the first sample", row=3, col=1)
    fig.update_yaxes(rangemode="tozero")
    return _layout(
        fig, "Server state over the run (Prometheus series; shaded: load points)", data.source_label, 760
    )


def cost_vs_concurrency(data: RunData, usd_per_hour: float | None, price_label: str) -> go.Figure | None:
    from r1lab.cost import usd_per_mtok

    sweeps = A.sweep_points(data)
    if not sweeps:
        return None
    fig = go.Figure()
    for si, (scenario, pts) in enumerate(sweeps.items()):
        color = COLORS[si % len(COLORS)]
        xs = [p["concurrency"] for p in pts]
        out = [p.get("usd_per_mtok_out") or usd_per_mtok(usd_per_hour, p.get("output_tok_s")) for p in pts]
        inn = [p.get("usd_per_mtok_in") or usd_per_mtok(usd_per_hour, p.get("input_tok_s")) for p in pts]
        if not any(out):
            continue
        fig.add_trace(go.Scatter(x=xs, y=out, mode="lines+markers", name=f"{scenario}: $ per M output tokens",
                                 line={"color": color}))  # fmt: skip
        fig.add_trace(go.Scatter(x=xs, y=inn, mode="lines+markers", name=f"{scenario}: $ per M input tokens",
                                 line={"color": color, "dash": "dot"}))  # fmt: skip
    if not fig.data:
        return None
    _conc_axis(fig)
    fig.update_yaxes(type="log", title_text="USD per million tokens")
    src = f"throughput {data.source_label} x {price_label}"
    return _layout(fig, "Cost per million tokens against concurrency", src)


def gpu_memory(data: RunData) -> go.Figure | None:
    """Measured per-GPU memory (DCGM/nvidia-smi series) on GPU pods; on the twin, the modelled breakdown."""
    used = A.series(data.metrics, A.GPU_MEM_USED)
    if not used.empty and not data.on_twin:
        free = A.series(data.metrics, A.GPU_MEM_FREE)
        util = A.series(data.metrics, A.GPU_UTIL)
        t0 = float(data.metrics["time"].min())
        rows = 2 if not util.empty else 1
        fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                            subplot_titles=["memory used (GiB)", "utilisation (%)"][:rows])  # fmt: skip
        for r, (s, scale) in enumerate(((used, 1 / 1024), (util, 1.0))[:rows], start=1):
            for i, ((src, labels), g) in enumerate(s.groupby(["source", "labels"], sort=True)):
                lab = A.labels_json(str(labels))
                fig.add_trace(go.Scatter(x=g["time"] - t0, y=g["value"] * scale, mode="lines", showlegend=r == 1,
                                         name=f"{src} GPU {lab.get('gpu', '?')}", legendgroup=f"{src}{labels}",
                                         line={"color": COLORS[i % len(COLORS)]}), row=r, col=1)  # fmt: skip
        if not free.empty:
            total = (used.set_index(["time", "source", "labels"])["value"]
                     + free.set_index(["time", "source", "labels"])["value"]).max() / 1024  # fmt: skip
            fig.add_hline(
                y=float(total), line_dash="dash", annotation_text=f"total {total:.0f} GiB", row=1, col=1
            )
        fig.update_xaxes(title_text="seconds since the first sample", row=rows, col=1)
        fig.update_yaxes(rangemode="tozero")
        return _layout(fig, "GPU memory and utilisation per GPU", "measured on GPU (nvidia-smi / DCGM)",
                       480 + 240 * (rows - 1))  # fmt: skip
    topo = data.plan_topology()
    mem = (topo or {}).get("memory") or {}
    if not mem and data.exp is not None:
        mem = _model_memory(data)
    if not mem or not mem.get("total_bytes"):
        return None
    gib = 2**30
    kv_pool = mem.get("kv_bytes", 0.0)
    kv = A.series(data.metrics, A.KV_USAGE)
    kv_peak = float(kv["value"].max()) if not kv.empty else None
    parts = [("weights", mem.get("weights_bytes", 0.0)), ("activations (profiling peak)", mem.get("activation_bytes", 0.0)),
             ("CUDA graphs", mem.get("cudagraph_bytes", 0.0)), ("CUDA context + NCCL", mem.get("non_torch_bytes", 0.0))]  # fmt: skip
    if kv_peak is not None:
        parts += [(f"KV cache in use at peak ({kv_peak:.0%}, {data.source_label})", kv_pool * kv_peak),
                  ("KV cache allocated, free at peak", kv_pool * (1 - kv_peak))]  # fmt: skip
    else:
        parts += [("KV cache (allocated by vLLM)", kv_pool)]
    fig = go.Figure()
    for i, (name, b) in enumerate(parts):
        fig.add_trace(go.Bar(x=[f"one {mem.get('gpu', 'GPU')} ({mem.get('parallelism', '')})"], y=[b / gib], name=name,
                             marker={"color": COLORS[i % len(COLORS)]}, text=[f"{b / gib:.1f}"], textposition="inside"))  # fmt: skip
    fig.add_hline(
        y=mem["total_bytes"] / gib,
        line_dash="dash",
        annotation_text=f"GPU memory {mem['total_bytes'] / gib:.1f} GiB",
    )
    if mem.get("budget_bytes"):
        fig.add_hline(y=mem["budget_bytes"] / gib, line_dash="dot",
                      annotation_text=f"gpu_memory_utilization {mem.get('gpu_memory_utilization')}",
                      annotation_position="bottom right")  # fmt: skip
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="GiB per GPU", rangemode="tozero")
    return _layout(
        fig,
        "GPU memory per GPU by component",
        "modelled (r1lab.perf memory model; the twin has no GPUs)"
        + (" with the KV fill measured on twin" if kv_peak is not None else ""),
        520,
    )


def _model_memory(data: RunData) -> dict[str, Any]:
    """The memory plan of the params' serving instance from the run's resolved deployment (resolved.json; the same
    plan the planner's params topology reports)."""
    from r1lab.resolve import for_run

    return for_run(getattr(data, "run_dir", None), data.exp).serving_group.memory


def predicted_vs_measured(data: RunData) -> go.Figure | None:
    df = A.predicted_vs_measured(data)
    if df.empty:
        return None
    metrics = [
        ("ttft_ms_p50", "TTFT p50 (ms)"),
        ("tpot_ms_p50", "TPOT p50 (ms)"),
        ("output_tok_s", "output tokens/s"),
    ]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[m[1] for m in metrics], horizontal_spacing=0.08)
    for si, (scenario, g) in enumerate(df.groupby("scenario", sort=False)):
        g = g.sort_values("concurrency")
        color = COLORS[si % len(COLORS)]
        for ci, (key, _) in enumerate(metrics, start=1):
            fig.add_trace(go.Scatter(x=g["concurrency"], y=g[f"{key}_measured"], mode="lines+markers",
                                     name=f"{scenario} measured ({data.source_label})", legendgroup=f"{scenario}m",
                                     showlegend=ci == 1, line={"color": color}), row=1, col=ci)  # fmt: skip
            fig.add_trace(go.Scatter(x=g["concurrency"], y=g[f"{key}_predicted"], mode="lines+markers",
                                     name=f"{scenario} predicted (modelled)", legendgroup=f"{scenario}p",
                                     showlegend=ci == 1, line={"color": color, "dash": "dash"},
                                     marker={"symbol": "circle-open"}), row=1, col=ci)  # fmt: skip
    _conc_axis(fig)
    fig.update_yaxes(type="log")
    return _layout(
        fig, "Measured against the planner's prediction (00_plan)", f"{data.source_label} vs modelled", 480
    )


def topology_cost(data: RunData, measured_usd_per_hour: float | None) -> go.Figure | None:
    from r1lab.cost import topology_comparison

    if not data.plan:
        return None
    name, pts = A.main_sweep(data)
    predicted = []
    for t in data.plan.get("topologies", []):
        best = max(
            (q for q in t.get("points", []) if q.get("output_tok_s")),
            key=lambda q: q["output_tok_s"],
            default=None,
        )
        predicted.append({"topology": t.get("label", t.get("id")), "fits": t.get("fits"),
                          "usd_per_hour": t.get("usd_per_hour"), "output_tok_s": best["output_tok_s"] if best else None})  # fmt: skip
    topo = data.plan_topology() or {}
    measured = None
    if pts:
        best_m = max(pts, key=lambda p: p.get("output_tok_s") or 0)
        measured = {"topology": topo.get("label"), "usd_per_hour": measured_usd_per_hour or topo.get("usd_per_hour"),
                    "output_tok_s": best_m.get("output_tok_s"), "source": data.source_label}  # fmt: skip
    rows = topology_comparison(predicted, measured)
    rows = [r for r in rows if r["predicted_usd_per_mtok_out"] or r["measured_usd_per_mtok_out"]]
    if not rows:
        return None
    fig = go.Figure()
    fig.add_trace(go.Bar(y=[r["topology"] for r in rows], x=[r["predicted_usd_per_mtok_out"] for r in rows],
                         orientation="h", name="predicted at its best load point (modelled)", marker={"color": "#9ecae1"}))  # fmt: skip
    fig.add_trace(go.Bar(y=[r["topology"] for r in rows], x=[r["measured_usd_per_mtok_out"] for r in rows],
                         orientation="h", name=f"this run at its best point ({data.source_label})", marker={"color": "#d62728"}))  # fmt: skip
    unfit = [t.get("label") for t in data.plan.get("topologies", []) if not t.get("fits")]
    fig.update_xaxes(type="log", title_text="USD per million output tokens (lower is better)")
    fig.update_layout(barmode="group", yaxis={"autorange": "reversed"})
    src = (
        "modelled (00_plan) and "
        + data.source_label
        + ("; does not fit: " + "; ".join(unfit) if unfit else "")
    )
    return _layout(fig, "Cost per million output tokens across topologies", src, 160 + 48 * len(rows))


def summary_table(data: RunData) -> go.Figure | None:
    df = summary_frame(data)
    if df.empty:
        return None
    fig = go.Figure(go.Table(
        header={"values": list(df.columns), "fill_color": "#e8eef7", "align": "left", "font": {"size": 11}},
        cells={"values": [df[c].tolist() for c in df.columns], "align": "left", "font": {"size": 11}},
    ))  # fmt: skip
    return _layout(fig, "Summary per load point", data.source_label, 120 + 28 * (len(df) + 1))


def _fmt(v: Any, digits: int = 1) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return v


def _prefix_hit(pc: dict) -> str | None:
    """The point's prefix-cache hit rate and whose counters gave it (the engines' or Dynamo's KV router)."""
    if pc.get("hit_rate") is None:
        return None
    who = "router" if "router" in (pc.get("source") or "") else "engine"
    return f"{pc['hit_rate']:.0%} ({who})"


def summary_frame(data: RunData) -> pd.DataFrame:
    """The per-point summary as a display table (ms, tok/s, $)."""
    rows = []
    for p in data.points:
        rows.append({
            "scenario": p.get("scenario"), "point": p.get("point"), "conc.": p.get("concurrency"),
            "rate": p.get("rate"), "requests": p.get("requests"), "errors": p.get("errors"),
            "req/s": _fmt(p.get("rps"), 2), "out tok/s": _fmt(p.get("output_tok_s")),
            "TTFT p50": _fmt((p.get("ttft_ms") or {}).get("p50")), "TTFT p99": _fmt((p.get("ttft_ms") or {}).get("p99")),
            "TPOT p50": _fmt((p.get("tpot_ms") or {}).get("p50"), 2), "TPOT p99": _fmt((p.get("tpot_ms") or {}).get("p99"), 2),
            "ITL p50": _fmt((p.get("itl_ms") or {}).get("p50"), 2), "E2E p50": _fmt((p.get("e2el_ms") or {}).get("p50")),
            "goodput req/s": _fmt(p.get("goodput_rps"), 2), "tok/s/GPU": _fmt(p.get("tok_s_per_gpu"), 2),
            "tok/s/user": _fmt(p.get("tok_s_per_user")), "$/M out": _fmt(p.get("usd_per_mtok_out"), 2),
            "$/M in": _fmt(p.get("usd_per_mtok_in"), 2), "source": p.get("source"),
            "client": "LIMITED" if p.get("client_limited") else "ok",
            "TTFO p50": _fmt((p.get("ttfo_ms") or {}).get("p50")) if p.get("reasoning_requests") else None,
            "loop": p.get("loop"), "prefix hit": _prefix_hit(p.get("prefix_cache") or {}),
        })  # fmt: skip
    df = pd.DataFrame(rows)
    # columns no point fills (no rate, no reasoning phase, no prefix-cache counter) are left out
    if not df.empty:
        df = df.drop(columns=[c for c in ("rate", "TTFO p50", "prefix hit") if df[c].isna().all()])
    return df
