"""`r1lab plan` as a person reads it: the recommendation first, what the run will take against its budget, then
each topology once, latencies in human units (ms, s, min), and load points that cannot reach their concurrency
flagged. Everything here is modelled (r1lab.perf), never measured."""

from __future__ import annotations

import math
from typing import Any


def fmt_ms(ms: float | None) -> str:
    """67 ms, 2.13 s, 1 min 33 s, 16 h 52 min."""
    if ms is None or ms != ms:
        return "n/a"
    if ms < 1000:
        return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"
    s = ms / 1000
    if s < 60:
        return f"{s:.2f} s" if s < 10 else f"{s:.1f} s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m} min {sec:02d} s"
    h, m = divmod(int(round(s / 60)), 60)
    return f"{h} h {m:02d} min"


def fmt_hours(h: float) -> str:
    return fmt_ms(h * 3_600_000)


def _scenario(exp: Any, name: str) -> Any:
    return next((s for s in exp.load.scenarios if s.name == name), None) if exp is not None else None


def point_flag(exp: Any, p: dict[str, Any]) -> str | None:
    """Why a point will not measure what it says (requests_per_point below its concurrency)."""
    s = _scenario(exp, p["scenario"])
    c, n = p.get("concurrency"), getattr(s, "requests_per_point", None)
    if s is not None and s.shape == "concurrency" and c and n and not s.duration_s and n < c:
        return f"requests_per_point {n} < concurrency {c}: never more than {n} in flight (it repeats c={n})"
    return None


def point_seconds(exp: Any, p: dict[str, Any]) -> float | None:
    """Modelled wall time of one load point: its duration, or its requests at its concurrency (closed loop) or
    rate (open loop), with warm-up."""
    s = _scenario(exp, p["scenario"])
    if s is None:
        return None
    e2e = ((p.get("e2e_ms") or {}).get("mean") or 0.0) / 1000
    if s.duration_s:
        return float(s.duration_s) + (s.warmup_s or 0.0)
    mt = getattr(s, "multi_turn", None)
    if mt is not None:  # each user's turns run one after another
        return math.ceil(mt.conversations / max(1, int(p.get("concurrency") or 1))) * mt.turns * e2e
    if getattr(s, "shape", None) == "trace" and p.get("rate") and p.get("requests"):
        return (int(p["requests"]) - 1) / float(p["rate"]) + e2e
    n = (s.requests_per_point or 0) + (s.warmup_requests or 0)
    if not n:
        return None
    if p.get("rate"):
        return n / float(p["rate"]) + e2e
    c = max(1, min(int(p.get("concurrency") or 1), n))
    return math.ceil(n / c) * e2e


