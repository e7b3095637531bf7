"""What the data says: server series by role, the saturation point, bottleneck findings with their evidence,
and measured load points matched with the planner's predictions. Pure functions of a RunData."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from r1lab.report.data import RunData

# Series names that mean the same thing across vLLM, Dynamo workers and the frontend (first found wins).
KV_USAGE = (
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "dynamo_component_kvstats_gpu_cache_usage_percent",
)
RUNNING = ("vllm:num_requests_running", "dynamo_frontend_inflight_requests")
WAITING = ("vllm:num_requests_waiting", "dynamo_frontend_queued_requests")
PREEMPTIONS = ("vllm:num_preemptions_total",)
GPU_MEM_USED = ("DCGM_FI_DEV_FB_USED",)
GPU_MEM_FREE = ("DCGM_FI_DEV_FB_FREE",)
GPU_UTIL = ("DCGM_FI_DEV_GPU_UTIL",)
NET_TX = ("node_network_transmit_bytes_total",)


def series(metrics: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """Rows of the first metric name present (time, source, labels, value), empty if none."""
    for name in names:
        rows = metrics[metrics["metric"] == name]
        if not rows.empty:
            return rows
    return metrics.iloc[0:0]


def point_windows(data: RunData) -> list[dict[str, Any]]:
    """Each load point's [first send, last end] from the request records."""
    df = data.requests
    if df.empty or "t_send" not in df:
        return []
    out = []
    for (sc, pt), g in df.groupby(["scenario", "point"], sort=False):
        start, end = g["t_send"].min(), g["t_end"].max()
        if pd.notna(start) and pd.notna(end):
            conc = g["concurrency"].iloc[0]
            out.append({"scenario": sc, "point": pt, "concurrency": None if pd.isna(conc) else int(conc),
                        "start": float(start), "end": float(end)})  # fmt: skip
    return sorted(out, key=lambda w: w["start"])


def sweep_points(data: RunData) -> dict[str, list[dict[str, Any]]]:
    """Concurrency-shaped points per scenario, sorted by concurrency."""
    out: dict[str, list[dict[str, Any]]] = {}
    for p in data.points:
        if p.get("concurrency") and not p.get("rate"):
            out.setdefault(p["scenario"], []).append(p)
    return {k: sorted(v, key=lambda p: p["concurrency"]) for k, v in out.items()}


def main_sweep(data: RunData) -> tuple[str | None, list[dict[str, Any]]]:
    """The scenario with the most concurrency points (the sweep to saturation)."""
    sweeps = sweep_points(data)
    if not sweeps:
        return None, []
    name = max(sweeps, key=lambda k: (len(sweeps[k]), k == "sweep"))
    return name, sweeps[name]


def saturation(data: RunData, scenario: str) -> dict[str, Any] | None:
    """summary.json's knee for a scenario (r1lab.bench.saturation), computed here if the summary lacks it."""
    sat = (data.summary.get("saturation") or {}).get(scenario)
    if sat is None:
        pts = sweep_points(data).get(scenario, [])
        if len(pts) >= 2:
            from r1lab.bench.saturation import find_knee

            sat = find_knee(pts)
    return sat


def _p(point: dict[str, Any], metric: str, stat: str = "p50") -> float | None:
    v = point.get(metric)
    return v.get(stat) if isinstance(v, dict) else None


@dataclass
class Finding:
    kind: str  # kv-bound | compute-bound | network-bound | queueing
    verdict: str  # "yes" | "no" | "unknown"
    summary: str
    evidence: list[str] = field(default_factory=list)
    source: str = "measured"  # label of the evidence: measured on twin / on GPU / modelled

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _metric_during(data: RunData, names: tuple[str, ...], start: float, end: float) -> pd.DataFrame:
    s = series(data.metrics, names)
    return s[(s["time"] >= start) & (s["time"] <= end)]


