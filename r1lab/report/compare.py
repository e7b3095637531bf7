"""`r1lab compare RUN...`: the same metrics of several runs side by side (each run's own source label)."""

from __future__ import annotations

import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from r1lab.report import analysis as A
from r1lab.report.charts import COLORS, TEMPLATE
from r1lab.report.data import RunData, load_run


def _name(d: RunData) -> str:
    exp = d.run.get("experiment") or (d.exp.name if d.exp else "?")
    return f"{exp}/{d.run_id}"


def compare_table(runs: list[RunData]) -> pd.DataFrame:
    """One row per run: topology, its best throughput point, latency there, and its source."""
    rows = []
    for d in runs:
        name, pts = A.main_sweep(d)
        best = max(pts or d.points, key=lambda p: p.get("output_tok_s") or 0, default={})
        sat = A.saturation(d, name) if name else None
        exp = d.exp
        rows.append({
            "run": _name(d), "source": d.source_label,
            "topology": (f"{exp.nodes}x{exp.gpus_per_node} {exp.gpu_type} TP{exp.serving.tensor_parallel}"
                         f" PP{exp.serving.pipeline_parallel} DP{exp.serving.data_parallel}") if exp else "",
            "best out tok/s": best.get("output_tok_s"), "at concurrency": best.get("concurrency"),
            "TTFT p50 ms": (best.get("ttft_ms") or {}).get("p50"), "TPOT p50 ms": (best.get("tpot_ms") or {}).get("p50"),
            "tok/s/GPU": best.get("tok_s_per_gpu"), "$/M out": best.get("usd_per_mtok_out"),
            "saturation c": (sat.get("knee_concurrency") if sat.get("saturated") else "not reached") if sat else "no sweep",
        })  # fmt: skip
    return pd.DataFrame(rows)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(x, dict) and "name" in x for x in obj):
        out = {}
        for x in obj:  # scenarios, pods: by name, so the same one lines up across runs
            out.update(_flatten({k: v for k, v in x.items() if k != "name"}, f"{prefix}[{x['name']}]"))
        return out
    return {prefix: json.dumps(obj) if isinstance(obj, list | dict) else obj}


def params_diff(runs: list[RunData]) -> pd.DataFrame:
    """The params keys (dotted, from each run.json) whose values differ between the runs, one column per run."""
    flat = [_flatten(d.run.get("params") or {}) for d in runs]
    keys = sorted(set().union(*flat))
    rows = []
    for k in keys:
        vals = [f.get(k, "(absent)") for f in flat]
        if len({json.dumps(v, default=str) for v in vals}) > 1:
            rows.append({"params key": k, **{_name(d): v for d, v in zip(runs, vals, strict=True)}})
    return pd.DataFrame(rows, columns=["params key", *[_name(d) for d in runs]])


def compare_figure(runs: list[RunData]) -> go.Figure:
    panels = [("ttft_ms", "TTFT p50 (ms)"), ("tpot_ms", "TPOT p50 (ms)"), ("output_tok_s", "output tokens/s"),
              ("tok_s_per_gpu", "tokens/s per GPU")]  # fmt: skip
    fig = make_subplots(rows=2, cols=2, subplot_titles=[p[1] for p in panels], vertical_spacing=0.14)
    for ri, d in enumerate(runs):
        name, pts = A.main_sweep(d)
        if not pts:
            continue
        xs = [p["concurrency"] for p in pts]
        for pi, (key, _) in enumerate(panels):
            ys = [(p.get(key) or {}).get("p50") if key.endswith("_ms") else p.get(key) for p in pts]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=f"{_name(d)} ({d.source_label})",
                                     legendgroup=_name(d), showlegend=pi == 0,
                                     line={"color": COLORS[ri % len(COLORS)]}), row=pi // 2 + 1, col=pi % 2 + 1)  # fmt: skip
    fig.update_xaxes(type="log", title_text="concurrency", tickformat="d")
    fig.update_layout(template=TEMPLATE, height=720, title={"text": "Runs compared (each run's main concurrency sweep)",
                                                            "x": 0.01})  # fmt: skip
    return fig


def default_out(run_dirs: list[str | Path]) -> Path:
    """compare-<UTC time>.html in the outputs root (never the working directory)."""
    from r1lab.runs import outputs_root

    return outputs_root() / "compare" / f"compare-{_dt.datetime.now(_dt.UTC):%Y%m%d-%H%M%S}.html"


def out_path(out: str | Path | None, run_dirs: list[str | Path]) -> Path:
    """--out as given: a directory (existing, or ending in /) gets compare-<time>.html; a name gets .html."""
    if out is None:
        return default_out(run_dirs)
    text = str(out)
    p = Path(out)
    if p.is_dir() or text.endswith("/"):
        return p / default_out(run_dirs).name
    return p if p.suffix.lower() in (".html", ".htm") else p.with_name(p.name + ".html")


def compare_runs(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write a self-contained comparison page (a new file: never overwrites)."""
    from plotly.offline import get_plotlyjs

    from r1lab.report.build import _RENDER_HOOK

    if len(run_dirs) < 2:
        raise ValueError("compare needs at least two run directories")
    runs = [load_run(r) for r in run_dirs]
    out = out_path(out, run_dirs)
    if out.exists():
        raise FileExistsError(f"{out} exists and results are never overwritten: choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    from r1lab.report.tables import html_table

    table = html_table(compare_table(runs))
    diff = params_diff(runs)
    diff_html = (
        "<h2>Params that differ</h2>" + html_table(diff)
        if not diff.empty
        else "<h2>Params that differ</h2><p>none: the runs used the same params</p>"
    )
    fig = compare_figure(runs)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>r1lab compare</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:24px auto}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ddd;padding:3px 6px;text-align:right}td:first-child,th:first-child"
        "{text-align:left}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body><h1>r1lab: runs compared</h1>"
        f"<p>{html.escape(', '.join(_name(d) for d in runs))}</p>{table}{diff_html}"
        + "<div data-chart='compare'>"
        + pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id="compare", default_width="100%")
        + "</div>"
        + _RENDER_HOOK
        + "</body></html>"
    )
    out.write_text(page, encoding="utf-8")
    return out
