"""Build a run's report from its files alone: charts/ (HTML with plotly.js beside them + PNG) and report.html
(self-contained: plotly.js embedded once, opens offline). Nothing is overwritten: a rebuild of a run dir that
already has a report goes to `<run_dir>/rebuilt-<UTC time>/` unless `out` names another directory."""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from r1lab import resolve
from r1lab.progress import step
from r1lab.report import analysis as A
from r1lab.report import charts as C
from r1lab.report.data import RunData, load_run
from r1lab.secrets import redact

CHROMIUM = "/usr/bin/chromium"
PNG_SIZE = (1100, 560)


@dataclass
class Report:
    path: Path
    charts: dict[str, go.Figure]
    chart_files: dict[str, list[Path]] = field(default_factory=dict)
    findings: list[A.Finding] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data: RunData | None = None
    costs: dict[str, Any] = field(default_factory=dict)

    def show(self, name: str) -> Any:
        """A chart to display in a notebook, or a one-line note saying why it was not drawn."""
        if name in self.charts:
            return self.charts[name]
        from IPython.display import Markdown

        return Markdown(f"*{name}: not drawn: {self.missing.get(name, 'unknown chart')}.*")

    def findings_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(
            [{**f.as_dict(), "evidence": "; ".join(f.evidence)} for f in self.findings],
            columns=["kind", "verdict", "summary", "evidence", "source"],
        )

    def summary_frame(self) -> Any:
        return C.summary_frame(self.data) if self.data is not None else None

    def cost_lines(self) -> list[str]:
        """Deployment $/h with the price's provenance, and the run's total from its ledger."""
        lines = []
        dep, rt = self.costs.get("deployment"), self.costs.get("run_total")
        if dep is not None:
            lines.append(
                f"deployment ${dep.usd_per_hour:,.2f}/h ({dep.label}): "
                + "; ".join(q.label() for q in dep.quotes.values())
            )
        if rt is not None and rt.items:
            lines.append(
                f"run total ${rt.usd:,.2f} over {rt.hours:.2f} h ({'billed' if rt.billed else 'modelled'})"
            )
        return lines


def _ensure_browser() -> None:
    """kaleido 1.x drives a Chrome: use Debian's chromium (facts.md) when no browser is configured."""
    if not os.environ.get("BROWSER_PATH") and Path(CHROMIUM).exists():
        os.environ["BROWSER_PATH"] = CHROMIUM


def cost_context(data: RunData, live: dict[str, float] | None = None) -> dict[str, Any]:
    """$/h of this run's deployment and where the price came from (summary's own $/h wins)."""
    from r1lab.cost import deployment_cost, run_total

    summary_rate = next((p.get("usd_per_hour") for p in data.points if p.get("usd_per_hour")), None)
    ctx: dict[str, Any] = {"usd_per_hour": summary_rate, "price_label": "the $/h recorded in summary.json",
                           "deployment": None, "run_total": None}  # fmt: skip
    if data.exp is None:
        return ctx
    # the run's price quotes as it was resolved (runs before it: none)
    resolved = data.run_dir / resolve.FILENAME
    resolved_quotes = resolve.load(data.run_dir).prices if resolved.exists() else None
    try:
        dep = deployment_cost(data.exp, live=live, quotes=resolved_quotes)
    except KeyError as exc:
        ctx["error"] = str(exc)
        return ctx
    ctx["deployment"] = dep
    quotes = "; ".join(q.label() for q in dep.quotes.values())
    if summary_rate is None:
        ctx["usd_per_hour"] = dep.gpu_usd_per_hour
        ctx["price_label"] = f"${dep.gpu_usd_per_hour:,.2f}/h of GPUs at {quotes}"
    else:
        ctx["price_label"] = f"${summary_rate:,.2f}/h (summary.json; prices {quotes})"
    if data.ledger:
        ctx["run_total"] = run_total(data.exp, data.ledger, live=live, quotes=resolved_quotes)
    return ctx


def _with_costs(data: RunData, usd_per_hour: float | None) -> None:
    """Fill $/Mtok of points whose summary lacks them (in memory; files stay as written)."""
    from r1lab.cost import usd_per_mtok

    for p in data.summary.get("points", []):
        if p.get("usd_per_mtok_out") is None and usd_per_hour:
            p["usd_per_hour"] = usd_per_hour
            p["usd_per_mtok_out"] = usd_per_mtok(usd_per_hour, p.get("output_tok_s"))
            p["usd_per_mtok_in"] = usd_per_mtok(usd_per_hour, p.get("input_tok_s"))


