"""The ten-line summary of a run from its files (what `make demo` and `r1lab run` print at the end)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: float | None, unit: str, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f} {unit}"


def summary_lines(run_dir: Path) -> list[str]:
    """Ten lines from the run's files: saturation, latency there, throughput, cost (labelled); and 04's real P/D
    check when the run had one."""
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        return [f"no summary.json in {run_dir}: the load test did not complete"]
    summary: dict[str, Any] = json.loads(summary_path.read_text())
    points = summary.get("points", [])
    sats = summary.get("saturation") or {}
    scenario = "sweep" if "sweep" in sats else next(iter(sats), None)
    sat = sats.get(scenario) or {}
    # the knee when the sweep saturated; else its best point (and the summary says the sweep did not saturate)
    knee_c = sat.get("knee_concurrency") if sat.get("saturated") else sat.get("max_throughput_concurrency")
    sweep = [p for p in points if p.get("scenario") == scenario]
    at = next((p for p in sweep if p.get("concurrency") == knee_c), None) or {}
    best: dict[str, Any] = max(points, key=lambda p: p.get("output_tok_s") or 0, default={})
    if sat.get("saturated"):
        sat_line = f"{scenario}: knee at concurrency {knee_c}" + (
            f" ({sat['knee_why']})" if sat.get("knee_why") else ""
        )
    else:
        sat_line = (
            f"{scenario}: not reached up to concurrency {knee_c} ({sat.get('note', 'extend the sweep')})"
        )
    where = f"c={knee_c}"
    source = at.get("source", "measured-twin")
    lines = [
        f"experiment        {json.loads((run_dir / 'run.json').read_text())['experiment']}  ({source}: GPUs are "
        "simulated by the mocker, timed by the performance model)",
        f"load points       {len(points)} in {len({p.get('scenario') for p in points})} scenarios, "
        f"{sum(p.get('requests', 0) for p in points):,} requests, {sum(p.get('errors', 0) for p in points)} errors",
        f"saturation        {sat_line}",
        f"TTFT at {where:<9} p50 {_fmt(at.get('ttft_ms', {}).get('p50'), 'ms')}, p99 {_fmt(at.get('ttft_ms', {}).get('p99'), 'ms')}",
        f"TPOT at {where:<9} p50 {_fmt(at.get('tpot_ms', {}).get('p50'), 'ms', 1)}, p99 {_fmt(at.get('tpot_ms', {}).get('p99'), 'ms', 1)}",
        f"tok/s at {where:<8} {_fmt(at.get('output_tok_s'), 'output tok/s', 1)}, {_fmt(at.get('tok_s_per_gpu'), 'tok/s/GPU', 1)}, "
        f"{_fmt(at.get('tok_s_per_user'), 'tok/s/user', 1)}",
        f"peak throughput   {_fmt(best.get('output_tok_s'), 'output tok/s', 1)} at "
        f"{best.get('scenario')} c={best.get('concurrency')}",
        f"cost (modelled)   {_fmt(at.get('usd_per_hour'), '$/h', 2)} for {at.get('gpus', '?')} GPUs; "
        f"{_fmt(at.get('usd_per_mtok_out'), '$ per M output tokens', 2)} at {where}",
        *_real_engine_line(run_dir),
        f"report            {run_dir / 'report.html'}",
        f"notebooks         {run_dir / 'notebooks'}",
    ]
    return lines


def _real_engine_line(run_dir: Path) -> list[str]:
    """04's real P/D check (real-engine.json), labelled with its engine; nothing when the run had none."""
    p = run_dir / "real-engine.json"
    if not p.exists():
        return []
    real = json.loads(p.read_text())
    reqs = real.get("requests", [])
    moved = sum(r.get("nixl_bytes", 0) for r in reqs)
    predicted = sum(r.get("predicted_bytes", 0) for r in reqs)
    agree = sum(bool(r.get("agrees")) for r in reqs)
    return [
        f"real P/D engine   {len(reqs)} requests, KV by NIXL {moved:,.0f} B measured vs {predicted:,} B modelled "
        f"by the planner ({agree} of {len(reqs)} within tolerance), started in {real.get('start_s', '?')} s "
        f"({real.get('engine', '?')})"
    ]
