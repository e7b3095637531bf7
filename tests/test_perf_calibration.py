"""What the model takes from calibration data: raw `r1lab calibrate` records (block-scaled FP8 included),
queued (launch-free) timings, the small kernels of a step, and an engine that schedules one step ahead."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import sys

import pytest

from r1lab.model import Parallelism
from r1lab.perf.ops import ACT_BYTES_PER_VALUE, KERNEL_MIN_US, NON_GEMM_KERNELS, Deployment, StepModel
from r1lab.perf.profile import load_profile
from r1lab.perf.simulate import SchedulerConfig, Workload, simulate


def _records(tmp_path, with_block: bool = True):
    """A small records file as r1lab calibrate writes it (gpu_bench.py), one JSON object per measurement."""
    recs = [
        {
            "kind": "meta",
            "date": "2026-11-27",
            "device_name": "NVIDIA H200",
            "gpu": "H200",
            "gpus": 2,
            "versions": {"torch": "2.11.0+cu130"},
            "power_limit_w": 700.0,
        },
        {"kind": "copy", "gpu": 0, "tb_s": 4.2, "error": None},
        {"kind": "kv_read", "dtype": "bf16", "layout": "flat", "tokens": 2097152, "tb_s": 3.9, "error": None},
        {
            "kind": "allreduce",
            "world": 2,
            "bytes": 4096,
            "method": "queued",
            "seconds": 7e-6,
            "bus_gb_s": 0.6,
            "error": None,
        },
        {
            "kind": "allreduce",
            "world": 2,
            "bytes": 1 << 28,
            "method": "queued",
            "seconds": 9e-4,
            "bus_gb_s": 300.0,
            "error": None,
        },
    ]
    shapes = {"big": (7168, 36864), "thin": (512, 4096)}
    for dtype, slow in (("fp8", 1.0), ("bf16", 2.0)) + ((("fp8_block", 1.5),) if with_block else ()):
        for name, (k, n) in shapes.items():
            for m in (8, 64, 256, 4096):
                t = slow * max(k * n / 4.0e12 + 4.5e-6, 2 * m * k * n / 1.3e15)
                recs.append(
                    {
                        "kind": "gemm",
                        "dtype": dtype,
                        "name": name,
                        "tp": 1,
                        "m": m,
                        "k": k,
                        "n": n,
                        "seconds": t,
                        "tflops": 2 * m * k * n / t / 1e12,
                        "error": None,
                    }
                )
    recs.append(
        {
            "kind": "gemm",
            "dtype": "fp8_block",
            "name": "bad",
            "tp": 8,
            "m": 64,
            "k": 256,
            "n": 7168,
            "error": "unsupported: block-scaled fp8 through cuBLAS needs k/128 to be a multiple of 4",
        }
    )
    p = tmp_path / "h200-test.records.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return p


def test_records_convert_with_block_fp8_and_queued_timing(tmp_path):
    prof = load_profile(_records(tmp_path))
    assert prof.timing_method == "queued" and prof.gpu == "H200" and prof.kv_read_tb_s == 3.9
    assert all(g["k"] != 256 for g in prof.gemm)  # the failed measurement is left out
    e = prof.efficiency()
    assert e.fp8_kind == "fp8_block" and e.timing == "queued"
    # a measured shape's GPU time is used as measured, per-kernel floor included (block-scaled rows win)
    block_t = next(
        g["seconds"] for g in prof.gemm if g["dtype"] == "fp8_block" and g["name"] == "thin" and g["m"] == 8
    )
    assert e.gemm_s(8, 512, 4096) == pytest.approx(block_t)
    assert e.gemm_s(8, 512, 4096) > 512 * 4096 / (e.weight_tb_s * 1e12) * 1.5
    # queued all-reduce times carry no launch latency: nothing is subtracted
    assert e.allreduce_s(4096, 2) == pytest.approx(7e-6)
    without = load_profile(_records(tmp_path, with_block=False)).efficiency()
    assert without.fp8_kind == "fp8"


def test_eager_profiles_keep_their_behaviour():
    e = load_profile("h200-2026-11-27").efficiency()
    assert e.timing == "eager" and e.shape_times == {}
    assert e.allreduce_s(4096, 4) < 70e-6  # the eager launch floor is subtracted


def test_small_kernels_floor_in_decode_and_activation_traffic_in_prefill(tmp_path):
    dep = Deployment("NVIDIA H200", Parallelism(tp=8), "vllm")
    queued = StepModel(dep, load_profile(_records(tmp_path)).efficiency())
    eager = StepModel(dep, load_profile("h200-2026-11-27").efficiency())
    spec = dep.spec
    per_layer = (
        spec.num_hidden_layers * len(NON_GEMM_KERNELS["attention"])
        + spec.moe_layers * len(NON_GEMM_KERNELS["moe"])
        + spec.first_k_dense_replace * len(NON_GEMM_KERNELS["dense"])
    )
    dec_q = queued.parts(8, 8 * 2048, 0, 0)["small_kernels"]
    assert dec_q == pytest.approx((per_layer + len(NON_GEMM_KERNELS["step"])) * KERNEL_MIN_US * 1e-6)
    assert eager.parts(8, 8 * 2048, 0, 0)["small_kernels"] < 1e-4  # eager GEMM times already carry it
    m = 16384
    pre = eager.parts(0, 0, m, m * (m + 1) / 2)["small_kernels"]
    act = m * spec.hidden_size * ACT_BYTES_PER_VALUE / (eager.eff.kv_tb_s * 1e12)
    assert pre == pytest.approx(per_layer * act)


def test_scheduling_one_step_ahead_delays_mid_step_arrivals_by_one_step():
    sm = StepModel(Deployment("NVIDIA H200", Parallelism(tp=8), "sglang"))
    assert sm.eng.schedule_ahead_steps == 1
    sync = StepModel(Deployment("NVIDIA H200", Parallelism(tp=8), "sglang"), sm.eff)
    sync.eng = dataclasses.replace(sm.eng, schedule_ahead_steps=0)
    wl = Workload(isl=(400, 1000), osl=(200, 400), concurrency=16, num_requests=160, seed=3)
    sched = SchedulerConfig(256, 8192, True, 1 << 30, 64)
    ahead = statistics.fmean(simulate(sm, wl, sched).ttft_s)
    now = statistics.fmean(simulate(sync, wl, sched).ttft_s)
    step = sm.step_s(16, 16 * 900)
    assert 0.3 * step < ahead - now < 1.5 * step


def test_sglang_prefill_batches_pause_decoding_and_admission_reserves_decode_room():
    """sglang's scheduler (EngineConstants.prefill_first): a prefill batch never carries decodes, so requests
    prefilled in earlier batches wait for the later ones and a burst ends together; a request is admitted only
    while its prompt and max_new_tokens fit beside the running requests' reserved decode (no preemption)."""
    sm = StepModel(Deployment("NVIDIA H200", Parallelism(tp=8), "sglang"))
    assert sm.eng.prefill_first
    sm.eng = dataclasses.replace(sm.eng, frontend_per_token_s=0.0, frontend_s=0.0, schedule_ahead_steps=0)
    mixed = StepModel(Deployment("NVIDIA H200", Parallelism(tp=8), "sglang"), sm.eff)
    mixed.eng = dataclasses.replace(sm.eng, prefill_first=False)
    burst = Workload(isl=4000, osl=20, concurrency=4, num_requests=4)
    sched = SchedulerConfig(256, 8192, True, 1 << 30, 64)
    pf, mx = simulate(sm, burst, sched), simulate(mixed, burst, sched)
    # the first batch: two whole prompts and the third's first 192 tokens (chunked), nothing else
    first_batch = sm.step_s(0, 0, 8192, 2 * 4000 * 4001 / 2 + 192 * 193 / 2) + sm.eng.request_overhead_s
    assert min(pf.ttft_s) == pytest.approx(first_batch)
    assert max(pf.e2e_s) - min(pf.e2e_s) < 1e-9  # the first two waited for the second batch: one decode batch
    assert max(mx.e2e_s) - min(mx.e2e_s) > 1e-3  # mixed steps: the first two decode during the second chunk
    # 170 blocks of 64 = 10,880 tokens: two 4000 + 1000 requests fit with their reservation, a third does not
    small = SchedulerConfig(256, 8192, True, 170, 64)
    long = Workload(isl=4000, osl=1000, concurrency=4, num_requests=4)
    pf, mx = simulate(sm, long, small), simulate(mixed, long, small)
    assert pf.preemptions == 0 and mx.preemptions > 0
    assert sorted(pf.ttft_s)[2] > min(pf.e2e_s)  # the third waits for a finished request's blocks