def make_charts(data: RunData, costs: dict[str, Any]) -> tuple[dict[str, go.Figure], dict[str, str]]:
    """Every chart that has data; for the others, why not."""
    dep = costs.get("deployment")
    gpu_rate = dep.gpu_usd_per_hour if dep is not None else costs.get("usd_per_hour")  # as the planner counts
    builders: dict[str, tuple[Callable[[], go.Figure | None], str]] = {
        "summary_table": (lambda: C.summary_table(data), "summary.json has no points"),
        "latency_vs_concurrency": (lambda: C.latency_vs_concurrency(data), "no concurrency-shaped load points"),
        "throughput_vs_concurrency": (lambda: C.throughput_vs_concurrency(data), "no concurrency-shaped load points"),
        "pareto": (lambda: C.pareto(data), "no point with tok/s/user and tok/s/GPU"),
        "latency_cdfs": (lambda: C.latency_cdfs(data), "no successful request records"),
        "reasoning": (lambda: C.reasoning(data), "no request had a reasoning phase"),
        "server_timeseries": (lambda: C.server_timeseries(data), "metrics.parquet has no KV/queue series"),
        "cost_vs_concurrency": (lambda: C.cost_vs_concurrency(data, costs.get("usd_per_hour"), costs["price_label"]),
                                "no price for this deployment"),
        "gpu_memory": (lambda: C.gpu_memory(data), "no GPU series and no memory model"),
        "predicted_vs_measured": (lambda: C.predicted_vs_measured(data), "plan.json absent or no matching points"),
        "topology_cost": (lambda: C.topology_cost(data, gpu_rate), "plan.json absent"),
    }  # fmt: skip
    charts, missing = {}, {}
    for name, (build, why) in builders.items():
        fig = build()
        if fig is None:
            missing[name] = why
        else:
            charts[name] = fig
    return charts, missing


def write_charts(charts: dict[str, go.Figure], out_dir: Path, png: bool = True) -> dict[str, list[Path]]:
    """charts/<name>.html (plotly.min.js next to them, offline) and charts/<name>.png (kaleido + chromium)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {}
    for name, fig in charts.items():
        p = out_dir / f"{name}.html"
        _refuse_existing(p)
        fig.write_html(p, include_plotlyjs="directory", div_id=name, full_html=True)
        files[name] = [p]
    if png and charts:
        _ensure_browser()
        paths = [out_dir / f"{n}.png" for n in charts]
        for p in paths:
            _refuse_existing(p)
        figs = [fig.to_dict() for fig in charts.values()]
        sizes = [(PNG_SIZE[0], max(PNG_SIZE[1], int(fig.layout.height or 0))) for fig in charts.values()]
        # kaleido sizes an image by its own arguments (700 x 500 without them), not by the figure's layout
        pio.write_images(figs, paths, width=[w for w, _ in sizes], height=[h for _, h in sizes])
        for name, p in zip(charts, paths, strict=True):
            if p.exists():
                files[name].append(p)
            else:  # plotly.io.write_images drops the render errors kaleido returns: say which image is missing
                warnings.warn(
                    f"{p}: kaleido rendered no PNG for chart {name!r} (its HTML page is there)", stacklevel=2
                )
    return files


def _refuse_existing(p: Path) -> None:
    if p.exists():
        raise FileExistsError(f"{p} exists and results are never overwritten: pass another output directory")


def build_report(run_dir: str | Path, out: str | Path | None = None, *, png: bool = True,
                 live_prices: dict[str, float] | None = None) -> Report:  # fmt: skip
    """Read the run dir, write charts and report.html; returns what was built (and what was not, and why)."""
    rd = Path(run_dir)
    with step(f"reading {rd}"):
        data = load_run(rd)
    if out is None:
        out = (
            rd
            if not (rd / "report.html").exists()
            else rd / f"rebuilt-{_dt.datetime.now(_dt.UTC):%Y%m%d-%H%M%S}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _refuse_existing(out / "report.html")
    costs = cost_context(data, live_prices)
    _with_costs(data, costs.get("usd_per_hour"))
    with step("charts"):
        charts, missing = make_charts(data, costs)
        found = A.findings(data)
    with step(f"writing {len(charts)} charts{' + PNG' if png else ''}"):
        files = write_charts(charts, out / "charts", png=png)
    from r1lab.report.vllm_bench import export_run  # each load point also as `vllm bench serve` JSON

    export_run(data, out)
    html_text = render_html(data, charts, missing, found, costs)
    (out / "report.html").write_text(redact(html_text), encoding="utf-8")
    return Report(out / "report.html", charts, files, found, missing, data.notes, data, costs)


# --- HTML ---------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px} h1{margin-bottom:0} .sub{color:#666;margin-top:4px}
table{border-collapse:collapse;font-size:12px;margin:8px 0} th,td{border:1px solid #ddd;padding:3px 6px;text-align:right}
th{background:#f3f6fa} td:first-child,th:first-child{text-align:left} .chart{margin:18px 0;min-height:300px}
.tag{display:inline-block;padding:1px 6px;border-radius:8px;font-size:11px;background:#eef;color:#335}
.table-wrap{max-width:100%;overflow-x:auto} .yes{color:#b00;font-weight:600} .no{color:#070} .unknown{color:#777} .note{color:#666;font-size:13px}
"""

