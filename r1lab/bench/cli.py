"""`r1lab bench ...`: run load points or the params' scenarios, summarize a run dir, serve ground truth, Locust.

    r1lab bench point URL --model-dir DIR --model NAME --out RUN_DIR --concurrency 16 --requests 64 \\
        --input-tokens 1024 --output-tokens 256
    r1lab bench run PARAMS.yaml URL --model-dir DIR --out RUN_DIR [--only sweep ...]
    r1lab bench summarize RUN_DIR [--params PARAMS.yaml] [--gpus 8 --usd-per-hour 25.52] [--source measured-gpu]
    r1lab bench locust URL --model-dir DIR --model NAME --out DIR --users 64 --duration 60 --workers 2
    r1lab bench gtserver --port 0 --ttft-ms 50 --itl-ms 20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Literal


def _workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-dir", required=True, help="the served model's dir (tokenizer.json, tokenizer_config.json)"
    )
    p.add_argument("--model", required=True, help="the served model name (the request's model field)")
    p.add_argument("--input-tokens", type=int, default=1024)
    p.add_argument("--output-tokens", type=int, default=256)
    p.add_argument("--api", choices=["completions", "chat"], default="completions")
    p.add_argument("--seed", type=int, default=0)


def _cmd_point(a: argparse.Namespace) -> int:
    from r1lab.bench.loadgen import run_point
    from r1lab.bench.metrics import summarize_point
    from r1lab.bench.shapes import Shape
    from r1lab.bench.workloads import bodies, build_workload

    kind: Literal["poisson", "concurrency"] = "poisson" if a.rate else "concurrency"
    shape = Shape(kind, concurrency=a.concurrency, rate=a.rate, requests=a.requests, duration_s=a.duration,
                  warmup_s=a.warmup_s)  # fmt: skip
    n = a.requests or 256
    wl = build_workload(a.model_dir, n=n, input_tokens=a.input_tokens, output_tokens=a.output_tokens, model=a.model,
                        api=a.api, seed=a.seed)  # fmt: skip
    out = Path(a.out) / "load" / a.scenario / "requests.jsonl"
    res = run_point(a.url, bodies(wl), shape, scenario=a.scenario, out=out, api=a.api, workers=a.workers,
                    timeout_s=a.timeout_s, seed=a.seed)  # fmt: skip
    s = summarize_point(res.records)
    print(json.dumps({k: s[k] for k in ("scenario", "point", "requests", "errors", "errors_by_kind", "rps",
                                        "output_tok_s", "ttft_ms", "tpot_ms", "itl_ms", "e2el_ms")}, indent=1))  # fmt: skip
    print(f"records: {out}; client loop lag p99 {res.loop_lag_p99_ms:.2f} ms over {res.workers} worker(s)")
    return 0


def _cmd_run(a: argparse.Namespace) -> int:
    from r1lab.bench.scenarios import run_load
    from r1lab.config import load_experiment

    exp = load_experiment(a.params)
    run_load(exp.load, url=a.url, model_dir=a.model_dir, model=a.model or exp.model.served_name, run_dir=a.out,
             only=a.only)  # fmt: skip
    print(
        f"records under {Path(a.out) / 'load'}; summarize with: r1lab bench summarize {a.out} --params {a.params}"
    )
    return 0


def _cmd_summarize(a: argparse.Namespace) -> int:
    from r1lab.bench.metrics import Slo
    from r1lab.bench.scenarios import summarize_run

    scenarios, slo = None, None
    if a.params:
        from r1lab.config import load_experiment

        exp = load_experiment(a.params)
        scenarios = exp.load.scenarios
        slo = Slo(exp.load.slo.ttft_ms, exp.load.slo.tpot_ms, exp.load.slo.e2el_ms)
    s = summarize_run(a.run_dir, scenarios=scenarios, slo=slo, gpus=a.gpus, usd_per_hour=a.usd_per_hour,
                      source=a.source)  # fmt: skip
    for p in s["points"]:
        print(f"{p['scenario']:>20} {p['point']:>10}  req {p['requests']:>5}  err {p['errors']:>3}  "
              f"TTFT p50 {p['ttft_ms']['p50'] or float('nan'):8.1f} ms  TPOT p50 {p['tpot_ms']['p50'] or float('nan'):7.2f} ms  "
              f"out {p['output_tok_s'] or 0:9.1f} tok/s")  # fmt: skip
    print(f"wrote {Path(a.run_dir) / 'summary.json'} and summary.csv")
    return 0


def _cmd_locust(a: argparse.Namespace) -> int:
    from r1lab.bench.locust_run import run_locust, write_workload
    from r1lab.bench.workloads import build_workload

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    wl = build_workload(a.model_dir, n=256, input_tokens=a.input_tokens, output_tokens=a.output_tokens,
                        model=a.model, api=a.api, seed=a.seed)  # fmt: skip
    path = write_workload(out / "workload.jsonl", wl)
    r = run_locust(a.url, path, out / "load" / a.scenario, users=a.users, duration_s=a.duration,
                   workers=a.workers, scenario=a.scenario, api=a.api)  # fmt: skip
    print(r.log[-3000:])
    return r.returncode


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="r1lab bench", description="Load generation and serving metrics.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("point", help="one load point against a server")
    p.add_argument("url")
    p.add_argument("--out", required=True, help="run dir (records go to load/<scenario>/requests.jsonl)")
    p.add_argument("--scenario", default="adhoc")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--rate", type=float, default=None, help="requests/s (Poisson); with --concurrency: a cap")
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--warmup-s", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=600.0)
    _workload_args(p)
    p.set_defaults(fn=_cmd_point)
    p = sub.add_parser("run", help="the params file's load.scenarios")
    p.add_argument("params")
    p.add_argument("url")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--only", nargs="*", default=None)
    p.set_defaults(fn=_cmd_run)
    p = sub.add_parser("summarize", help="summary.json/.csv from a run dir's records")
    p.add_argument("run_dir")
    p.add_argument("--params", default=None)
    p.add_argument("--gpus", type=int, default=None)
    p.add_argument("--usd-per-hour", type=float, default=None)
    p.add_argument("--source", default="measured-twin", choices=["measured-twin", "measured-gpu"])
    p.set_defaults(fn=_cmd_summarize)
    p = sub.add_parser("locust", help="Locust (master + workers) with r1lab's locustfile")
    p.add_argument("url")
    p.add_argument("--out", required=True)
    p.add_argument("--scenario", default="locust")
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--duration", type=float, default=60)
    p.add_argument("--workers", type=int, default=2)
    _workload_args(p)
    p.set_defaults(fn=_cmd_locust)
    p = sub.add_parser("gtserver", help="the ground-truth SSE server", add_help=False)
    p.set_defaults(fn=None)
    if argv[:1] == ["gtserver"]:
        from r1lab.bench.gtserver import main

        return main(argv[1:])
    a = ap.parse_args(argv)
    if a.cmd == "point" and not (a.concurrency or a.rate):
        ap.error("point: give --concurrency N or --rate R")
    if a.cmd == "point" and not (a.requests or a.duration):
        ap.error("point: bound it with --requests N or --duration S")
    return a.fn(a)


if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
