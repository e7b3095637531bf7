"""Saturation over a concurrency sweep: the knee where throughput stops growing while latency climbs.

Between consecutive points (sorted by concurrency) the scaling efficiency is
    (throughput_i / throughput_{i-1} - 1) / (concurrency_i / concurrency_{i-1} - 1)
(1.0: throughput grew in proportion to concurrency; 0: it did not grow). The knee is the last point before the
first step whose efficiency falls below `min_scaling` while the server shows it is overloaded: the latency metric
rose by at least `min_latency_rise` (a ratio; an engine that queues), or more than `max_error_rate` of the point's
requests failed (an engine or router that turns the excess away: Dynamo answers 500/503, so the requests that
succeed keep their latency). If no step does both, the sweep did not reach saturation and the report says so.
"""

from __future__ import annotations

from typing import Any

MAJORITY_FAILED = 0.5  # a point where at least this share of requests failed is past the knee


def find_knee(
    points: list[dict[str, Any]],
    *,
    throughput: str = "output_tok_s",
    latency: str = "e2el_ms",
    min_scaling: float = 0.2,
    min_latency_rise: float = 1.1,
    max_error_rate: float = 0.05,
) -> dict[str, Any]:
    """Knee of one scenario's summary points (those with a concurrency and a throughput)."""
    pts = sorted(
        (p for p in points if p.get("concurrency") and p.get(throughput)), key=lambda p: p["concurrency"]
    )
    out: dict[str, Any] = {
        "scenario": pts[0]["scenario"] if pts else None, "throughput": throughput, "latency": f"{latency}.p50",
        "min_scaling": min_scaling, "min_latency_rise": min_latency_rise, "max_error_rate": max_error_rate,
        "saturated": False,
        "knee_concurrency": None, "knee_throughput": None, "steps": [],
    }  # fmt: skip
    if len(pts) < 2:
        out["note"] = "need at least two concurrency points"
        return out
    best = max(pts, key=lambda p: p[throughput])
    out["max_throughput"] = best[throughput]
    out["max_throughput_concurrency"] = best["concurrency"]
    for a, b in zip(pts, pts[1:], strict=False):
        scaling = (b[throughput] / a[throughput] - 1.0) / (b["concurrency"] / a["concurrency"] - 1.0)
        la, lb = (a.get(latency) or {}).get("p50"), (b.get(latency) or {}).get("p50")
        rise = (lb / la) if (la and lb) else None
        err_a, err_b = _error_rate(a), _error_rate(b)
        out["steps"].append({"from": a["concurrency"], "to": b["concurrency"], "scaling": scaling,
                             "latency_ratio": rise, "error_rate": err_b})  # fmt: skip
        queued = rise is not None and rise >= min_latency_rise
        refused = err_b is not None and err_b > max_error_rate and err_b > (err_a or 0.0)
        # a point where most requests fail is past capacity whatever its throughput does (failures return fast,
        # so a closed loop sends more and the successes of its first wave can still look like growth)
        turned_away = err_b is not None and err_b >= MAJORITY_FAILED and err_b > (err_a or 0.0)
        if not out["saturated"] and ((scaling < min_scaling and (queued or refused)) or turned_away):
            why = f"latency x{rise:.2f}" if queued and not turned_away else f"{err_b:.0%} of requests failed"
            out.update(saturated=True, knee_concurrency=a["concurrency"], knee_throughput=a[throughput],
                       knee_why=why + f" at concurrency {b['concurrency']} while throughput grew {scaling:.0%} as "
                       "fast as the concurrency")  # fmt: skip
    if not out["saturated"]:
        out["note"] = f"throughput still scaled at concurrency {pts[-1]['concurrency']}: extend the sweep"
    return out


def _error_rate(p: dict[str, Any]) -> float | None:
    n = p.get("requests")
    return (p.get("errors") or 0) / n if n else None
