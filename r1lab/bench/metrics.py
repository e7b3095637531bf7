"""Serving metrics per load point, defined exactly as `vllm bench serve` defines them.

Over successful, non-warm-up requests (error is null and a token chunk arrived):
- TTFT = first chunk with choices - send;  E2EL = last chunk with choices - send;
- ITL = every gap between consecutive chunks with choices (all requests pooled);
- TPOT = (E2EL - TTFT) / (output_tokens - 1), only requests with more than one output token;
- TTFT (token) = first chunk carrying tokens (reasoning or answer) - send; TTFO = first chunk carrying answer content
  (after the reasoning phase of a reasoning model: `delta.reasoning_content` / `delta.reasoning`) - send, as
  aiperf's time to first output; reasoning and answer tokens per request (their mean and percentiles);
- goodput = requests meeting every given SLO (TTFT, TPOT, E2EL; TPOT counted as 0 for <= 1 token) / duration.
Duration is first send to last end of the measured requests. Percentiles are numpy's linear interpolation.

Never silently wrong: a chunk whose stamp may be late (records' `stamp_uncertain`: delivered in one read with a
later token chunk, so the client read late or a receive stamp was shared) is kept out of what it would bias: its
gaps leave the ITL pool, a request whose first chunk is uncertain leaves TTFT and TPOT (a late first stamp makes
TPOT look faster than the server ran; a late last stamp only makes it slower). When more than
CLIENT_LIMITED_FRACTION of the requests or gaps are uncertain, or a worker's event loop lagged more than
CLIENT_LAG_MS at p99, the point is `client_limited`, with the reason and the fix.
Also: requests/s, input and output tokens/s, errors by kind, tok/s/GPU (output), tok/s/user (1000 / mean TPOT ms),
and $/h -> $ per million output/input tokens from a price passed in (bench knows nothing of clouds).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)
CLIENT_LIMITED_FRACTION = 0.01
CLIENT_LAG_MS = 5.0
CLIENT_FIX = (
    "the load generator could not keep up, so some chunk times are late: run more worker processes "
    "(load.processes), run the generator on a CPU pod next to the server (load.run_on: pod), or spread it over "
    "Locust workers"
)


@dataclass(frozen=True)
class Slo:
    """Service-level objectives in milliseconds (None: not checked)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None


def stats_ms(values_s: Iterable[float]) -> dict[str, float | None]:
    """mean, std (population, as numpy and `vllm bench serve`), p50, p90, p95, p99 in milliseconds (None when
    there are no values)."""
    a = np.asarray(list(values_s), dtype=float) * 1000.0
    if a.size == 0:
        return {"mean": None, "std": None, **{f"p{p}": None for p in PERCENTILES}}
    return {"mean": float(a.mean()), "std": float(a.std()),
            **{f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}}  # fmt: skip


def request_latencies(r: dict[str, Any]) -> dict[str, Any]:
    """ttft, e2el, tpot (or None), itls of one successful record, in seconds; ttft and tpot are None when the
    first chunk's stamp is uncertain, and uncertain gaps are left out of itl (see the module docstring)."""
    ct = r["chunk_t"]
    u = r.get("stamp_uncertain")  # a list, or an array when read from parquet
    unc = {int(i) for i in u} if u is not None else set()
    first_ok = 0 not in unc
    ttft = r["t_first"] - r["t_send"]
    e2el = ct[-1] - r["t_send"]
    out = r.get("output_tokens") or 0
    tpot = (e2el - ttft) / (out - 1) if out > 1 and first_ok else None
    return {
        "ttft": ttft if first_ok else None,
        "ttft_upper": ttft,
        "e2el": e2el,
        "tpot": tpot,
        "itl": [ct[i] - ct[i - 1] for i in range(1, len(ct)) if i not in unc and i - 1 not in unc],
        "ttft_token": _since_send(r, "t_first_token", unc),
        "ttfo": _since_send(r, "t_first_answer", unc),
        "gaps": max(0, len(ct) - 1),
        "uncertain": len(unc),
        "first_uncertain": not first_ok,
    }


