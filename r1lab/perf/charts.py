"""Plan charts (plotly): memory per GPU by component, and predicted throughput against latency per topology.

`plan_charts(plan) -> {name: Figure}`; `write_charts(plan, out_dir, png=False)` writes self-contained HTML
(plotly.js embedded, no CDN) and, with png=True, PNG through kaleido (needs a Chrome: BROWSER_PATH).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go

GIB = 2**30
COMPONENTS = [
    ("routed_experts", "routed experts"),
    ("attention", "attention"),
    ("shared_experts", "shared experts"),
    ("dense_mlp", "dense MLP"),
    ("embedding", "embedding"),
    ("lm_head", "lm_head"),
    ("router", "router + norms"),
    ("mtp", "MTP layer"),
]


# one distinct colour per stacked component (plotly's default colorway has 10 and repeats them)
MEMORY_COLORS = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#8c564b", "#c49c94",
                 "#9467bd", "#c5b0d5", "#7f7f7f", "#17becf"]  # fmt: skip


def _wrap(label: str, width: int = 18) -> str:
    """A topology label over a few short lines (x tick labels must not run into each other or the legend)."""
    words, lines, cur = label.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "<br>".join([*lines, cur])


def _plan_dict(plan: Any) -> dict[str, Any]:
    return plan.as_dict() if hasattr(plan, "as_dict") else plan


def memory_chart(plan: Any) -> go.Figure:
    d = _plan_dict(plan)
    topos = [t for t in d["topologies"] if t["memory"]]
    labels = [_wrap(("* " if t["is_params"] else "") + t["label"]) for t in topos]
    fig = go.Figure()
    color = iter(MEMORY_COLORS)
    for key, name in COMPONENTS:
        vals = []
        for t in topos:
            w = t["memory"]["weights_by_component"]
            v = w.get(key, 0.0) + (w.get("norms", 0.0) if key == "router" else 0.0)
            vals.append(v / GIB)
        fig.add_bar(name=name, x=labels, y=vals, marker_color=next(color))
    for key, name in [
        ("activation_bytes", "activations"),
        ("cudagraph_bytes", "CUDA graphs"),
        ("non_torch_bytes", "CUDA ctx + NCCL"),
        ("kv_bytes", "KV cache"),
    ]:
        fig.add_bar(name=name, x=labels, y=[t["memory"][key] / GIB for t in topos], marker_color=next(color))
    fig.add_scatter(
        name="vLLM budget (util x total)",
        x=labels,
        y=[t["memory"]["budget_bytes"] / GIB for t in topos],
        mode="markers",
        marker={"symbol": "line-ew-open", "size": 30, "color": "black"},
    )
    fig.add_scatter(
        name="GPU memory",
        x=labels,
        y=[t["memory"]["total_bytes"] / GIB for t in topos],
        mode="markers",
        marker={"symbol": "line-ew-open", "size": 30, "color": "red"},
    )
    fig.update_layout(
        barmode="stack",
        title="Memory per GPU by component (modelled)",
        yaxis_title="GiB per GPU",
        legend={
            "orientation": "v",
            "x": 1.02,
            "y": 1,
            "xanchor": "left",
        },  # beside the bars, never over labels
        xaxis={"tickangle": 0, "automargin": True},
        margin={"b": 120, "r": 190},
        height=600,
    )
    return fig


def throughput_latency_chart(plan: Any, scenario: str | None = None) -> go.Figure:
    d = _plan_dict(plan)
    fig = go.Figure()
    for t in d["topologies"]:
        pts = [p for p in t["points"] if scenario is None or p["scenario"] == scenario]
        if not t["fits"] or not pts:
            continue
        sc = scenario or pts[0]["scenario"]
        pts = [p for p in pts if p["scenario"] == sc]
        fig.add_scatter(
            name=("* " if t["is_params"] else "") + t["label"],
            x=[p["tok_s_per_user"] for p in pts],
            y=[p["tok_s_per_gpu"] for p in pts],
            text=[f"c={p['concurrency']}" for p in pts],
            mode="lines+markers+text",
            textposition="top center",
        )
    fig.update_layout(
        title=f"Predicted throughput vs interactivity ({scenario or 'first scenario'}, modelled)",
        xaxis_title="output tok/s per user (1000 / TPOT)",
        yaxis_title="output tok/s per GPU",
        height=520,
    )
    return fig


def plan_charts(plan: Any) -> dict[str, go.Figure]:
    return {"memory_per_gpu": memory_chart(plan), "throughput_vs_latency": throughput_latency_chart(plan)}


def write_charts(plan: Any, out_dir: str | Path, png: bool = False) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in plan_charts(plan).items():
        p = out / f"plan_{name}.html"
        fig.write_html(p, include_plotlyjs=True, full_html=True)
        written.append(p)
        if png:
            q = out / f"plan_{name}.png"
            fig.write_image(q)
            written.append(q)
    return written
