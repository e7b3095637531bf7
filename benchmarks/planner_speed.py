"""How many configuration-points per second does the planner evaluate in-process? Measured, not assumed.

A configuration-point is one candidate deployment (GPU type, pods, parallelism / P-D split) at one load point
(concurrency or rate, lengths): one `predict()` call the planner makes. The default schedule is what the planner
really explores: `plan_experiment` on every RunPod params file under params/ (the params' own topology and the
standard alternatives, every load point of every scenario), from cold caches each time (as one `r1lab plan`
process starts), timed in-process (params loading and interpreter start-up excluded; the rest of the plan,
problems and commands included).

Each `--method` is timed in the same run, interleaved round by round (the machine is noisy; compare the ratio):
  simulate  every point through the event simulation (r1lab.perf.simulate)
  auto      the analytic closed-loop steady state (r1lab.perf.steady) where it applies, the simulation elsewhere
With both, it also prints how far `auto`'s plan is from `simulate`'s on every point and metric (the agreement).
Take /tmp/r1lab-heavy.lock on a shared machine:

    flock /tmp/r1lab-heavy.lock .venv/bin/python benchmarks/planner_speed.py            # 3 rounds, both methods
    .venv/bin/python benchmarks/planner_speed.py --rounds 1 --method simulate --params params/runpod-1x8-h200.yaml
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from r1lab.config import load_experiment  # noqa: E402
from r1lab.perf import planner  # noqa: E402

# the module itself (r1lab.perf re-exports the function under the same name)
_predict_mod = importlib.import_module("r1lab.perf.predict")
METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")


def _clear_caches() -> None:
    """Forget everything a previous plan computed (each timed plan starts cold, as a fresh process would): every
    functools cache of r1lab.perf's modules and their classes (step models with their kept step costs, profiles,
    memory plans, the GPU's kernel tables)."""
    for name, mod in list(sys.modules.items()):
        if not name.startswith("r1lab.perf"):
            continue
        for obj in vars(mod).values():
            for o in (obj, *(vars(obj).values() if isinstance(obj, type) else ())):
                f = getattr(o, "__func__", o)  # a classmethod's function
                if hasattr(f, "cache_clear"):
                    f.cache_clear()


def _supports_method() -> bool:
    return "method" in inspect.signature(planner.plan_experiment).parameters


def points_of(plan: Any) -> int:
    """Configuration-points a plan evaluated: every load point of a topology that fits, the one that showed
    a topology does not fit."""
    return sum(len(t["points"]) if t["fits"] else 1 for t in plan.topologies)


def plan_once(
    exp: Any, method: str, calls: list[tuple[float, str, str]] | None = None
) -> tuple[float, int, Any]:
    """(seconds, configuration-points, plan) of one cold `plan_experiment`; `calls` collects (seconds, path,
    point) of every predict() the planner made."""
    _clear_caches()
    kw = {"method": method} if _supports_method() else {}
    real = planner.predict

    def timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        p = real(*a, **k)
        if calls is not None:
            par = a[2].label() if hasattr(a[2], "label") else str(a[2])
            load = f"c={a[6]}" if k.get("rate") is None else f"rate={k['rate']:.3g}/s"
            pd = " P/D" if k.get("disaggregation") else ""
            ranges = " length ranges" if k.get("isl_range") or k.get("osl_range") else ""
            what = f"{a[0].split()[-1]} {par}{pd} {a[4]}/{a[5]} {load}{ranges}"
            calls.append((time.perf_counter() - t, getattr(p, "evaluated_by", "simulation"), what))
        return p

    planner.predict = timed
    try:
        t0 = time.perf_counter()
        plan = planner.plan_experiment(exp, **kw)
        dt = time.perf_counter() - t0
    finally:
        planner.predict = real
    return dt, points_of(plan), plan


def _rel(a: float | None, b: float | None) -> float:
    if a is None or b is None:
        return 0.0 if a == b else float("inf")
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(b), 1e-12)