# After every plot has drawn, record each chart container's box and what it drew (read by r1lab.report.render
# through headless Chromium); a chart that never plotted shows up with 0 traces.
_RENDER_HOOK = """
<script>
window.addEventListener('load', function () {
  setTimeout(function () {
    var out = [];
    document.querySelectorAll('[data-chart]').forEach(function (box) {
      var el = box.querySelector('.js-plotly-plot') || box;
      var r = el.getBoundingClientRect();
      out.push({id: box.getAttribute('data-chart'), x: r.left + window.scrollX, y: r.top + window.scrollY,
                w: r.width, h: r.height, traces: (el.data || []).length,
                drawn: el.querySelectorAll('.scatterlayer .trace, .barlayer .trace, .table .y-column').length});
    });
    var pre = document.createElement('pre');
    pre.id = 'r1lab-render-check'; pre.style.display = 'none';
    pre.textContent = JSON.stringify({charts: out, height: document.documentElement.scrollHeight});
    document.body.appendChild(pre);
  }, 300);
});
</script>
"""

SECTIONS = [
    ("Summary per load point", ["summary_table"]),
    ("Latency", ["latency_vs_concurrency", "latency_cdfs", "reasoning"]),
    ("Throughput and saturation", ["throughput_vs_concurrency", "pareto"]),
    ("Server state", ["server_timeseries", "gpu_memory"]),
    ("Cost", ["cost_vs_concurrency", "topology_cost"]),
    ("Measured against the plan", ["predicted_vs_measured"]),
]


def _table(df: Any) -> str:
    """Formatted numbers and human headers (r1lab.report.tables), in a box that scrolls rather than overflows."""
    from r1lab.report.tables import html_table

    return f"<div class='table-wrap'>{html_table(df)}</div>"


def _pvm_display(pvm: Any) -> Any:
    """Measured against predicted, one column per metric: "measured / predicted (ratio)" fits a page."""
    import pandas as pd

    from r1lab.report.tables import fmt_number

    rows = []
    for _, r in pvm.iterrows():
        row = {"scenario": r["scenario"], "concurrency": r["concurrency"]}
        for key, label in (("ttft_ms_p50", "TTFT p50 (ms)"), ("tpot_ms_p50", "TPOT p50 (ms)"),
                           ("e2el_ms_p50", "E2E p50 (ms)"), ("output_tok_s", "output tok/s")):  # fmt: skip
            m, p, q = r.get(f"{key}_measured"), r.get(f"{key}_predicted"), r.get(f"{key}_ratio")
            ratio = f" (×{q:.2f})" if isinstance(q, float) and q == q else ""
            row[f"{label}: measured / predicted"] = f"{fmt_number(m) or '–'} / {fmt_number(p) or '–'}{ratio}"
        row["source"] = r.get("source")
        rows.append(row)
    return pd.DataFrame(rows)


