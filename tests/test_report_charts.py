"""The report's charts as a reader sees them, in headless Chromium at 1,400 px: log axes labelled 1-2-5 in human
units (no minor-tick digits), concurrency ticks at the sweep's points, a second axis with round ticks, a warning
where p99 comes from few requests, nothing wider than the page, no CDN script."""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_run import REPO, make_run  # noqa: E402

SCREENS = Path(os.environ["R1LAB_SCREENS"]) if os.environ.get("R1LAB_SCREENS") else None
HUMAN = re.compile(r"^\d+(\.\d+)?[kMG]?$")


def _value(label: str) -> float:
    mult = {"k": 1e3, "M": 1e6, "G": 1e9}.get(label[-1], 1.0)
    return float(label.rstrip("kMG")) * mult


def _round(v: float) -> bool:
    """A tick a person would choose: at most two significant digits."""
    if v == 0:
        return True
    m = v / 10 ** math.floor(math.log10(abs(v)))
    return abs(m * 10 - round(m * 10)) < 1e-6


def test_log_ticks_and_labels() -> None:
    from r1lab.report.charts import fmt_tick, log_ticks

    assert log_ticks(40, 20_000) == [50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000]
    assert log_ticks(0.5, 2e6) == [1, 10, 100, 1000, 10000, 100000, 1000000]
    assert log_ticks(10.58, 20.6) == [12, 15, 20]
    assert [fmt_tick(v) for v in (20000, 1500, 1e6, 0.5, 3)] == ["20k", "1.5k", "1M", "0.5", "3"]


@pytest.mark.slow
def test_report_charts_in_chromium(tmp_path: Path) -> None:
    from r1lab.report import build_report
    from r1lab.report.render import check_layout

    rep = build_report(make_run(tmp_path), png=False)
    shot = (SCREENS or tmp_path) / "report.png"
    info = check_layout(rep.path, shot, width=1400)
    assert info["external_scripts"] == [] and info["scroll_width"] <= 1400 and not info["wide"], info
    charts = {c["id"]: c for c in info["charts"] if c["id"]}
    lat = charts["latency_vs_concurrency"]
    y = [t for t in lat["ticks"] if t[0].startswith("y")]  # ytick, y2tick, ... (one per panel)
    assert y and all(HUMAN.match(t[1]) for t in y), y
    assert len({t[2] for t in y}) == 1 and y[0][2] >= 11, "every log tick label in one readable size"
    assert all(_round(_value(t[1])) for t in y), y
    tpot = [t for t in y if 10 <= _value(t[1]) <= 25]
    assert len(tpot) >= 3, "a narrow log range still gets several ticks"
    x = sorted({_value(t[1]) for t in lat["ticks"] if t[0].startswith("x")})
    assert x == [1, 4, 16, 64], x  # the sweep's concurrencies, nothing else
    assert any("p99 from fewer than 100 requests" in n for n in lat["notes"]), lat["notes"]
    assert "p99 (and p90) from fewer than 100 requests" in rep.path.read_text()
    for cid in (
        "predicted_vs_measured",
        "cost_vs_concurrency",
        "latency_cdfs",
    ):  # every log axis, every chart
        ticks = [t for t in charts[cid]["ticks"]]
        assert ticks and all(HUMAN.match(t[1]) for t in ticks), (cid, ticks)
        assert len({t[2] for t in ticks}) == 1, (cid, "minor-tick labels in another size")
    pvm = sorted({_value(t[1]) for t in charts["predicted_vs_measured"]["ticks"] if t[0].startswith("x")})
    assert pvm and set(pvm) <= {1, 4, 16, 64}, pvm  # the compared points, no 2 3 5 6 7 8 9 minor digits
    thr = charts["throughput_vs_concurrency"]
    y2 = [_value(t[1]) for t in thr["ticks"] if t[0] == "y2tick"]
    assert len(y2) >= 3 and all(_round(v) for v in y2), y2
    assert shot.stat().st_size > 50_000


@pytest.mark.slow
def test_plan_memory_chart_in_chromium(tmp_path: Path) -> None:
    """00_plan's memory chart: one colour per component, the legend beside the bars, labels not clipped."""
    from r1lab.config import load_experiment
    from r1lab.perf import charts, planner
    from r1lab.report.render import check_layout

    plan = planner.plan_experiment(load_experiment(REPO / "params" / "runpod-2x8-h100nvl.yaml"))
    fig = charts.memory_chart(plan)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len({t.marker.color for t in bars}) == len(bars), "a colour used for two components"
    page = tmp_path / "memory.html"
    fig.write_html(page, include_plotlyjs=True, full_html=True, default_width="1300px")
    shot = (SCREENS or tmp_path) / "plan-memory-chart.png"
    info = check_layout(page, shot, width=1400)
    assert info["scroll_width"] <= 1400 and not info["wide"], info
    assert all(len(line) <= 24 for label in bars[0].x for line in label.split("<br>")), bars[0].x  # wrapped
    assert fig.layout.legend.x > 1  # beside the plot, not over the tick labels
