"""Trend checks for a sustained stress phase: does anything drift while the load stays constant?

The measured requests are cut into windows by send time; per window: error rate, TTFT p50, TPOT p50, requests/s.
Scraped server series (metrics.parquet rows: time, source, metric, labels, value) add KV-cache usage and memory.
A least-squares slope over the phase, expressed as the change across the whole phase relative to the mean,
flags drift beyond a threshold (errors: any rise of more than `max_error_rise` absolute).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from r1lab.bench.metrics import is_ok, request_latencies

SERVER_SERIES = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc",),
    "server_memory_bytes": ("process_resident_memory_bytes",),
    "requests_waiting": ("vllm:num_requests_waiting",),
}


def _slope_check(name: str, t: np.ndarray, y: np.ndarray, max_rise: float, relative: bool = True) -> dict:
    ok_idx = ~np.isnan(y)
    t, y = t[ok_idx], y[ok_idx]
    if len(t) < 3 or np.ptp(t) == 0:
        return {"name": name, "ok": None, "note": "fewer than 3 windows"}
    slope = float(np.polyfit(t, y, 1)[0])
    change = slope * float(np.ptp(t))
    mean = float(np.mean(y))
    rise = change / mean if relative and mean else change
    return {"name": name, "slope_per_min": slope * 60.0, "change_over_phase": change, "mean": mean,
            "rise": rise, "max_rise": max_rise, "ok": bool(rise <= max_rise),
            "first": float(y[0]), "last": float(y[-1])}  # fmt: skip


def windows(records: list[dict[str, Any]], window_s: float) -> list[dict[str, Any]]:
    """Per-window stats of measured requests (by send time)."""
    rs = [r for r in records if not r.get("warmup") and r.get("t_send") is not None]
    if not rs:
        return []
    t0 = min(r["t_send"] for r in rs)
    buckets: dict[int, list[dict[str, Any]]] = {}
    for r in rs:
        buckets.setdefault(int((r["t_send"] - t0) // window_s), []).append(r)
    out = []
    for k in sorted(buckets):
        b = buckets[k]
        ok = [r for r in b if is_ok(r)]
        lat = [request_latencies(r) for r in ok]
        tp = [x["tpot"] for x in lat if x["tpot"] is not None]
        tt = [x["ttft"] for x in lat if x["ttft"] is not None]
        out.append({
            "t": t0 + (k + 0.5) * window_s, "requests": len(b), "error_rate": 1 - len(ok) / len(b),
            "ttft_p50_ms": float(np.median(tt) * 1e3) if tt else float("nan"),
            "tpot_p50_ms": float(np.median(tp) * 1e3) if tp else float("nan"), "rps": len(b) / window_s,
        })  # fmt: skip
    return out


def stress_checks(
    records: list[dict[str, Any]],
    *,
    window_s: float = 30.0,
    metrics: Any = None,
    max_latency_rise: float = 0.2,
    max_error_rise: float = 0.01,
    max_server_rise: float = 0.2,
) -> dict[str, Any]:
    """Trend checks of one stress phase; `metrics` is an optional DataFrame in metrics.parquet's layout."""
    ws = windows(records, window_s)
    t = np.array([w["t"] for w in ws], dtype=float)
    checks = []
    if ws:
        checks.append(_slope_check("error_rate", t, np.array([w["error_rate"] for w in ws]), max_error_rise,
                                   relative=False))  # fmt: skip
        checks.append(
            _slope_check("ttft_p50_ms", t, np.array([w["ttft_p50_ms"] for w in ws]), max_latency_rise)
        )
        checks.append(
            _slope_check("tpot_p50_ms", t, np.array([w["tpot_p50_ms"] for w in ws]), max_latency_rise)
        )
    if metrics is not None and len(ws) and len(metrics):
        lo, hi = t[0] - window_s / 2, t[-1] + window_s / 2
        m = metrics[(metrics["time"] >= lo) & (metrics["time"] <= hi)]
        for name, names in SERVER_SERIES.items():
            s = m[m["metric"].isin(names)]
            if len(s):
                g = s.groupby("time")["value"].sum().sort_index()
                checks.append(_slope_check(name, g.index.to_numpy(float), g.to_numpy(float), max_server_rise))
    return {"window_s": window_s, "windows": ws, "checks": checks,
            "ok": all(c["ok"] is not False for c in checks)}  # fmt: skip
