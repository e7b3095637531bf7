"""`r1lab plan` reads as a decision: a recommendation line, the run's modelled time and cost against its budget,
latencies in human units, load points that cannot reach their concurrency flagged, each topology once."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from r1lab.perf.plan_text import fmt_ms

REPO = Path(__file__).resolve().parent.parent


def _plan(params: str) -> str:
    res = subprocess.run([str(REPO / ".venv" / "bin" / "r1lab"), "plan", params], cwd=REPO, capture_output=True,
                         text=True, timeout=180)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_fmt_ms() -> None:
    assert [fmt_ms(v) for v in (8.25, 67.4, 2130, 16593, 93101, 60_710_516)] == [
        "8.2 ms", "67 ms", "2.13 s", "16.6 s", "1 min 33 s", "16 h 52 min"]  # fmt: skip


def test_plan_h200_reads_as_a_decision() -> None:
    out = _plan("params/runpod-1x8-h200.yaml")
    lines = out.splitlines()
    assert lines[2].startswith("Recommendation: ") and "per M output tokens" in lines[2]
    budget = next(line for line in lines if line.startswith("This run (modelled): the load test takes"))
    assert "budget 2 h / $80" in budget and re.search(r"\$\d+\.\d\d at \$36\.72/h", budget), budget
    assert not re.search(r"\b\d{5,} ms|\d,\d{3}(,\d{3})* ms", out), "latencies in raw ms"
    c256 = next(line for line in lines if re.match(r"\s+sweep\s+c=256 ", line))
    assert "⚠" not in c256, c256  # the sweep is time-bound (duration_s): c=256 really holds 256 in flight
    headers = [line for line in lines if re.match(r"^[* ] 1 x 8 H200, TP8  \[", line)]
    assert len(headers) == 1, headers  # the params' topology once, not again as a standard alternative


def test_plan_flags_a_point_that_cannot_reach_its_concurrency(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO / "params/runpod-1x8-h200.yaml").read_text())
    sweep = next(s for s in params["load"]["scenarios"] if s["name"] == "sweep")
    sweep.pop("duration_s"), sweep.pop("warmup_s")
    sweep["requests_per_point"] = 128
    path = tmp_path / "h200-count-bound.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    lines = _plan(str(path)).splitlines()
    c256 = next(line for line in lines if re.match(r"\s+sweep\s+c=256 ", line))
    assert "⚠ requests_per_point 128 < concurrency 256" in c256
    c128 = next(line for line in lines if re.match(r"\s+sweep\s+c=128 ", line))
    assert "⚠" not in c128, c128


def test_plan_flags_budget_usd_before_budget_hours() -> None:
    out = _plan("params/runpod-2x8-h100nvl.yaml")
    assert "budget_usd $150 is spent after 2 h 56 min" in out