def _since_send(r: dict[str, Any], key: str, unc: set[int]) -> float | None:
    """`r[key] - t_send`, or None when absent or when it may be a late-biased stamp (an uncertain chunk has it)."""
    t = r.get(key)
    if t is None or any(r["chunk_t"][i] == t for i in unc):
        return None
    return t - r["t_send"]


def token_stats(values: Iterable[float | None]) -> dict[str, float | None]:
    """mean, p50, p90, p99 of per-request token counts."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    return {"mean": float(a.mean()), **{f"p{p}": float(np.percentile(a, p)) for p in (50, 90, 99)}}


def is_ok(r: dict[str, Any]) -> bool:
    return r.get("error") is None and r.get("t_first") is not None and r.get("t_send") is not None


def summarize_point(
    records: list[dict[str, Any]],
    *,
    slo: Slo | None = None,
    gpus: int | None = None,
    usd_per_hour: float | None = None,
    source: str = "measured-twin",
    client: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One summary entry (docs/architecture.md `summary.json` points) for the records of one load point;
    `client`: the point's load-generator stats (loop lag), when known."""
    measured = [r for r in records if not r.get("warmup")]
    ok = [r for r in measured if is_ok(r)]
    sends = [r["t_send"] for r in measured if r.get("t_send") is not None]
    ends = [r["t_end"] for r in measured if r.get("t_end") is not None]
    duration = (max(ends) - min(sends)) if sends and ends else 0.0
    lat = [request_latencies(r) for r in ok]
    ttft = [x["ttft"] for x in lat if x["ttft"] is not None]
    e2el = [x["e2el"] for x in lat]
    tpot = [x["tpot"] for x in lat if x["tpot"] is not None]
    itl = [g for x in lat for g in x["itl"]]
    in_tok = sum(r.get("input_tokens") or 0 for r in ok)
    out_tok = sum(r.get("output_tokens") or 0 for r in ok)
    per_s = (lambda v: v / duration) if duration > 0 else (lambda v: None)
    good = None
    if slo is not None and any(v is not None for v in (slo.ttft_ms, slo.tpot_ms, slo.e2el_ms)):
        good = 0
        for x in lat:
            checks = [
                (slo.ttft_ms, x["ttft_upper"]),
                (slo.tpot_ms, x["tpot"] if x["tpot"] is not None else 0.0),
                (slo.e2el_ms, x["e2el"]),
            ]
            good += all(lim is None or v * 1000.0 <= lim for lim, v in checks)
    errors = Counter(r["error"] for r in measured if not is_ok(r))
    first = records[0] if records else {}
    out_tok_s = per_s(out_tok)
    in_tok_s = per_s(in_tok)
    tpot_ms = stats_ms(tpot)
    limited = client_limit(lat, ok, client)

    def usd_per_mtok(tok_s: float | None) -> float | None:
        if usd_per_hour is None or not tok_s:
            return None
        return usd_per_hour / (tok_s * 3600.0) * 1e6

    return {
        "scenario": first.get("scenario"),
        "point": first.get("point"),
        "concurrency": first.get("concurrency"),
        "rate": first.get("rate"),
        "loop": first.get("loop") or ("open" if first.get("rate") else "closed"),
        "duration_s": duration,
        "requests": len(measured),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(sorted(errors.items())),
        "warmup_requests": len(records) - len(measured),
        "rps": per_s(len(ok)),
        "input_tok_s": in_tok_s,
        "output_tok_s": out_tok_s,
        "ttft_ms": stats_ms(ttft),
        "tpot_ms": tpot_ms,
        "itl_ms": stats_ms(itl),
        "ttft_token_ms": stats_ms(x["ttft_token"] for x in lat if x["ttft_token"] is not None),
        "ttfo_ms": stats_ms(x["ttfo"] for x in lat if x["ttfo"] is not None),
        "reasoning_tokens": token_stats(r.get("reasoning_tokens") for r in ok),
        "answer_tokens": token_stats(r.get("answer_tokens") for r in ok),
        "reasoning_requests": sum(1 for r in ok if (r.get("reasoning_tokens") or 0) > 0),
        "reasoning_source": sorted({r["reasoning_source"] for r in ok if r.get("reasoning_source")}) or None,
        "e2el_ms": stats_ms(e2el),
        "goodput_rps": per_s(good) if good is not None else None,
        "gpus": gpus,
        "tok_s_per_gpu": (out_tok_s / gpus) if (gpus and out_tok_s is not None) else None,
        "tok_s_per_user": (1000.0 / tpot_ms["mean"]) if tpot_ms["mean"] else None,
        "usd_per_hour": usd_per_hour,
        "usd_per_mtok_out": usd_per_mtok(out_tok_s),
        "usd_per_mtok_in": usd_per_mtok(in_tok_s),
        "source": source,
        **limited,
    }