def findings(data: RunData) -> list[Finding]:
    """Bottleneck findings from the run's own numbers; each states its evidence and where it comes from."""
    label = data.source_label
    name, pts = main_sweep(data)
    out: list[Finding] = []
    windows = {(w["scenario"], w["point"]): w for w in point_windows(data)}
    top = pts[-1] if pts else None
    low = pts[0] if pts else None
    top_win = windows.get((top["scenario"], top["point"])) if top else None

    # KV-bound: the KV cache is (nearly) full while requests wait or get preempted.
    kv = series(data.metrics, KV_USAGE)
    if not kv.empty:
        peak = kv.groupby("source")["value"].max()
        src, kv_max = str(peak.idxmax()), float(peak.max())
        waiting = series(data.metrics, WAITING)
        full_t = kv[kv["value"] >= 0.9]["time"]
        waited = 0.0
        if not full_t.empty and not waiting.empty:
            w = waiting[waiting["time"].between(full_t.min(), full_t.max())]
            waited = float(w["value"].max()) if not w.empty else 0.0
        pre = series(data.metrics, PREEMPTIONS)
        preempted = (
            float(pre.groupby(["source", "labels"])["value"].agg(lambda v: v.max() - v.min()).sum())
            if not pre.empty
            else 0.0
        )
        ev = [f"KV-cache usage peaked at {kv_max:.0%} on {src} ({label})"]
        if waited:
            ev.append(f"up to {waited:.0f} requests waited while KV usage was >= 90%")
        if preempted:
            ev.append(f"{preempted:.0f} preemptions during the run")
        bound = kv_max >= 0.9 and (waited > 0 or preempted > 0)
        out.append(Finding("kv-bound", "yes" if bound else "no",
                           "KV cache full: admission waits for free blocks" if bound
                           else "the KV cache never ran out", ev, label))  # fmt: skip
    elif (topo := data.plan_topology()) and top:
        maxc = topo.get("max_concurrency")
        if maxc:
            bound = top["concurrency"] > maxc
            out.append(Finding("kv-bound", "yes" if bound else "no",
                               f"the model's KV capacity holds {maxc} sequences; the sweep reached c={top['concurrency']}",
                               [f"KV tokens per replica {topo.get('kv_tokens'):,} (modelled)",
                                "no server series (metrics.parquet) to confirm"], "modelled"))  # fmt: skip
    else:
        out.append(Finding("kv-bound", "unknown", "no KV-usage series and no plan", [], label))

    # Queueing: TTFT grows much faster than TPOT with concurrency (requests wait before their prefill).
    if low and top and top is not low:
        t0, t1 = _p(low, "ttft_ms"), _p(top, "ttft_ms")
        d0, d1 = _p(low, "tpot_ms"), _p(top, "tpot_ms")
        if t0 and t1 and d0 and d1:
            ttft_x, tpot_x = t1 / t0, d1 / d0
            waiting_ev = []
            if top_win is not None:
                w = _metric_during(data, WAITING, top_win["start"], top_win["end"])
                if not w.empty:
                    waiting_ev.append(f"waiting requests at c={top['concurrency']}: mean {w['value'].mean():.1f}, "
                                      f"max {w['value'].max():.0f}")  # fmt: skip
            queued = ttft_x >= 3 and ttft_x >= 2 * tpot_x
            out.append(Finding(
                "queueing", "yes" if queued else "no",
                f"TTFT p50 x{ttft_x:.1f} from c={low['concurrency']} to c={top['concurrency']} against TPOT x{tpot_x:.1f}"
                + (": requests queue before prefill" if queued else ""),
                [f"{name}: TTFT p50 {t0:,.0f} -> {t1:,.0f} ms; TPOT p50 {d0:,.1f} -> {d1:,.1f} ms ({label})",
                 f"TTFT p99/p50 at c={top['concurrency']}: {(_p(top, 'ttft_ms', 'p99') or 0) / t1:.1f}"] + waiting_ev,
                label))  # fmt: skip

    # Compute-bound: throughput stops scaling while the KV cache still has room and TPOT climbs with the batch.
    if name and len(pts) >= 2:
        sat = saturation(data, name) or {}
        kv_top = None
        if top_win is not None:
            k = _metric_during(data, KV_USAGE, top_win["start"], top_win["end"])
            kv_top = float(k["value"].max()) if not k.empty else None
        steps = sat.get("steps") or []
        ev = [f"{name}: scaling efficiency per step " + ", ".join(
            f"c{s['from']}->{s['to']}: {s['scaling']:.2f}" for s in steps)] if steps else []  # fmt: skip
        d0, d1 = _p(pts[0], "tpot_ms"), _p(pts[-1], "tpot_ms")
        if d0 and d1:
            ev.append(f"TPOT p50 {d0:,.1f} -> {d1:,.1f} ms as the batch grew")
        if kv_top is not None:
            ev.append(f"KV usage at the top point: {kv_top:.0%}")
        if top_win is not None:
            u = _metric_during(data, GPU_UTIL, top_win["start"], top_win["end"])
            if not u.empty:
                ev.append(
                    f"GPU utilisation at the top point: mean {u['value'].mean():.0f}% over {u['labels'].nunique()} GPUs"
                )
        if sat.get("saturated"):
            compute = kv_top is None or kv_top < 0.9
            summary = (f"throughput saturates at c={sat['knee_concurrency']} "
                       f"({sat['knee_throughput']:,.0f} output tok/s)")  # fmt: skip
            summary += (
                ": each decode step costs more as the batch grows" if compute else " with the KV cache full"
            )
            out.append(Finding("compute-bound", "yes" if compute else "no", summary, ev, label))
        else:
            out.append(
                Finding("compute-bound", "no", sat.get("note") or "throughput still scaled", ev, label)
            )

    # Network-bound: the planner's bottleneck is a link, and the measured TTFT at c=1 carries its cost.
    topo = data.plan_topology()
    if topo and topo.get("bottleneck"):
        b = topo["bottleneck"]
        comp = str(b.get("component", ""))
        networky = any(
            k in comp for k in ("transfer", "send", "all_to_all", "allreduce", "all_reduce", "network")
        )
        ev = [f"planner: {b.get('detail', comp)} (modelled)"]
        verdict = "yes" if networky else "no"
        if networky and low:
            pred = next((q for q in topo.get("points", []) if q.get("scenario") == low["scenario"]
                         and q.get("concurrency") == low["concurrency"]), None)  # fmt: skip
            t_meas = _p(low, "ttft_ms")
            if pred and t_meas and pred.get("kv_transfer_ms"):
                xfer = pred["kv_transfer_ms"]
                ev.append(f"measured TTFT p50 at c={low['concurrency']}: {t_meas:,.0f} ms ({label}); the modelled "
                          f"KV transfer alone: {xfer:,.0f} ms")  # fmt: skip
                if t_meas < 0.5 * xfer:
                    verdict = "no"
                    ev.append("the measured TTFT is well below the modelled transfer: this run did not pay for the "
                              "link as modelled (check the twin's link shaping or the P/D placement)")  # fmt: skip
        tx = series(data.metrics, NET_TX)
        if not tx.empty:
            rates = []
            for _, g in tx.groupby(["source", "labels"]):
                g = g.sort_values("time")
                dt = g["time"].diff()
                rate = (g["value"].diff() / dt)[dt > 0]
                if not rate.empty:
                    rates.append(float(rate.max()))
            if rates:
                ev.append(f"peak transmit on one interface: {max(rates) * 8 / 1e6:,.1f} Mbit/s ({label})")
        out.append(Finding("network-bound", verdict,
                           f"bottleneck per the planner: {comp}" + (" (a link)" if networky else " (not a link)"),
                           ev, "modelled + " + label))  # fmt: skip
    return out


