"""Accuracy of the DeepSeek-R1 performance model against published results, and its sweep speed.

    .venv/bin/python benchmarks/perf_model_accuracy.py [--anchors ../shared/anchors/published.csv]

For every row of the anchors file within the model's scope: predicted vs published and the error; then the median
absolute error per metric group (targets: throughput and TPOT <= 15 %, TTFT <= 30 %). Rows out of scope are listed
with the reason. One set of constants per hardware (r1lab.perf.profile.Efficiency, computed from the reference
profiles in r1lab/data/profiles/) and per engine (r1lab.perf.ops.ENGINES, documented values): nothing is fitted per
row or to this file. Load points run `10 x concurrency` requests (InferenceX's num_prompts convention), fixed lengths.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

from r1lab.model import Parallelism
from r1lab.perf import predict
from r1lab.perf.ops import ENGINES
from r1lab.perf.planner import STANDARD
from r1lab.perf.predict import _efficiency

DEFAULT_ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "published.csv"
GROUPS = {
    "output_tok_s_per_gpu": "throughput",
    "output_tok_s_total": "throughput",
    "output_tok_s_per_user": "throughput",
    "mean_tpot": "tpot",
    "mean_ttft": "ttft",
}
TARGET = {"throughput": 15.0, "tpot": 15.0, "ttft": 30.0}
HARDWARE = {"H200": "NVIDIA H200", "H100": "NVIDIA H100 80GB HBM3", "B200": "NVIDIA B200"}


def scope(row: dict[str, str]) -> tuple[Parallelism | None, int, str]:
    """(parallelism, MTP draft tokens, reason out of scope or '')."""
    if row["hardware"] not in HARDWARE:
        return None, 0, f"hardware {row['hardware']} is not in the catalog (no datasheet/profile)"
    if not row["gpus"].isdigit():
        return None, 0, f"'{row['gpus']}' GPUs: production-scale deployment, size not stated"
    if int(row["gpus"]) > 16:
        return (
            None,
            0,
            f"{row['gpus']}-GPU wide expert parallelism with DeepEP/two-batch overlap: not modelled",
        )
    if not row["isl"] or not row["osl"] or not row["concurrency"].isdigit():
        return None, 0, "workload (isl/osl/concurrency) not stated"
    par_s = row["parallelism"].upper()
    if row["metric"] not in GROUPS:
        return None, 0, f"metric {row['metric']} not predicted"
    mtp = 0
    if "MTP-" in par_s:
        mtp = int(par_s.split("MTP-")[1].split()[0])
    if "ATTENTION-DP" in par_s:
        tp = int(par_s.split("TP")[1].split()[0])
        return Parallelism(tp=1, dp=tp, ep=True), mtp, ""
    tp = int(par_s.split("TP")[1].split()[0])
    return Parallelism(tp=tp, ep="EP" in par_s), mtp, ""


def value(p, metric: str) -> float:
    return {
        "output_tok_s_per_gpu": p.tok_s_per_gpu,
        "output_tok_s_total": p.output_tok_s,
        "output_tok_s_per_user": p.tok_s_per_user,
        "mean_tpot": p.tpot_ms["mean"],
        "mean_ttft": p.ttft_ms["mean"],
    }[metric]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--anchors", default=str(DEFAULT_ANCHORS))
    a = ap.parse_args(argv)
    path = Path(a.anchors)
    if not path.exists():
        print(f"{path}: no such anchors file (pass --anchors)", file=sys.stderr)
        return 1
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    print("Constants (one set per hardware, from reference profiles; one per engine, documented):")
    for hw in sorted({HARDWARE[r["hardware"]] for r in rows if r["hardware"] in HARDWARE}):
        e = _efficiency(hw, None)
        print(
            f"  {e.gpu}: profile {e.profile}{' scaled from ' + e.scaled_from if e.scaled_from else ''}, "
            f"weight stream {e.weight_tb_s:.2f} TB/s, KV read {e.kv_tb_s:.2f} TB/s, fp8 max "
            f"{e.fp8_curve[-1][1]:.0f} TFLOPS, all-reduce floor {e.allreduce_s(0, 8) * 1e6:.0f} us"
        )
    for name, c in ENGINES.items():
        print(
            f"  engine {name}: step overhead {c.step_overhead_s * 1e3:.1f} ms, request overhead "
            f"{c.request_overhead_s * 1e3:.0f} ms, MTP acceptance {c.mtp_acceptance}"
        )
    print()
    errors: dict[str, list[float]] = {g: [] for g in TARGET}
    out_of_scope = []
    print(
        f"{'source':<38} {'hw':<5} {'engine':<13} {'parallelism':<22} {'isl/osl/c':<15} {'metric':<22} "
        f"{'published':>10} {'predicted':>10} {'error':>8}"
    )
    cache: dict[tuple, object] = {}
    for r in rows:
        par, mtp, why = scope(r)
        if par is None:
            out_of_scope.append((r, why))
            continue
        hw, c, isl, osl = HARDWARE[r["hardware"]], int(r["concurrency"]), int(r["isl"]), int(r["osl"])
        key = (hw, par, r["engine"], isl, osl, c, mtp)
        if key not in cache:
            cache[key] = predict(
                hw,
                int(r["gpus"]),
                par,
                r["engine"],
                isl,
                osl,
                c,
                num_speculative_tokens=mtp,
                max_num_seqs=max(256, c),
                num_requests=10 * c,
                gpu_memory_utilization=0.9,
            )
        p = cache[key]
        pred, pub = value(p, r["metric"]), float(r["value"])
        err = (pred - pub) / pub * 100
        errors[GROUPS[r["metric"]]].append(abs(err))
        print(
            f"{r['source'][:38]:<38} {r['hardware']:<5} {r['engine'][:13]:<13} {r['parallelism'][:22]:<22} "
            f"{isl}/{osl}/{c:<6} {r['metric']:<22} {pub:>10.1f} {pred:>10.1f} {err:>+7.0f}%"
        )
    print()
    print("Median absolute error per metric group (target):")
    for g, errs in errors.items():
        if errs:
            med = statistics.median(errs)
            verdict = "met" if med <= TARGET[g] else f"MISSED by {med - TARGET[g]:.0f} points"
            print(f"  {g:<10} {med:5.1f} %  over {len(errs)} rows  (target <= {TARGET[g]:.0f} %: {verdict})")
    print()
    print("Out of scope:")
    for r, why in out_of_scope:
        print(
            f"  {r['source'][:50]:<50} {r['hardware']} x{r['gpus']} {r['parallelism'][:30]}: {r['metric']}: {why}"
        )
    # sweep speed: every standard topology x a concurrency sweep
    concs = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    t0 = time.perf_counter()
    n = 0
    for topo in STANDARD:
        for c in concs:
            predict(
                topo.gpu_type,
                topo.gpus,
                topo.par,
                "vllm",
                1024,
                1024,
                c,
                gpus_per_node=topo.gpus_per_node,
                network_name=topo.network,
                disaggregation=topo.disagg,
                kv_dtype="fp8",
                gpu_memory_utilization=0.92,
            )
            n += 1
    dt = time.perf_counter() - t0
    print()
    print(
        f"Sweep speed: {len(STANDARD)} configurations x {len(concs)} load points (1024/1024, 4 x c requests "
        f"each) = {n} predictions in {dt:.2f} s: {n / dt:.1f} configuration-points/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
