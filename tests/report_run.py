"""A run directory for report tests, written in the documented schemas (docs/architecture.md) by r1lab's own
writers: run.json (rundir.new_run), load/*/requests.jsonl (bench RecordWriter), requests.parquet, summary.json
(bench.scenarios.summarize_run), plan.json (perf.planner), metrics.parquet (monitor.store). The requests come
from a small closed-loop server model with a fixed number of batch slots, so the sweep saturates and queues."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
SLOTS = 16  # the modelled server's batch slots: beyond them requests wait
KV_BLOCKS_PER_SLOT = 1.0 / SLOTS


def _requests(
    scenario: str, conc: int, n: int, isl: int, osl: int, t0: float, rng
) -> tuple[list[dict], float]:
    batch = min(conc, SLOTS)
    ttft0 = 0.04 + isl * 2e-5
    tpot = 0.010 * (1 + batch / 16)
    service = ttft0 + osl * tpot
    wait = max(0.0, conc / SLOTS - 1) * service
    recs, t_end_max = [], t0
    per_client = max(1, n // conc)
    for client in range(conc):
        t = t0 + client * 0.001
        for k in range(per_client):
            w = float(wait * rng.uniform(0.6, 1.4)) if wait else 0.0
            first = float(t + w + ttft0 * rng.uniform(0.95, 1.15))
            gaps = np.maximum(tpot * (1 + 0.08 * rng.standard_normal(osl - 1)), 1e-4)
            chunks = [first, *(first + np.cumsum(gaps))]
            end = float(chunks[-1] + 0.0005)
            recs.append({
                "scenario": scenario, "point": f"c{conc}", "request_id": f"{scenario}-c{conc}-{client}-{k}",
                "worker": client % 2, "concurrency": conc, "rate": None, "warmup": False, "t_sched": t,
                "t_send": t, "t_first": first, "t_end": end, "chunk_t": [float(x) for x in chunks],
                "chunk_tokens": [1] * osl, "input_tokens": isl, "output_tokens": osl, "status": 200,
                "error": None, "error_detail": None, "stamp_uncertain": [], "stamp_uncert_s": 0.0,
                # a reasoning model: the first third of the tokens think, the rest answer
                "t_first_token": first, "t_first_answer": float(chunks[osl // 3]), "reasoning_tokens": osl // 3,
                "answer_tokens": osl - osl // 3,
            })  # fmt: skip
            t = end + 0.001
            t_end_max = max(t_end_max, end)
    # one failed request per point at high load: errors are counted, never timed
    if conc >= 64:
        recs.append({**recs[-1], "request_id": f"{scenario}-c{conc}-err", "t_first": None, "chunk_t": [],
                     "chunk_tokens": [], "output_tokens": 0, "status": 503, "error": "http_status",
                     "error_detail": "503 Service Unavailable"})  # fmt: skip
    return recs, t_end_max


def make_run(root: Path, *, metrics: bool = True, plan: bool = True, seed: int = 0) -> Path:
    """A complete run directory under root (params/twin.yaml)."""
    from r1lab.bench.metrics import Slo
    from r1lab.bench.records import RecordWriter, consolidate
    from r1lab.bench.scenarios import summarize_run
    from r1lab.monitor.store import save
    from r1lab.perf.planner import plan_experiment
    from r1lab.rundir import new_run

    ctx = new_run(REPO / "params" / "twin.yaml", root=root)
    rd = ctx.run_dir
    rng = np.random.default_rng(seed)
    t = 1_795_000_000.0
    windows = []
    plan_points = [("sweep", c, 512, 128, 32) for c in (1, 4, 16, 64)] + [
        ("short-in-long-out", 16, 128, 512, 16)
    ]
    for scenario, conc, isl, osl, n in plan_points:
        recs, end = _requests(scenario, conc, n, isl, osl // 4, t, rng)
        with RecordWriter(rd / "load" / scenario / "requests.jsonl") as w:
            for r in recs:
                w.write(r)
        windows.append((t, end, conc))
        t = end + 2.0
    consolidate(rd)
    exp = ctx.exp
    summarize_run(rd, slo=Slo(exp.load.slo.ttft_ms, exp.load.slo.tpot_ms), gpus=exp.total_gpus,
                  usd_per_hour=51.04, source="measured-twin", run_id=rd.name)  # fmt: skip
    if plan:
        (rd / "plan.json").write_text(json.dumps(plan_experiment(exp).as_dict(), indent=1))
    if metrics:
        rows = []
        t_start, t_stop = windows[0][0] - 2, windows[-1][1] + 2
        for ts in np.arange(t_start, t_stop, 0.5):
            conc = next((c for a, b, c in windows if a <= ts <= b), 0)
            running = min(conc, SLOTS)
            waiting = max(0, conc - SLOTS)
            kv = min(1.0, running * 0.055 + (0.1 if waiting else 0.0))
            for name, v in (("vllm:kv_cache_usage_perc", kv), ("vllm:num_requests_running", running),
                            ("vllm:num_requests_waiting", waiting)):  # fmt: skip
                rows.append(
                    (float(ts), "worker/decode", name, json.dumps({"model_name": "deepseek-r1"}), float(v))
                )
            rows.append((float(ts), "head/frontend", "dynamo_frontend_inflight_requests", "{}", float(conc)))
        save(
            pd.DataFrame(rows, columns=["time", "source", "metric", "labels", "value"]),
            rd / "metrics.parquet",
        )
    return rd