def predicted_vs_measured(data: RunData) -> pd.DataFrame:
    """Each measured point next to the planner's prediction for the same scenario and concurrency."""
    topo = data.plan_topology()
    rows = []
    if not topo:
        return pd.DataFrame()
    preds = {(q.get("scenario"), q.get("concurrency")): q for q in topo.get("points", [])}
    for p in data.points:
        q = preds.get((p.get("scenario"), p.get("concurrency")))
        if q is None:
            continue
        row = {"scenario": p["scenario"], "concurrency": p["concurrency"], "source": p.get("source")}
        for key, pkey in (("ttft_ms", "ttft_ms"), ("tpot_ms", "tpot_ms"), ("e2el_ms", "e2e_ms")):
            m, pr = _p(p, key), (q.get(pkey) or {}).get("p50")
            row[f"{key}_p50_measured"], row[f"{key}_p50_predicted"] = m, pr
            row[f"{key}_p50_ratio"] = (m / pr) if (m and pr) else None
        m, pr = p.get("output_tok_s"), q.get("output_tok_s")
        row.update(
            output_tok_s_measured=m,
            output_tok_s_predicted=pr,
            output_tok_s_ratio=(m / pr) if m and pr else None,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def labels_json(text: str) -> dict[str, Any]:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.sort(values)
    return v, np.arange(1, len(v) + 1) / len(v)
