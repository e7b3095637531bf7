"""Each load point as a `vllm bench serve` result JSON (`--save-result`), for scripts that read that format.

Mapping (r1lab record -> vllm bench key; definitions are vLLM's, as in r1lab.bench.metrics):
- completed = successful measured requests; failed = measured requests with an error (warm-up excluded);
- duration = first send to last end of the measured requests (s);
- total_input_tokens / total_output_tokens = sums over successful requests;
- request_throughput = completed / duration; output_throughput = total_output_tokens / duration;
  total_token_throughput = (total_input_tokens + total_output_tokens) / duration;
  request_goodput = goodput_rps of summary.json (None without SLOs);
- mean/median/std/p{50,90,95,99}_{ttft,tpot,itl,e2el}_ms: over successful requests (ITL: all gaps pooled;
  TPOT: requests with more than one output token), std is the population standard deviation (numpy's, as vLLM);
- input_lens, output_lens, ttfts (s), itls (s, per request), start_times (s, epoch), errors (error_detail or "");
- max_concurrency = the point's concurrency; request_rate = its rate, or "inf" for a closed-loop point;
- plus r1lab's own: r1lab_scenario, r1lab_point, r1lab_run_id, r1lab_source (measured-twin | measured-gpu).
Files: `<out>/vllm_bench/<scenario>-<point>.json`, one per load point.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from r1lab.bench.metrics import is_ok, request_latencies

PERCENTILES = (50, 90, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2el")


def _stats(name: str, values_s: list[float]) -> dict[str, float | None]:
    a = np.asarray(values_s, dtype=float) * 1000.0
    keys = [
        f"mean_{name}_ms",
        f"median_{name}_ms",
        f"std_{name}_ms",
        *[f"p{p}_{name}_ms" for p in PERCENTILES],
    ]
    if a.size == 0:
        return dict.fromkeys(keys, None)
    vals = [a.mean(), np.median(a), a.std(), *[np.percentile(a, p) for p in PERCENTILES]]
    return {k: float(v) for k, v in zip(keys, vals, strict=True)}


def point_result(records: list[dict[str, Any]], summary_point: dict[str, Any] | None = None,
                 run: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """One load point's records as a vllm bench serve result dict."""
    measured = [r for r in records if not r.get("warmup")]
    ok = [r for r in measured if is_ok(r)]
    sends = [r["t_send"] for r in measured if r.get("t_send") is not None]
    ends = [r["t_end"] for r in measured if r.get("t_end") is not None]
    duration = (max(ends) - min(sends)) if sends and ends else 0.0
    lat = [request_latencies(r) for r in ok]
    tin = sum(int(r.get("input_tokens") or 0) for r in ok)
    tout = sum(int(r.get("output_tokens") or 0) for r in ok)
    first = records[0] if records else {}
    per_s = (lambda v: v / duration) if duration > 0 else (lambda v: 0.0)
    params = (run or {}).get("params") or {}
    result: dict[str, Any] = {
        "date": (run or {}).get("created"),
        "backend": "openai",
        "model_id": (params.get("model") or {}).get("repo_id"),
        "served_model_name": (params.get("model") or {}).get("served_name"),
        "num_prompts": len(measured),
        "request_rate": first.get("rate") if first.get("rate") else "inf",
        "max_concurrency": first.get("concurrency"),
        "duration": duration,
        "completed": len(ok),
        "failed": len(measured) - len(ok),
        "total_input_tokens": tin,
        "total_output_tokens": tout,
        "request_throughput": per_s(len(ok)),
        "request_goodput": (summary_point or {}).get("goodput_rps"),
        "output_throughput": per_s(tout),
        "total_token_throughput": per_s(tin + tout),
    }
    result.update(_stats("ttft", [x["ttft"] for x in lat if x["ttft"] is not None]))  # None: stamp uncertain
    result.update(_stats("tpot", [x["tpot"] for x in lat if x["tpot"] is not None]))
    result.update(_stats("itl", [g for x in lat for g in x["itl"]]))
    result.update(_stats("e2el", [x["e2el"] for x in lat]))
    result.update({
        "input_lens": [int(r.get("input_tokens") or 0) for r in measured],
        "output_lens": [int(r.get("output_tokens") or 0) if is_ok(r) else 0 for r in measured],
        "ttfts": [(r["t_first"] - r["t_send"]) if is_ok(r) else 0.0 for r in measured],
        "itls": [request_latencies(r)["itl"] if is_ok(r) else [] for r in measured],
        "start_times": [r.get("t_send") for r in measured],
        "errors": [("" if is_ok(r) else str(r.get("error_detail") or r.get("error") or "")) for r in measured],
        "r1lab_scenario": first.get("scenario"), "r1lab_point": first.get("point"),
        "r1lab_run_id": (run or {}).get("run_id"), "r1lab_source": (summary_point or {}).get("source"),
    })  # fmt: skip
    return result


def _records(df: Any) -> list[dict[str, Any]]:
    out = []
    for r in df.to_dict("records"):
        for k in ("chunk_t", "chunk_tokens"):
            v = r.get(k)
            r[k] = [float(x) for x in v] if v is not None else []
        for k, v in list(r.items()):
            if isinstance(v, float) and v != v:
                r[k] = None
        out.append(r)
    return out


def export_run(data: Any, out_dir: str | Path) -> list[Path]:
    """Write one vllm bench result JSON per load point of a RunData into out_dir/vllm_bench/ (never overwrites)."""
    df = data.requests
    if df is None or df.empty:
        return []
    target = Path(out_dir) / "vllm_bench"
    target.mkdir(parents=True, exist_ok=True)
    points = {(p.get("scenario"), p.get("point")): p for p in data.points}
    paths = []
    for (scenario, point), g in df.groupby(["scenario", "point"], sort=False):
        path = target / f"{scenario}-{point}.json"
        if path.exists():
            raise FileExistsError(f"{path} exists and results are never overwritten")
        res = point_result(_records(g), points.get((scenario, point)), data.run)
        path.write_text(json.dumps(res, indent=1, default=str), encoding="utf-8")
        paths.append(path)
    return paths