def _distinct(topologies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The params' topology once: a standard alternative identical to it is not printed again."""
    mine = {t["label"] for t in topologies if t["is_params"]}
    return [t for t in topologies if t["is_params"] or t["label"] not in mine]


def _best(t: dict[str, Any], scenario: str | None = None) -> dict[str, Any] | None:
    pts = [p for p in t.get("points", []) if p.get("usd_per_mtok_out") and scenario in (None, p["scenario"])]
    ok = [p for p in pts if p.get("meets_slo")] or pts
    return min(ok, key=lambda p: p["usd_per_mtok_out"], default=None)


def recommendation(d: dict[str, Any]) -> str:
    """One line: the fitting topology with the lowest $ per M output tokens at its best point of the first
    scenario (the same workload for every topology; meeting the SLOs where any point does)."""
    first = next((t["points"][0]["scenario"] for t in d["topologies"] if t.get("points")), None)
    ranked = [(b["usd_per_mtok_out"], t, b) for t in d["topologies"] if t["fits"] and (b := _best(t, first))]
    if not ranked:
        return "Recommendation: none of these topologies fits R1 with these params (see DOES NOT FIT below)."
    _, t, b = min(ranked, key=lambda r: r[0])
    line = (f"Recommendation: {t['label']}: ${b['usd_per_mtok_out']:,.2f} per M output tokens at its best point "
            f"({b['scenario']} c={b['concurrency']}: {b['output_tok_s']:,.0f} tok/s, TTFT {fmt_ms(b['ttft_ms']['mean'])}, "
            f"TPOT {fmt_ms(b['tpot_ms']['mean'])}), ${t['usd_per_hour']:,.2f}/h")  # fmt: skip
    mine = next((x for x in d["topologies"] if x["is_params"]), None)
    if mine is t or (mine and mine["label"] == t["label"]):
        return line + "; that is these params' topology."
    if mine and mine["fits"] and (mb := _best(mine, first)):
        return line + f". These params' {mine['label']}: ${mb['usd_per_mtok_out']:,.2f} per M output tokens."
    return line + (f". These params' {mine['label']} does not fit." if mine else ".")


def budget_lines(d: dict[str, Any], exp: Any) -> list[str]:
    """The run's modelled load-test time and cost against provider.budget_hours / budget_usd."""
    mine = next((t for t in d["topologies"] if t["is_params"]), None)
    if exp is None or mine is None:
        return []
    prov = exp.provider
    if not mine["fits"]:
        return [f"This run: the params' topology does not fit; nothing would be measured. Budget {prov.budget_hours:g} h / "
                f"${prov.budget_usd:,.0f}."]  # fmt: skip
    secs = [point_seconds(exp, p) for p in mine["points"]]
    known = [s for s in secs if s is not None]
    hours = sum(known) / 3600
    rate = mine.get("usd_per_hour") or 0.0
    cost = hours * rate
    lines = [f"This run (modelled): the load test takes {fmt_hours(hours)} over {len(known)} load points, "
             f"${cost:,.2f} at ${rate:,.2f}/h; budget {prov.budget_hours:g} h / ${prov.budget_usd:,.0f} "
             f"(${rate * prov.budget_hours:,.2f} if the pods run the whole {prov.budget_hours:g} h)."]  # fmt: skip
    if hours > prov.budget_hours:
        lines.append(f"  ⚠ the load test alone is longer than budget_hours {prov.budget_hours:g}: the run is torn down "
                     "before it ends; raise budget_hours or shorten the scenarios")  # fmt: skip
    elif rate and cost > prov.budget_usd:
        lines.append(f"  ⚠ the load test alone costs more than budget_usd ${prov.budget_usd:,.0f}")
    else:
        left = prov.budget_hours - hours
        lines.append(f"  fits the budget, leaving {fmt_hours(left)} for pods, weights and engine start (not modelled "
                     f"here; the ~689 GB download alone is long on a slow link)")  # fmt: skip
    if rate and rate * prov.budget_hours > prov.budget_usd:
        lines.append(f"  ⚠ at ${rate:,.2f}/h budget_usd ${prov.budget_usd:,.0f} is spent after "
                     f"{fmt_hours(prov.budget_usd / rate)}: the run is torn down then, before budget_hours")  # fmt: skip
    flagged = [p for p in mine["points"] if point_flag(exp, p)]
    if flagged:
        lines.append(f"  ⚠ {len(flagged)} load point(s) cannot reach their concurrency (marked ⚠ below)")
    return lines


def render_text(plan: Any, exp: Any = None) -> str:
    d = plan.as_dict() if hasattr(plan, "as_dict") else plan
    lines = [f"Plan for {d['experiment']} (modelled by {d['model_version']}; nothing here is measured)", ""]
    lines += [recommendation(d), *budget_lines(d, exp), ""]
    for t in _distinct(d["topologies"]):
        mark = "*" if t["is_params"] else " "
        lines.append(f"{mark} {t['label']}  [{'these params' if t['is_params'] else t['id']}]")
        m = t["memory"]
        if m:
            lines.append(
                f"    memory/GPU: weights {m['weights_gib']:.1f} GiB, activations {m['activation_gib']:.1f}, "
                f"graphs {m['cudagraph_gib']:.1f}, CUDA/NCCL {m['non_torch_gib']:.1f}, KV {m['kv_gib']:.1f} "
                f"of {m['budget_gib']:.1f} GiB ({m['gpu_memory_utilization']} x {m['total_gib']:.1f})"
            )
        if not t["fits"]:
            lines.append(f"    DOES NOT FIT: {t['reason']}")
            continue
        price = f"${t['usd_per_hour']:,.2f}/h" if t["usd_per_hour"] else "no price"
        lines.append(
            f"    KV tokens/replica {t['kv_tokens']:,}; max concurrency {t['max_concurrency']}; {price}"
        )
        b = t["bottleneck"]
        lines.append(f"    bottleneck: {b.get('component')}: {b.get('detail') or ''}".rstrip(": "))
        lines.append(f"    {'scenario':<18} {'load':<6} {'TTFT':>10} {'TPOT':>9} {'E2E':>12} {'output tok/s':>13}"
                     f" {'per GPU':>8} {'$/M out':>9}")  # fmt: skip
        for p in t["points"]:
            load = f"c={p['concurrency']}" if p.get("concurrency") else f"r={p.get('rate'):g}/s"
            cost = f"${p['usd_per_mtok_out']:,.2f}" if p["usd_per_mtok_out"] else ""
            flag = point_flag(exp, p) if t["is_params"] else None
            lines.append(
                f"    {p['scenario']:<18} {load:<6} {fmt_ms(p['ttft_ms']['mean']):>10} {fmt_ms(p['tpot_ms']['mean']):>9}"
                f" {fmt_ms((p.get('e2e_ms') or {}).get('mean')):>12} {p['output_tok_s']:>13,.0f}"
                f" {p['tok_s_per_gpu']:>8,.0f} {cost:>9}" + (f"  ⚠ {flag}" if flag else "")
            )  # fmt: skip
    lines += ["", "Problems of the original plan and of these params:"]
    for pr in d["problems"]:
        lines.append(f"  [{pr['status']}/{pr['severity']}] {pr['title']}: {pr['detail']}  Fix: {pr['fix']}")
    lines += ["", f"Commands ({d['commands']['source']}):"] + [f"  {c}" for c in d["commands"]["lines"]]
    return "\n".join(lines)