def render_html(data: RunData, charts: dict[str, go.Figure], missing: dict[str, str], found: list[A.Finding],
                costs: dict[str, Any]) -> str:  # fmt: skip
    """The self-contained report page."""
    from plotly.offline import get_plotlyjs

    e = html.escape
    exp = data.exp
    title = f"r1lab report: {exp.name if exp else data.run.get('experiment', '?')} / {data.run_id}"
    head = [f"<h1>{e(title)}</h1>"]
    cut = data.summary.get("run_outcome") or {}
    if cut and not cut.get("complete", True):
        head.append(f"<p class='note'><b>This run was cut short</b>: {e(str(cut.get('reason')))}. The figures "
                    "below cover only what was measured before it stopped.</p>")  # fmt: skip
    if exp is not None:
        s = exp.serving
        head.append(
            f"<p class='sub'>{e(exp.description)}<br>{exp.nodes} pod(s) x {exp.gpus_per_node} {e(str(exp.gpu_type))}, "
            f"{e(s.engine)} TP{s.tensor_parallel} PP{s.pipeline_parallel} DP{s.data_parallel}"
            f"{' EP' if s.expert_parallel else ''}{', Dynamo ' + e(exp.dynamo.router_mode) if exp.dynamo.enabled else ''}"
            f"{' P/D' if exp.dynamo.disaggregated else ''}; provider {e(exp.provider.kind)}; "
            f"git {e(str(data.run.get('git_sha')))}</p>"
        )  # fmt: skip
    head.append(
        f"<p>Numbers are labelled: <span class='tag'>{e(data.source_label)}</span> for this run's load results"
        + (" (the twin: real HTTP, Dynamo and load, GPUs replaced by Dynamo's mocker timed by r1lab's performance "
           "model; costs are what the same pods would cost on RunPod)" if data.on_twin else "")
        + ", <span class='tag'>modelled</span> for the planner's predictions and the memory model.</p>"
    )  # fmt: skip
    body: list[str] = []
    # findings first: what a reader wants
    body.append("<h2>Bottleneck findings</h2><table><tr><th>finding</th><th>verdict</th><th>summary</th>"
                "<th>evidence</th><th>source</th></tr>")  # fmt: skip
    for f in found:
        body.append(f"<tr><td>{e(f.kind)}</td><td class='{e(f.verdict)}'>{e(f.verdict)}</td><td>{e(f.summary)}</td>"
                    f"<td style='text-align:left'>{'<br>'.join(e(x) for x in f.evidence)}</td><td>{e(f.source)}</td></tr>")  # fmt: skip
    body.append("</table>")
    name, _ = A.main_sweep(data)
    sat = A.saturation(data, name) if name else None
    if sat and name:  # a saturation only comes with a sweep's name
        if sat.get("saturated"):
            body.append(f"<p>Saturation ({e(name)}): throughput stops growing at concurrency "
                        f"<b>{sat['knee_concurrency']}</b> with {sat['knee_throughput']:,.0f} output tok/s "
                        f"({e(data.source_label)}).</p>")  # fmt: skip
        else:
            body.append(f"<p>Saturation ({e(name)}): not reached. {e(sat.get('note', ''))}</p>")
    for p in (p for p in data.points if p.get("client_limited")):
        body.append(f"<p class='warn'><b>Client-limited</b> {e(p['scenario'])} {e(p['point'])}: "
                    f"{e(p['client_limited_why'])}. Fix: {e(p['client_fix'])}.</p>")  # fmt: skip
    body.append(_cost_html(costs, data))
    for section, names in SECTIONS:
        present = [n for n in names if n in charts]
        body.append(f"<h2>{e(section)}</h2>")
        if section == "Summary per load point":
            df = C.summary_frame(data)
            body.append(_table(df) if not df.empty else "<p class='note'>no load points</p>")
            few = C.small_samples(data)
            if few:
                body.append(f"<p class='note'>⚠ p99 (and p90) from fewer than {C.MIN_P99_SAMPLES} requests is close to "
                            "the slowest request, not a percentile: " + e(", ".join(f"{a} {b} ({n} requests)" for a, b, n in few))
                            + ". Raise <code>requests_per_point</code> for tail latencies.</p>")  # fmt: skip
        if section == "Measured against the plan":
            pvm = A.predicted_vs_measured(data)
            if not pvm.empty:
                body.append(_table(_pvm_display(pvm)))
        for n in present:
            if n == "summary_table":
                continue  # shown as the HTML table above; the chart file is in charts/
            body.append(f"<div class='chart' data-chart='{n}'>" + pio.to_html(charts[n], include_plotlyjs=False, full_html=False,
                                                             div_id=n, default_width="100%") + "</div>")  # fmt: skip
        for n in names:
            if n in missing:
                body.append(f"<p class='note'>{e(n)}: not drawn: {e(missing[n])}.</p>")
    body.append(_real_engine_html(data.run_dir))
    if data.notes:
        body.append("<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in data.notes) + "</ul>")
    body.append(f"<p class='note'>Rebuilt from the run directory's files alone: <code>r1lab report {e(str(data.run_dir))}"
                "</code>. Charts as HTML and PNG under charts/.</p>")  # fmt: skip
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{e(title)}</title><style>{_CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        + "\n".join(head + body)
        + _RENDER_HOOK
        + "</body></html>"
    )


def _real_engine_html(run_dir: Path) -> str:
    """04's real-engine check (real-engine.json, dynamo.real_engine_requests): KV moved per request."""
    p = Path(run_dir) / "real-engine.json"
    if not p.exists():
        return ""
    e = html.escape
    real = json.loads(p.read_text(encoding="utf-8"))
    rows = "".join(
        f"<tr><td>{r['prompt_tokens']}</td><td>{r['nixl_transfers']:.0f}</td><td>{r['nixl_bytes']:,.0f}</td>"
        f"<td>{r['link_rx_bytes']:,}</td><td>{r['predicted_bytes']:,}</td>"
        f"<td>{r['nixl_bytes'] / r['predicted_bytes'] if r['predicted_bytes'] else float('nan'):.3f}</td><td>{r['tokens_external']:.0f}</td>"
        f"<td>{r['tokens_local']:.0f}</td><td>{r.get('request_s', '')}</td></tr>"
        for r in real.get("requests", [])
    )
    src = real.get("sources") or {}
    sources = (
        "<ul>"
        + "".join(f"<li>{e(k.replace('_', ' '))}: {e(v)}</li>" for k, v in src.items())
        + (f"<li>tolerance: {e(real['tolerance'])}</li>" if real.get("tolerance") else "")
        + "</ul>"
        if src
        else "<p>Predicted bytes: one MLA copy per decode TP rank, whole KV blocks (modelled).</p>"
    )
    phases = "".join(
        f"<li>{e(name)}: " + ", ".join(f"{e(k)} {v:g} s" for k, v in ph.items()) + "</li>"
        for name, ph in (real.get("startup_phases_s") or {}).items()
    )
    return (
        f"<h2>Real prefill/decode KV transfer</h2><p><span class='tag'>{e(real.get('engine', '?'))}</span> "
        f"{e(real.get('topology', ''))}; started in {real.get('start_s', '?')} s. Times are the CPU engine's on the "
        f"twin's shared cores, not R1's.</p>{sources}<table><tr><th>prompt tokens</th>"
        "<th>NIXL transfers</th><th>NIXL bytes</th><th>decode pod link rx bytes</th><th>predicted bytes</th>"
        "<th>NIXL / predicted</th>"
        f"<th>prompt tokens received</th><th>computed on decode</th><th>request s</th></tr>{rows}</table>"
        + (
            f"<p>Start-up, seconds after the launch (from the workers' logs):</p><ul>{phases}</ul>"
            if phases
            else ""
        )
    )


def _cost_html(costs: dict[str, Any], data: RunData) -> str:
    e = html.escape
    parts = ["<h2>Cost</h2>"]
    dep = costs.get("deployment")
    if dep is not None:
        label = "billed on RunPod" if dep.billed else "modelled: what these pods would cost on RunPod"
        parts.append(f"<p>Deployment: <b>${dep.usd_per_hour:,.2f}/h</b> ({dep.gpus} GPUs ${dep.gpu_usd_per_hour:,.2f}/h + "
                     f"volume ${dep.volume_usd_per_hour:,.3f}/h) <span class='tag'>{e(label)}</span>; prices: "
                     + "; ".join(e(q.label()) for q in dep.quotes.values()) + "</p>")  # fmt: skip
    rt = costs.get("run_total")
    if rt is not None and rt.items:
        parts.append(f"<p>This run: <b>${rt.usd:,.2f}</b> over {rt.hours:.2f} h of held resources "
                     f"({'billed' if rt.billed else 'modelled'}, from ledger.jsonl).</p>")  # fmt: skip
    if costs.get("error"):
        parts.append(f"<p class='note'>{e(costs['error'])}</p>")
    return "".join(parts)


def copy_run(src: str | Path, dst: str | Path) -> Path:
    """Copy a run directory (everything but a live server's data) for a rebuild elsewhere."""
    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns("prometheus")))


def chart_json(report: Report) -> dict[str, Any]:
    """The charts' data as JSON (for comparing two builds)."""
    return {n: json.loads(f.to_json()) for n, f in report.charts.items()}