def agreement(fast: Any, ref: Any) -> dict[str, tuple[float, str]]:
    """Largest relative difference of `fast` from `ref` per metric, with the point where it occurs."""
    worst: dict[str, tuple[float, str]] = {}

    def note(key: str, d: float, where: str) -> None:
        if d > worst.get(key, (-1.0, ""))[0]:
            worst[key] = (d, where)

    for tf, tr in zip(fast.topologies, ref.topologies, strict=True):
        note("fits", 0.0 if tf["fits"] == tr["fits"] else float("inf"), tr["id"])
        for pf, pr in zip(tf["points"], tr["points"], strict=True):
            where = f"{tr['id']} {pr['scenario']} c={pr['concurrency']} rate={pr['rate']}"
            for m in METRICS:
                for s in ("mean", "p50", "p90", "p99"):
                    note(f"{m}.{s}", _rel(pf[m][s], pr[m][s]), where)
            note("output_tok_s", _rel(pf["output_tok_s"], pr["output_tok_s"]), where)
            note("meets_slo", 0.0 if pf["meets_slo"] == pr["meets_slo"] else float("inf"), where)
    return worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", nargs="*", help="params files (default: every params/runpod-*.yaml)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--method", choices=("simulate", "auto", "both"), default="both")
    a = ap.parse_args(argv)
    files = [Path(p) for p in a.params] if a.params else sorted((REPO / "params").glob("runpod-*.yaml"))
    exps = [(f.name, load_experiment(f)) for f in files]
    methods = ["simulate", "auto"] if a.method == "both" else [a.method]
    if not _supports_method():
        methods = ["simulate"]  # a planner without the analytic path: only today's way
    names = ", ".join(n for n, _ in exps)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; params: {names}")
    sim = importlib.import_module("r1lab.perf.simulate")
    how = "native build (scripts/build_native.py)" if getattr(sim, "COMPILED", False) else "pure Python"
    print(f"r1lab.perf.simulate: {how}, {sim.__file__}")
    tot: dict[str, list[float]] = {m: [] for m in methods}
    pts: dict[str, int] = {}
    plans: dict[str, dict[str, Any]] = {m: {} for m in methods}
    calls: dict[str, list[tuple[float, str, str]]] = {m: [] for m in methods}
    for r in range(a.rounds):
        for m in methods if r % 2 == 0 else methods[::-1]:
            secs, n = 0.0, 0
            for name, exp in exps:
                dt, k, plan = plan_once(exp, m, calls[m] if r == a.rounds - 1 else None)
                secs, n = secs + dt, n + k
                plans[m][name] = plan
            tot[m].append(secs)
            pts[m] = n
            print(f"round {r + 1} {m:9s} {n} configuration-points in {secs:6.2f} s: {n / secs:8.1f} points/s")
    print()
    best = {m: min(v) for m, v in tot.items()}
    for m in methods:
        print(f"{m:9s} best of {a.rounds}: {pts[m] / best[m]:8.1f} configuration-points/s ({pts[m]} points)")
    for m in methods:
        by_path: dict[str, list[float]] = {}
        for dt, path, _ in calls[m]:
            by_path.setdefault(path, []).append(dt)
        parts = ", ".join(f"{len(v)} by {k} in {sum(v):.2f} s" for k, v in sorted(by_path.items()))
        print(f"{m:9s} predict() calls of the last round: {parts}")
        for dt, path, what in sorted(calls[m], reverse=True)[:5]:
            print(f"    {dt * 1e3:7.1f} ms  {path:12s}  {what}")
    if len(methods) == 2:
        ratios = [s / f for s, f in zip(tot["simulate"], tot["auto"], strict=True)]
        print(f"speed-up auto / simulate, per round: {', '.join(f'{x:.1f}x' for x in ratios)}")
        print("\nagreement of auto with simulate (largest |relative difference| over every point):")
        worst: dict[str, tuple[float, str]] = {}
        for name in plans["simulate"]:
            for key, (d, where) in agreement(plans["auto"][name], plans["simulate"][name]).items():
                if d > worst.get(key, (-1.0, ""))[0]:
                    worst[key] = (d, f"{name}: {where}")
        for key, (d, where) in sorted(worst.items()):
            print(f"  {key:14s} {d * 100:7.2f}%  at {where}")
        try:
            from r1lab.perf import steady  # noqa: PLC0415  (a planner without the analytic path has none)
        except ImportError:
            steady = None
        if steady is not None:
            tpot_tol = max(steady.TPOT_TOLERANCE, getattr(steady, "LOCKSTEP_TPOT_TOLERANCE", 0.0))
            stated = {"output_tok_s": steady.THROUGHPUT_TOLERANCE, "tpot_ms.mean": tpot_tol,
                      "ttft_ms.mean": steady.TTFT_TOLERANCE, "ttft_ms.p99": steady.TTFT_TOLERANCE}  # fmt: skip
            print("stated tolerances (r1lab.perf.steady) on these points:")
            for key, tol in stated.items():
                d = worst.get(key, (0.0, ""))[0]
                print(f"  {key:14s} <= {tol * 100:.0f}%: {'met' if d <= tol else 'NOT met'} ({d * 100:.2f}%)")
    target = 500.0
    slowest = min(pts[m] / best[m] for m in methods)  # the target holds for every method timed
    print(f"\ntarget >= {target:.0f} configuration-points/s ({', '.join(methods)}): "
          f"{'met' if slowest >= target else 'NOT met'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
