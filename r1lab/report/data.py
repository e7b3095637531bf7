"""A run's results, read from its files alone (no server, no cloud): run.json, summary.json, requests.parquet
(or load/*/requests.jsonl), metrics.parquet, plan.json, ledger.jsonl. Every problem names the file and the fix."""

from __future__ import annotations

import json
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from r1lab.config import Experiment

SOURCE_LABELS = {
    "measured-twin": "measured on twin",
    "measured-gpu": "measured on GPU",
    "modelled": "modelled",
}


class ReportError(RuntimeError):
    pass


@dataclass
class RunData:
    run_dir: Path
    run: dict[str, Any]
    exp: Experiment | None
    summary: dict[str, Any]
    requests: pd.DataFrame
    metrics: pd.DataFrame
    plan: dict[str, Any] | None
    ledger: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.run.get("run_id") or self.run_dir.name)

    @property
    def on_twin(self) -> bool:
        return (self.exp.provider.kind if self.exp else "twin") == "twin"

    @property
    def source(self) -> str:
        """How this run's load numbers were obtained: measured-twin or measured-gpu."""
        srcs: set[str] = {p["source"] for p in self.points if p.get("source")}
        if len(srcs) == 1:
            return srcs.pop()
        return "measured-twin" if self.on_twin else "measured-gpu"

    @property
    def source_label(self) -> str:
        return SOURCE_LABELS.get(self.source, self.source)

    @property
    def points(self) -> list[dict[str, Any]]:
        return list(self.summary.get("points", []))

    def plan_topology(self) -> dict[str, Any] | None:
        if not self.plan:
            return None
        tid = self.plan.get("params_topology")
        return next((t for t in self.plan.get("topologies", []) if t.get("id") == tid), None)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}: not valid JSON ({exc}); the file is damaged: rerun the step that wrote it"
        ) from None


def load_requests(run_dir: Path) -> pd.DataFrame:
    """requests.parquet, else every load/*/requests.jsonl (a run killed before consolidation)."""
    pq = run_dir / "requests.parquet"
    if pq.exists():
        return pd.read_parquet(pq)
    from r1lab.bench.records import load_records

    recs = load_records(run_dir)
    return pd.DataFrame(recs)


def load_run(run_dir: str | Path) -> RunData:
    """Everything a report needs from one run directory."""
    rd = Path(run_dir)
    if not (rd / "run.json").exists():
        raise ReportError(f"{rd}: no run.json: not a run directory (pass outputs/<experiment>/<run_id>)")
    run = _read_json(rd / "run.json")
    notes: list[str] = []
    exp = None
    if isinstance(run.get("params"), dict):
        try:
            exp = Experiment.model_validate(run["params"])
        except ValueError as exc:
            notes.append(f"run.json params do not validate against this r1lab ({str(exc).splitlines()[0]})")
    requests = load_requests(rd)
    if (rd / "summary.json").exists():
        summary = _read_json(rd / "summary.json")
        if not isinstance(summary, dict) or "points" not in summary:
            raise ReportError(f"{rd / 'summary.json'}: key 'points' missing (schema in docs/architecture.md)")
    elif not requests.empty:
        summary = _summarize(rd, exp, requests)
        notes.append("summary.json absent: summarized here from the request records")
    else:
        raise ReportError(
            f"{rd}: neither summary.json nor request records (load/*/requests.jsonl): run 05_load_test first"
        )
    metrics = pd.DataFrame(columns=["time", "source", "metric", "labels", "value"])
    if (rd / "metrics.parquet").exists():
        from r1lab.monitor.store import load as load_metrics

        metrics = load_metrics(rd / "metrics.parquet")
    else:
        hint = (
            ": the scrapes are in prometheus/data: `r1lab report RUN_DIR --recover-metrics`"
            if (rd / "prometheus" / "data").is_dir()
            else ""
        )
        notes.append(f"metrics.parquet absent: no server time series (KV usage, queues, GPU memory){hint}")
    plan = _read_json(rd / "plan.json") if (rd / "plan.json").exists() else None
    if plan is None:
        notes.append("plan.json absent: no comparison with the planner's prediction (run 00_plan)")
    ledger = []
    if (rd / "ledger.jsonl").exists():
        from r1lab.teardown import Ledger

        ledger = Ledger(rd).entries()
    from r1lab.outcome import run_outcome

    outcome = run_outcome(rd)
    if outcome is not None:  # in memory: the report says how the run ended; summary.json stays as written
        summary = {**summary, "run_outcome": outcome.as_dict()}
        if not outcome.complete:
            notes.insert(0, f"this run was {outcome.line()}")
    return RunData(rd, run, exp, summary, requests, metrics, plan, ledger, notes)


def _summarize(rd: Path, exp: Experiment | None, requests: pd.DataFrame) -> dict[str, Any]:
    from r1lab.bench.metrics import Slo, group_points, summarize_point
    from r1lab.bench.saturation import find_knee

    records = [_plain(r) for r in requests.to_dict("records")]
    slo = Slo(exp.load.slo.ttft_ms, exp.load.slo.tpot_ms, exp.load.slo.e2el_ms) if exp else None
    gpus = exp.total_gpus if exp else None
    source = "measured-twin" if (exp is None or exp.provider.kind == "twin") else "measured-gpu"
    points = [summarize_point(rs, slo=slo, gpus=gpus, source=source) for rs in group_points(records).values()]
    sat = {}
    for name in dict.fromkeys(p["scenario"] for p in points):
        pts = [p for p in points if p["scenario"] == name and p.get("concurrency") and not p.get("rate")]
        if len(pts) >= 2:
            sat[name] = find_knee(pts)
    return {"schema_version": 1, "run_id": rd.name, "points": points, "saturation": sat}


def _plain(r: Mapping[Hashable, Any]) -> dict[str, Any]:
    """A record as the JSON schema has it: NaN -> None, arrays -> lists (parquet reads give pandas/numpy types)."""
    out = {}
    for k, v in r.items():
        if hasattr(v, "tolist"):
            v = v.tolist()
        elif isinstance(v, float) and v != v:
            v = None
        out[str(k)] = v  # column names: str already
    return out