def test_accuracy_benchmark_replays_each_source_as_documented():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "perf_model_accuracy.py"
    spec = importlib.util.spec_from_file_location("perf_model_accuracy", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    ix = mod.SETUPS["inferencex"]
    assert (ix.range_ratio, ix.max_num_batched_tokens, ix.max_num_seqs) == (0.8, 32768, 512)
    mtp, dp = mod.SETUPS["trtllm_min_latency"], mod.SETUPS["trtllm_max_throughput"]
    assert (mtp.max_num_seqs, mtp.per_user_with_context) == (1, True)
    assert (dp.max_num_seqs, dp.max_num_batched_tokens) == (128, 1151)
    rows = list(csv.DictReader(mod.DEFAULT_ANCHORS.open(encoding="utf-8")))
    assert all(r["setup"] in mod.SETUPS or r["setup"] == "out_of_scope" for r in rows)
    assert all(
        r["url"].startswith("https://") and r["date"] for r in rows
    )  # every figure says where it is from
    inscope = [r for r in rows if mod.scope(r)[0] is not None]
    assert len(inscope) >= 30
    assert {r["hardware"] for r in inscope} >= {"H100", "H200"}
    assert {r["engine"].split()[0] for r in inscope} >= {"sglang", "trtllm", "vllm"}
    pd_rows = [r for r in inscope if mod.scope(r)[1] is not None]
    assert pd_rows and mod.scope(pd_rows[0])[1].decode_instances == 1
    tpxep = next(r for r in inscope if r["parallelism"] == "TP8 EP4")
    assert mod.scope(tpxep)[0].moe_tp == 2