def client_limit(lat: list[dict[str, Any]], ok: list[dict[str, Any]], client: dict[str, Any] | None) -> dict:
    """The point's stamp-certainty figures and its client-limited flag (with why and the fix)."""
    n = len(lat)
    gaps = sum(x["gaps"] for x in lat)
    kept = sum(len(x["itl"]) for x in lat)
    first = sum(x["first_uncertain"] for x in lat)
    reqs = sum(1 for x in lat if x["uncertain"])
    bounds = [r.get("stamp_uncert_s") for r in ok if r.get("stamp_uncertain") is not None
              and len(r["stamp_uncertain"])]  # fmt: skip
    known = [b for b in bounds if b is not None]
    worst = max(known, default=0.0) if len(known) == len(bounds) else None
    why = []
    if n and first / n > CLIENT_LIMITED_FRACTION:
        why.append(
            f"{first} of {n} requests' first chunk arrived in one read with later ones (TTFT, TPOT left out)"
        )
    if gaps and (gaps - kept) / gaps > CLIENT_LIMITED_FRACTION:
        why.append(f"{gaps - kept} of {gaps} inter-token gaps are uncertain (left out of ITL)")
    lag = (client or {}).get("loop_lag_p99_ms")
    if lag is not None and lag > CLIENT_LAG_MS:
        why.append(f"a worker's event loop lagged {lag:.1f} ms at p99")
    return {
        "stamp_uncertain_requests": reqs,
        "ttft_uncertain_requests": first,
        "itl_gaps_uncertain": gaps - kept,
        "itl_gaps": gaps,
        "stamp_uncert_max_ms": None if worst is None else worst * 1e3,
        "client_loop_lag_p99_ms": lag,
        "client_limited": bool(why),
        "client_limited_why": "; ".join(why) or None,
        "client_fix": CLIENT_FIX if why else None,
    }


def client_limit_of(records: list[dict[str, Any]], loop_lag_p99_ms: float | None = None) -> dict[str, Any]:
    """`client_limit` straight from one point's records (for a warning as the point ends)."""
    ok = [r for r in records if not r.get("warmup") and is_ok(r)]
    return client_limit([request_latencies(r) for r in ok], ok, {"loop_lag_p99_ms": loop_lag_p99_ms})


def group_points(records: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Records grouped by (scenario, point), in first-seen order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["scenario"], r["point"]), []).append(r)
    return groups


def flatten(point: dict[str, Any]) -> dict[str, Any]:
    """A summary point as one flat CSV row: ttft_ms.p99 -> ttft_ms_p99; dicts of counts -> JSON text."""
    import json

    row: dict[str, Any] = {}
    for k, v in point.items():
        if isinstance(v, dict) and (k.endswith("_ms") or k.endswith("_tokens")):
            for s, x in v.items():
                row[f"{k}_{s}"] = x
        elif isinstance(v, dict):
            row[k] = json.dumps(v, sort_keys=True)
        else:
            row[k] = v
    return row
