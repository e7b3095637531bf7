"""`r1lab plan PARAMS [--json] [--out DIR] [--only-params] [--method simulate|auto]`: the capacity plan of a params file (r1lab.perf.planner).

An entry point: it loads the params (config) and calls stage 00's make_plan (the planner, which itself reads no
params file, with the commands r1lab.serve renders)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from r1lab.config import ParamsError, load_experiment
from r1lab.perf.planner import render_text
from r1lab.stages.plan import make_plan


def cli_main(argv: list[str]) -> int:
    """`r1lab plan PARAMS [--json] [--out DIR]`: 0 on success, 1 on bad params."""
    ap = argparse.ArgumentParser(
        prog="r1lab plan", description="Fit, KV capacity, predicted performance, cost."
    )
    ap.add_argument("params")
    ap.add_argument(
        "--json", action="store_true", help="print the plan as JSON (schema in r1lab.perf.planner)"
    )
    ap.add_argument("--out", help="also write plan.json and charts (HTML) into this directory")
    ap.add_argument("--only-params", action="store_true", help="skip the standard alternative topologies")
    ap.add_argument(
        "--method",
        choices=("simulate", "auto"),
        default="simulate",
        help="simulate: every load point through the event simulation (default); auto: the analytic closed-loop "
        "steady state where it applies (r1lab.perf.steady: faster; throughput/TPOT close, TTFT not: see there)",
    )
    a = ap.parse_args(argv)
    try:
        exp = load_experiment(a.params)
    except ParamsError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 1
    plan = make_plan(exp, include_standard=not a.only_params, method=a.method)
    if a.out:
        from r1lab.perf.charts import write_charts  # plotly: only when charts are asked for

        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        target = out / "plan.json"
        if target.exists():
            print(f"{target} exists: results are never overwritten", file=sys.stderr)
            return 1
        target.write_text(json.dumps(plan.as_dict(), indent=1) + "\n", encoding="utf-8")
        write_charts(plan, out / "charts")
    print(json.dumps(plan.as_dict(), indent=1) if a.json else render_text(plan, exp))
    return 0
