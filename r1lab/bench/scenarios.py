"""The plan's load scenarios, run from params (`load.scenarios` of an Experiment) into a run directory.

Shapes per scenario (`r1lab.config.Scenario.shape`):
- concurrency: one closed-loop point per value of `concurrency` (a sweep; the knee is found over it);
- ramp: the same, as timed steps (`duration_s` each) one after another;
- poisson: one open-loop point per `rate` (requests/s), optionally capped at `max_concurrency`;
- stress: one load held for `duration_s`, with trend checks (error rate, latency, KV usage, memory);
- trace: a Mooncake-style trace replayed open-loop at its own (optionally scaled) times (`bench.traces`).
Workloads (`Scenario.workload`): synthetic (independent random prompts), shared-prefix (groups behind one common
prefix), multi-turn (conversations, each turn carrying the answer the server streamed; closed loop per user).
Every record and summary point states its loop (open/closed); the summary gives the engines' prefix-cache hit
rate per point from their scraped counters, or says that none was scraped.
Every point gets fresh prompts (its own seed), so a server's prefix cache never serves a later point from an
earlier one. Records go to `load/<scenario>/requests.jsonl` as they happen; `summarize_run` derives
`summary.json`/`summary.csv` from the records alone.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from r1lab.bench.attempts import complete_points
from r1lab.bench.loadgen import CLIENT_STATS, run_point
from r1lab.bench.metrics import Slo, client_limit_of, flatten, group_points, summarize_point
from r1lab.bench.records import load_records, read_jsonl
from r1lab.bench.saturation import find_knee
from r1lab.bench.shapes import Shape
from r1lab.bench.traces import build_trace_workload, read_trace, trace_offsets
from r1lab.bench.trends import stress_checks
from r1lab.bench.workloads import (
    ModelTokenizer,
    bodies,
    build_shared_prefix,
    build_workload,
    conversation_plan,
)
from r1lab.loadshapes import shape_of
from r1lab.resolved import LoadPoint

SUMMARY_SCHEMA_VERSION = 1


def default_scenarios(max_concurrency: int = 64, long_context: int = 120_000) -> list[dict[str, Any]]:
    """The plan's scenarios as params entries (copy into `load.scenarios` and scale to the deployment)."""
    sweep = [c for c in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if c <= max_concurrency]
    mid = max(1, max_concurrency // 4)
    return [
        {"name": "sweep", "shape": "concurrency", "concurrency": sweep, "input_tokens": 1024, "output_tokens": 1024},
        {"name": "short-in-long-out", "concurrency": [mid], "input_tokens": 256, "output_tokens": 4096},
        {"name": "long-in-short-out", "concurrency": [mid], "input_tokens": 16000, "output_tokens": 256},
        {"name": "long-in-long-out", "concurrency": [mid], "input_tokens": 16000, "output_tokens": 4096},
        {"name": "long-context", "concurrency": [max(1, mid // 4)], "input_tokens": long_context,
         "output_tokens": 512, "requests_per_point": 8},
        {"name": "stress", "shape": "stress", "concurrency": [max_concurrency], "input_tokens": 1024,
         "output_tokens": 1024, "duration_s": 1800, "warmup_s": 60},
    ]  # fmt: skip


def shapes_for(sc: Any, points: Sequence[LoadPoint] | None = None) -> list[Shape]:
    """The load points of one config Scenario: `points`, the run's resolved load points (r1lab.resolved: the ones
    the planner modelled; those of other scenarios are ignored), else expanded from `sc` (r1lab.loadshapes)."""
    common = {"requests": sc.requests_per_point, "duration_s": sc.duration_s, "warmup_s": sc.warmup_s,
              "warmup_requests": sc.warmup_requests}  # fmt: skip
    if sc.shape == "trace":
        rows = read_trace(
            sc.trace.path(), sc.trace.block_size, sc.trace.max_requests, sc.trace.max_total_tokens
        )
        return [Shape("trace", offsets=trace_offsets(rows, sc.trace.time_scale), concurrency=sc.max_concurrency,
                      warmup_s=sc.warmup_s, warmup_requests=sc.warmup_requests)]  # fmt: skip
    if sc.workload == "multi-turn":
        common["requests"] = sc.multi_turn.conversations * sc.multi_turn.turns
    shape = shape_of(sc)
    if points is None:
        loads = shape.loads(sc)  # its points, the ones the planner models (r1lab.loadshapes)
    else:
        loads = [(p.concurrency, p.rate) for p in points if p.scenario == sc.name]
        if not loads:
            raise ValueError(
                f"scenario {sc.name}: the run's resolved deployment (resolved.json) has no load point for it: "
                "the params changed after the run was resolved; start a new run"
            )
    if shape.loop(sc) == "open":
        return [Shape("poisson", rate=r, concurrency=sc.max_concurrency, burstiness=sc.burstiness, **common)
                for _, r in loads]  # fmt: skip
    return [Shape("concurrency", concurrency=c, **common) for c, _ in loads]


def _pool_size(shape: Shape) -> int:
    if shape.requests is not None:
        return shape.requests
    per_s = shape.rate or (shape.concurrency or 1)  # at most ~1 request/s per stream for long outputs
    return int(min(2048, max(64, per_s * min(shape.duration_s or 60, 120))))


def _workloads(
    sc: Any, tokenizer: ModelTokenizer, model: str, seed: int, first: int = 0,
    points: Sequence[LoadPoint] | None = None,
) -> list[tuple[Shape, list, Any]]:  # fmt: skip
    """Each point's shape (from the resolved `points` where given), fresh workload (its own seed; point i of the
    scenario, counted from `first`) and, for multi-turn, its conversations."""
    out = []
    for i, shape in enumerate(shapes_for(sc, points), start=first):
        s = seed * 1000 + i
        conv = None
        if sc.shape == "trace":
            rows = read_trace(
                sc.trace.path(), sc.trace.block_size, sc.trace.max_requests, sc.trace.max_total_tokens
            )
            wl = build_trace_workload(tokenizer, rows, model=model, block_size=sc.trace.block_size, api=sc.endpoint,
                                      seed=s, force_output=sc.ignore_eos)  # fmt: skip
        elif sc.workload == "shared-prefix":
            sp = sc.shared_prefix
            wl = build_shared_prefix(tokenizer, n=_pool_size(shape), groups=sp.groups, prefix_tokens=sp.prefix_tokens,
                                     suffix_tokens=sp.suffix_tokens, output_tokens=sc.output_tokens, model=model,
                                     api=sc.endpoint, seed=s, force_output=sc.ignore_eos)  # fmt: skip
        elif sc.workload == "multi-turn":
            mt = sc.multi_turn
            wl = []
            conv = conversation_plan(tokenizer, conversations=mt.conversations, turns=mt.turns,
                                     user_tokens=mt.user_tokens, output_tokens=sc.output_tokens, model=model,
                                     api=sc.endpoint, seed=s, force_output=sc.ignore_eos)  # fmt: skip
        else:
            wl = build_workload(tokenizer, n=_pool_size(shape), input_tokens=sc.input_tokens,
                                output_tokens=sc.output_tokens, model=model, api=sc.endpoint, seed=s,
                                force_output=sc.ignore_eos)  # fmt: skip
        out.append((shape, wl, conv))
    return out


def run_scenario(
    sc: Any, *, url: str, tokenizer: ModelTokenizer, model: str, run_dir: str | Path, seed: int = 0,
    workers: int = 0, verify_tls: bool = True, shell: Any = None, points: Sequence[LoadPoint] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Run every point of one scenario (the run's resolved `points` where given, else expanded from `sc`);
    returns its records (also appended to load/<name>/requests.jsonl).
    With `shell` (a remote.Shell on a pod next to the server) the generator runs there, and `url` is the
    server's address as seen from that pod. A sweep with `until_knee` then adds points at twice the last
    concurrency while its measured points show no knee (find_knee), up to that cap; load/<name>/extension.json
    says which points were added and why it stopped."""
    if shell is not None and getattr(sc, "workload", "synthetic") == "multi-turn":
        raise ValueError(
            f"scenario {sc.name}: multi-turn conversations run from this machine only for now: "
            "set load.run_on: local (or drop the scenario)"
        )
    args = dict(url=url, tokenizer=tokenizer, model=model, run_dir=run_dir, seed=seed, workers=workers,
                verify_tls=verify_tls, shell=shell)  # fmt: skip
    records = _run_points(sc, first=0, points=points, **args)
    cap = getattr(sc, "until_knee", None)
    if not cap:
        return records
    done = list(sc.concurrency)
    added: list[int] = []
    while True:
        sat = find_knee([summarize_point(g) for g in group_points(records).values()])
        nxt = done[-1] * 2
        if sat.get("saturated"):
            why = f"knee found at concurrency {sat['knee_concurrency']}"
            break
        if nxt > cap:
            why = f"no knee up to concurrency {done[-1]}; the next point ({nxt}) is past until_knee {cap}"
            break
        print(
            f"{sc.name}: no knee yet up to concurrency {done[-1]}: adding concurrency {nxt} (until_knee {cap})"
        )
        records += _run_points(sc.model_copy(update={"concurrency": [nxt]}), first=len(done), **args)
        done.append(nxt)
        added.append(nxt)
    d = Path(run_dir) / "load" / sc.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "extension.json").write_text(json.dumps({"scenario": sc.name, "listed": list(sc.concurrency),
                                                  "until_knee": cap, "added": added, "stopped": why},
                                                 indent=1) + "\n")  # fmt: skip
    print(f"{sc.name}: {why}")
    return records


def _run_points(
    sc: Any, *, first: int, url: str, tokenizer: ModelTokenizer, model: str, run_dir: str | Path, seed: int,
    workers: int, verify_tls: bool, shell: Any, points: Sequence[LoadPoint] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Run the points of `sc` (or the resolved `points`; point indices from `first`, for their seeds), here or
    through `shell`."""
    out = Path(run_dir) / "load" / sc.name / "requests.jsonl"
    wls = _workloads(sc, tokenizer, model, seed, first, points)
    kept = complete_points(out.parent) & {w[0].label for w in wls}  # from an earlier attempt (--resume)
    todo = [(i, w) for i, w in enumerate(wls, start=first) if w[0].label not in kept]
    if kept:
        print(f"{sc.name}: {', '.join(sorted(kept))} complete in an earlier attempt, kept (not run again)")
    carried = [r for r in read_jsonl(out) if r.get("point") in kept] if kept else []
    if shell is not None:
        from r1lab.bench.remote import run_remote

        pts = [{"scenario": sc.name, "shape": shape, "bodies": bodies(wl), "api": sc.endpoint,
                "timeout_s": sc.timeout_s, "seed": seed * 1000 + i}
               for i, (shape, wl, _) in todo]  # fmt: skip
        before = len(read_jsonl(out)) if out.exists() else 0
        if pts:
            run_remote(shell, url=url, points=pts, run_dir=run_dir)
        return carried + read_jsonl(out)[before:]
    records: list[dict[str, Any]] = carried
    for i, (shape, wl, conv) in todo:
        res = run_point(url, bodies(wl), shape, scenario=sc.name, out=out, api=sc.endpoint, workers=workers,
                        timeout_s=sc.timeout_s, seed=seed * 1000 + i, verify_tls=verify_tls,
                        conversations=conv)  # fmt: skip
        flag = client_limit_of(res.records, res.loop_lag_p99_ms)
        if flag["client_limited"]:
            print(
                f"warning: {sc.name} {res.point} is client-limited: {flag['client_limited_why']}; {flag['client_fix']}"
            )
        records += res.records
    return records


def run_load(
    load: Any, *, url: str, model_dir: str | Path, model: str, run_dir: str | Path, only: list[str] | None = None,
    verify_tls: bool = True, shell: Any = None, points: Sequence[LoadPoint] | None = None,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Run the Experiment's `load.scenarios` (or those named in `only`) against `url`; with `shell`, from the pod
    that shell reaches (params `load.run_on: pod`). `points`: the run's resolved load points (resolved.json), run
    as they are; a scenario placed at another's knee (`at_knee_of`) and a sweep's added points (`until_knee`)
    are set while the load runs, from what was measured."""
    tok = ModelTokenizer(model_dir)
    done = {}
    for sc in load.scenarios:
        if only is None or sc.name in only:
            pts = points
            if getattr(sc, "at_knee_of", None):
                sc, pts = at_knee(sc, run_dir), None
            done[sc.name] = run_scenario(sc, url=url, tokenizer=tok, model=model, run_dir=run_dir,
                                         seed=load.seed, workers=load.processes, verify_tls=verify_tls,
                                         shell=shell, points=pts)  # fmt: skip
    return done


def knee_of(run_dir: str | Path, sweep: str) -> dict[str, Any]:
    """find_knee over the points this run measured for `sweep` (from its records)."""
    rs = load_records(run_dir, [sweep])
    pts = [summarize_point(g) for g in group_points(rs).values()]
    return find_knee(pts)


def at_knee(sc: Any, run_dir: str | Path) -> Any:
    """A stress scenario with `at_knee_of`: the same scenario at the knee concurrency that sweep found in this run
    (written to load/<name>/knee.json); at its own `concurrency` when the sweep found none (said so)."""
    sat = knee_of(run_dir, sc.at_knee_of)
    knee = sat.get("knee_concurrency") if sat.get("saturated") else None
    chosen = int(knee) if knee else sc.concurrency[0]
    why = (
        f"the knee of {sc.at_knee_of} in this run"
        if knee
        else f"{sc.at_knee_of} found no knee in this run ({sat.get('note', 'no points')}): the configured concurrency"
    )
    print(f"{sc.name}: stress at concurrency {chosen} ({why})")
    d = Path(run_dir) / "load" / sc.name
    d.mkdir(parents=True, exist_ok=True)
    (d / "knee.json").write_text(json.dumps({"scenario": sc.name, "at_knee_of": sc.at_knee_of, "concurrency": chosen,
                                             "from_knee": bool(knee), "why": why, "saturation": sat}, indent=1,
                                            default=float) + "\n")  # fmt: skip
    return sc.model_copy(update={"concurrency": [chosen]})


def summarize_run(
    run_dir: str | Path,
    *,
    scenarios: list[Any] | None = None,
    slo: Slo | None = None,
    gpus: int | None = None,
    usd_per_hour: float | None = None,
    source: str = "measured-twin",
    run_id: str | None = None,
    metrics: Any = None,
    write: bool = True,
) -> dict[str, Any]:
    """summary.json (+ summary.csv) from the run's records alone; saturation per concurrency sweep, trend checks
    per stress phase (`scenarios`: the config Scenarios, for shapes and trend windows)."""
    rd = Path(run_dir)
    records = load_records(rd)
    client = client_stats(rd)
    points = [summarize_point(rs, slo=slo, gpus=gpus, usd_per_hour=usd_per_hour, source=source,
                              client=client.get(key)) for key, rs in group_points(records).items()]  # fmt: skip
    for p in points:
        p["prefix_cache"] = prefix_cache_of(metrics, [r for r in records if (r["scenario"], r["point"]) ==
                                                      (p["scenario"], p["point"])])  # fmt: skip
    by_name = {sc.name: sc for sc in scenarios or []}
    saturation, trends = {}, {}
    for name in dict.fromkeys(p["scenario"] for p in points):
        sc = by_name.get(name)
        pts = [p for p in points if p["scenario"] == name]
        closed = len([p for p in pts if p.get("concurrency") and not p.get("rate")])
        kind = (
            shape_of(sc).summarized_as(sc, closed)
            if sc is not None
            else ("saturation" if closed >= 2 else None)
        )
        if kind == "trends" and sc is not None:
            trends[name] = stress_checks([r for r in records if r["scenario"] == name],
                                         window_s=sc.trend_window_s, metrics=metrics)  # fmt: skip
        elif kind == "saturation":
            saturation[name] = find_knee(pts)
            ext = rd / "load" / name / "extension.json"
            # the sweep added points until its knee (until_knee): which, and where it stopped
            if ext.exists():
                saturation[name]["extension"] = json.loads(ext.read_text())
                if not saturation[name]["saturated"]:
                    saturation[name]["note"] = saturation[name]["extension"]["stopped"]
    summary = {"schema_version": SUMMARY_SCHEMA_VERSION, "run_id": run_id or rd.name, "points": points,
               "saturation": saturation, "trends": trends}  # fmt: skip
    if write:
        write_summary(rd, summary)
    return summary


PREFIX_HITS, PREFIX_QUERIES = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"
# Dynamo's KV router (in the frontend), per routing phase: input tokens of the routed requests it found cached on the
# worker it chose (from the workers' KV events), and all their input tokens. Under P/D the prefill phase is where
# the cache is; the decode phase routes the same tokens again and caches nothing, so it is left out.
ROUTER_HITS = "dynamo_component_router_kv_selected_cached_prefix_tokens_total"
ROUTER_QUERIES = "dynamo_component_router_input_sequence_tokens_sum"
PREFIX_SOURCES = (
    (PREFIX_HITS, PREFIX_QUERIES, "engine counters vllm:prefix_cache_hits/queries"),
    (ROUTER_HITS, ROUTER_QUERIES, "Dynamo KV router (frontend router_kv_selected_cached_prefix_tokens / "
     "router_input_sequence_tokens, prefill or aggregated phase, from the workers' KV events)"),
)  # fmt: skip


def prefix_cache_of(metrics: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The prefix-cache hit rate over one point's time span, from scraped counters, labelled with its source:
    the engines' own (vLLM's and the Dynamo workers' `vllm:prefix_cache_hits` / `vllm:prefix_cache_queries`, in
    tokens, summed over sources) when exported, else Dynamo's KV router in the frontend (cached input tokens of the
    requests it routed / their input tokens, prefill or aggregated phase; Dynamo's mocker exports no engine
    counter). Increase between the last
    sample at or before the point's first send and the last sample at or before its last end. None, with the
    reason, when no such counter was scraped."""
    sends = [r["t_send"] for r in records if r.get("t_send") is not None]
    ends = [r["t_end"] for r in records if r.get("t_end") is not None]
    none = {"hit_rate": None, "hits": None, "queries": None, "source": None}
    if metrics is None or not len(metrics):
        return {
            **none,
            "note": "no engine metrics in this run (metrics.parquet absent): hit rate not measured",
        }
    if not sends or not ends:
        return {**none, "note": "no request of this point was sent: hit rate not measured"}
    lo, hi = min(sends), max(ends)
    for hits, queries, source in PREFIX_SOURCES:
        m = metrics[metrics["metric"].isin([hits, queries])]
        m = m[~m["labels"].astype(str).str.contains('"phase": "decode"', regex=False)]
        if not len(m[m["metric"] == queries]):
            continue
        inc: dict[str, float] = {hits: 0.0, queries: 0.0}
        for (metric, _src, _lab), g in m.groupby(["metric", "source", "labels"]):
            g = g.sort_values("time")
            before, upto = g[g["time"] <= lo], g[g["time"] <= hi]
            if len(upto) and len(before):
                inc[metric] += max(0.0, float(upto["value"].iloc[-1]) - float(before["value"].iloc[-1]))
        q, h = inc[queries], inc[hits]
        if q <= 0:
            return {**none, "note": f"no prefix-cache queries counted during this point by the {source} (samples "
                    "too sparse?)"}  # fmt: skip
        return {"hit_rate": h / q, "hits": h, "queries": q, "source": source, "note": None}
    return {**none, "note": "neither the engines (vllm:prefix_cache_*) nor a Dynamo KV router "
            "(router_kv_selected_cached_prefix_tokens) exported prefix-cache counters: hit rate not measured"}  # fmt: skip


def client_stats(run_dir: str | Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The generator's own per-point stats (`load/<scenario>/client.jsonl`), by (scenario, point)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for f in sorted(Path(run_dir).glob(f"load/*/{CLIENT_STATS}")):
        for r in read_jsonl(f):
            out[(r["scenario"], r["point"])] = r
    return out


def write_summary(run_dir: str | Path, summary: dict[str, Any]) -> tuple[Path, Path]:
    """Write summary.json and summary.csv (never replacing existing ones)."""
    rd = Path(run_dir)
    js, cs = rd / "summary.json", rd / "summary.csv"
    for p in (js, cs):
        if p.exists():
            raise FileExistsError(
                f"{p} exists and results are never overwritten: summarize into a new run dir"
            )
    js.write_text(json.dumps(summary, indent=1, default=float) + "\n")
    rows = [flatten(p) for p in summary["points"]]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with cs.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return js, cs


def resolve_target(ctx: Any, endpoint_url: str = "", model_dir: str = "") -> tuple[str, Path]:
    """The OpenAI endpoint and a local dir with the served model's tokenizer: given, or what the last serving
    stage handed over in state.json (`endpoint.private_url`, where the server really listens; `model_dir`, the
    tokenizer files copied into the run dir)."""
    url = (
        endpoint_url
        or ctx.state.require("endpoint", produced_by="04_dynamo (or 02/03 with keep_running)")["private_url"]
    )
    mdir = Path(model_dir or ctx.state.require("model_dir", produced_by="the serving stage (02/03/04)"))
    if not (mdir / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"{mdir}: no tokenizer.json; workloads are built with the served model's tokenizer: pass model_dir "
            "(a local copy of the model's tokenizer files is enough)"
        )
    return url, mdir


def points_table(summary: dict[str, Any]):  # -> pandas.DataFrame
    """The summary's points as a compact table (p50/p99 latencies, throughput, errors, cost)."""
    import pandas as pd

    rows = []
    for p in summary["points"]:
        rows.append({
            "scenario": p["scenario"], "point": p["point"], "requests": p["requests"], "errors": p["errors"],
            "ttft_p50_ms": p["ttft_ms"]["p50"], "ttft_p99_ms": p["ttft_ms"]["p99"], "tpot_p50_ms": p["tpot_ms"]["p50"],
            "tpot_p99_ms": p["tpot_ms"]["p99"], "itl_p99_ms": p["itl_ms"]["p99"], "rps": p["rps"],
            "output_tok_s": p["output_tok_s"], "goodput_rps": p["goodput_rps"], "usd_per_mtok_out": p["usd_per_mtok_out"],
            "client_limited": p.get("client_limited", False), "loop": p.get("loop"),
            "prefix_cache_hit_rate": (p.get("prefix_cache") or {}).get("hit_rate"),
        })  # fmt: skip
    return pd.DataFrame(rows)


def prefix_cache_lines(summary: dict[str, Any]) -> list[str]:
    """One line per point: its loop and the prefix-cache hit rate with its source (or why there is none)."""
    out = []
    for p in summary["points"]:
        pc = p.get("prefix_cache") or {}
        hit = (f"prefix-cache hit rate {pc['hit_rate']:.1%} ({pc['hits']:,.0f} of {pc['queries']:,.0f} tokens, "
               f"{pc.get('source') or 'engine counters'})") if pc.get("hit_rate") is not None else (
            pc.get("note") or "hit rate not measured")  # fmt: skip
        out.append(f"{p['scenario']} {p['point']} ({p.get('loop', '?')}-loop): {hit}")
    return out


def client_limited_lines(summary: dict[str, Any]) -> list[str]:
    """One line per client-limited point (why, and the fix); one line saying none when none is."""
    out = [f"{p['scenario']} {p['point']}: CLIENT-LIMITED: {p['client_limited_why']}; fix: {p['client_fix']}"
           for p in summary["points"] if p.get("client_limited")]  # fmt: skip
    return out or ["no point is client-limited: every reported chunk time is an exact receive stamp"]
