"""Calibration without a GPU: R1's shapes, the pure helpers, the profile format the performance model loads, the
reference profiles (measured on lent H100/H200 machines) and the model's use of a profile."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from r1lab.calibrate import gpu_bench as gb
from r1lab.calibrate.summary import headline, lines, read_jsonl, vs_reference
from r1lab.perf import hardware, predict
from r1lab.perf.profile import PROFILE_DIR, load_profile, parse_profile

REFERENCE = Path(gb.__file__).parent / "reference"  # the raw records behind the reference profiles
OURS = {
    "h200-x4-2026-11-27": "h200-x4-2026-11-27.records.jsonl",
    "h100-sxm-x1-2026-11-27": "h100-sxm-x1-2026-11-27.records.jsonl",
}


def test_tp8_shapes_are_r1_layers_divided_by_tp():
    shapes = {(s.name, s.tp): s for s in gb.gemm_shapes((1, 8))}
    assert (shapes["qkv_a_proj", 1].k, shapes["qkv_a_proj", 1].n) == (7168, 1536 + 576)  # replicated
    assert (shapes["o_proj", 8].k, shapes["o_proj", 8].n) == (128 * 128 // 8, 7168)  # row-parallel: k / TP
    assert (shapes["q_b_proj", 8].k, shapes["q_b_proj", 8].n) == (1536, 128 * 192 // 8)  # column: n / TP
    assert (shapes["expert_gate_up", 1].k, shapes["expert_gate_up", 1].n) == (7168, 2 * 2048)
    assert (shapes["expert_down", 8].k, shapes["expert_down", 8].n) == (2048 // 8, 7168)
    assert (shapes["dense_down", 8].k, shapes["lm_head", 8].n) == (18432 // 8, 129280 // 8)
    assert ("qkv_a_proj", 8) not in shapes and shapes["lm_head", 1].max_m == 1024
    assert gb.LATENT == 576 and gb.KV_HEADS == 16


def test_gpu_identification_and_ceilings():
    assert gb.identify_gpu("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert gb.identify_gpu("NVIDIA H100 NVL") == "H100 NVL"
    assert gb.identify_gpu("NVIDIA H200") == "H200"
    assert gb.identify_gpu("NVIDIA A100-SXM4-80GB") is None
    for key, sheet in gb.DATASHEET.items():  # same datasheet as the performance model's catalog
        g = hardware.gpu(key)
        assert (sheet["hbm_tb_s"], sheet["fp8_tflops"], sheet["bf16_tflops"]) == (
            g.hbm_tb_s,
            g.fp8_tflops,
            g.bf16_tflops,
        )
    assert gb.ceiling_error("copy", 3.0, 3.35, "TB/s") is None
    assert "above the datasheet ceiling 3.35" in gb.ceiling_error("copy", 3.4, 3.35, "TB/s")
    assert gb.ceiling_error("x", 1e9, None, "u") is None  # unknown card: unchecked, not wrong


def test_rotation_beats_l2_and_allreduce_schedule_is_rank_independent():
    l2 = 50 << 20
    assert gb.rotation_sets(1 << 20, l2) * (1 << 20) >= 3 * l2
    assert gb.rotation_sets(4 << 30, l2) == 1
    assert gb.rotation_sets(1, l2) == 512  # capped
    inner = [gb.allreduce_inner(b) for b in gb.ALLREDUCE_BYTES]
    assert inner == [gb.allreduce_inner(b) for b in gb.ALLREDUCE_BYTES]  # a pure function of size
    assert max(inner) <= 32 and min(inner) >= 1 and gb.allreduce_inner(4096) > gb.allreduce_inner(1 << 28)
    assert gb.bus_gb_s(1 << 30, 4, 1.0) == pytest.approx((1 << 30) * 1.5 / 1e9)
    assert gb.median([3, 1, 2]) == 2 and gb.spread([1.0] * 10) == 0.0


def _records(dry_run: bool = False) -> list[dict]:
    meta = {
        "kind": "meta",
        "date": "2026-11-27",
        "time": "2026-11-27T22:00:00+00:00",
        "host": "h",
        "device_name": "NVIDIA H200",
        "gpu": "H200",
        "gpus": 2,
        "dry_run": dry_run,
        "versions": {"torch": "2.11.0+cu130", "cuda": "13.0", "driver": "580"},
        "clocks_mhz": {},
        "power_limit_w": 700.0,
        "topology": "GPU0 X NV18",
        "datasheet": {},
    }
    g = {"kind": "gemm", "name": "o_proj", "tp": 8, "k": 2048, "n": 7168, "tflops": 1.0, "error": None}
    return [
        meta,
        {"kind": "copy", "gpu": 0, "tb_s": 4.2, "error": None},
        {"kind": "copy", "gpu": 1, "tb_s": 4.3, "error": None},
        {**g, "dtype": "fp8", "m": 1, "seconds": 8e-6},
        {**g, "dtype": "bf16", "m": 1, "seconds": 1.1e-5},
        {**g, "dtype": "fp8", "m": 4096, "seconds": 1e-4},
        {**g, "dtype": "fp8_block", "m": 64, "seconds": 1e-5},
        {**g, "dtype": "fp8", "m": 8, "seconds": 1e-7, "error": "GEMM rate 9e3 TFLOPS is above the ceiling"},
        {"kind": "kv_read", "dtype": "bf16", "layout": "flat", "tokens": 2048, "tb_s": 3.0, "error": None},
        {"kind": "kv_read", "dtype": "bf16", "layout": "flat", "tokens": 8192, "tb_s": 3.9, "error": None},
        {"kind": "kv_read", "dtype": "fp8", "layout": "flat", "tokens": 8192, "tb_s": 3.8, "error": None},
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
            "bytes": 4096,
            "method": "eager",
            "seconds": 6e-5,
            "bus_gb_s": 0.1,
            "error": None,
        },
    ]


def test_build_profile_is_what_the_loader_accepts():
    prof = gb.build_profile(_records())
    p = parse_profile(json.loads(json.dumps(prof)), "built.json")
    assert p.copy_tb_s == pytest.approx(4.25) and p.kv_read_tb_s == 3.9 and p.gpus == 2
    rows = {(g["dtype"], g["m"]) for g in p.gemm}
    assert rows == {("fp8", 1), ("bf16", 1), ("fp8", 4096), ("fp8_block", 64)}  # the failed check left out
    assert p.allreduce == [{"world": 2, "bytes": 4096, "seconds": 7e-6, "bus_gb_s": 0.6}]  # queued only
    assert p.kv_read_fp8_tb_s == 3.8 and p.timing == "queued" and "DRY RUN" not in p.source
    assert "DRY RUN" in gb.build_profile(_records(dry_run=True))["source"]
    assert gb.profile_slug("H100 SXM", "NVIDIA H100 80GB HBM3", 4, "2026-11-27") == "h100-sxm-x4-2026-11-27"


@pytest.mark.parametrize("slug", sorted(OURS))
def test_reference_profiles_load_and_stay_under_their_ceilings(slug):
    p = load_profile(slug)
    records = read_jsonl(REFERENCE / OURS[slug])
    assert gb.build_profile(records) == json.loads((PROFILE_DIR / f"{slug}.json").read_text())  # reproducible
    g = hardware.gpu(p.gpu)
    assert p.measured == "2026-11-27" and p.versions["torch"].startswith("2.11") and p.versions["driver"]
    assert p.clocks_mhz["sm_max"] == 1980 and p.topology
    assert 0.8 * g.hbm_tb_s < p.copy_tb_s < g.hbm_tb_s and 0.7 * g.hbm_tb_s < p.kv_read_tb_s < g.hbm_tb_s
    for e in p.gemm:
        ceiling = g.bf16_tflops if e["dtype"] == "bf16" else g.fp8_tflops
        assert 0 < e["tflops"] < ceiling
        assert e["k"] * e["n"] * (2 if e["dtype"] == "bf16" else 1) / e["seconds"] / 1e12 < g.hbm_tb_s
    per_dtype = 15 * 12 + 2 * 8  # R1 shapes x m (lm_head only to m = 1024)
    # cuBLAS block-scaled fp8 refuses m = 1 (15 shapes) and k/128 not a multiple of 4 (TP8 k 2304, 256)
    blocks_refused = 15 + 2 * 12
    assert {e["tp"] for e in p.gemm} == {1, 8} and len(p.gemm) == 3 * per_dtype - blocks_refused
    assert p.timing == "queued" and 0.7 * g.hbm_tb_s < p.kv_read_fp8_tb_s < g.hbm_tb_s
    assert not any(r.get("error") for r in records if r["kind"] in ("gemm",) and r["dtype"] != "fp8_block")
    for a in p.allreduce:
        assert a["bus_gb_s"] < 450 and a["seconds"] > 0
    eff = p.efficiency()
    assert eff.fp8_kind == "fp8_block" and 1100 < eff.fp8_curve[-1][1] < g.fp8_tflops


def test_h200_profile_allreduce_and_repeat_run_agree():
    p = load_profile("h200-x4-2026-11-27")
    worlds = {a["world"] for a in p.allreduce}
    assert worlds == {2, 4}
    floor4 = min(a["seconds"] for a in p.allreduce if a["world"] == 4)
    assert 5e-6 < floor4 < 30e-6  # NCCL on NVLink: microseconds, not the ~70 us of an eager single call
    first = headline(read_jsonl(REFERENCE / OURS["h200-x4-2026-11-27"]))
    again = headline(read_jsonl(REFERENCE / "h200-x4-2026-11-27.repeat.records.jsonl"))
    assert again["copy_tb_s"] == pytest.approx(first["copy_tb_s"], rel=0.01)
    assert again["gemm"]["fp8"]["plateau_tflops_median_m_ge_4096"] == pytest.approx(
        first["gemm"]["fp8"]["plateau_tflops_median_m_ge_4096"], rel=0.03
    )
    assert again["allreduce"]["4"]["floor_us_queued"] == pytest.approx(
        first["allreduce"]["4"]["floor_us_queued"], rel=0.1
    )


def test_summary_against_shared_calibration():
    shared = Path(__file__).resolve().parents[2] / "shared" / "calibration" / "h100x1" / "gemm.jsonl"
    ours = read_jsonl(REFERENCE / OURS["h100-sxm-x1-2026-11-27"])
    ref = vs_reference(ours, read_jsonl(shared)) if shared.exists() else None
    text = "\n".join(lines(headline(ours), ref))
    assert "copy (read+write)" in text and "% of datasheet 3.35" in text
    if ref is not None:  # the same layers, timed queued instead of one eager call: never slower in bulk
        assert ref["gemm_matched"] > 80 and ref["copy_ratio"] == pytest.approx(1.0, abs=0.05)
        assert ref["gemm_speedup_median"]["fp8 m<=64"] > 1.2


def test_model_uses_the_profile_it_is_given(tmp_path):
    """The performance model reads a profile file: a slower all-reduce in it makes TP8 decode slower."""
    base = json.loads((PROFILE_DIR / "h200-x4-2026-11-27.json").read_text())
    slow = dict(base, allreduce=[dict(a, seconds=a["seconds"] * 10) for a in base["allreduce"]])
    path = tmp_path / "h200-slow.json"
    path.write_text(json.dumps(slow))
    kw = dict(isl=1024, osl=256, concurrency=1)
    ours = predict("H200", 8, "TP8", "vllm", profile="h200-x4-2026-11-27", **kw)
    slower = predict("H200", 8, "TP8", "vllm", profile=str(path), **kw)
    default = predict("H200", 8, "TP8", "vllm", **kw)
    assert math.isfinite(ours.tpot_ms["mean"]) and slower.tpot_ms["mean"] > 1.5 * ours.tpot_ms["mean"]
    # issue 3's model made this profile the H200 default once it charged per-kernel floors (NARRATIVE.md (a), (b))
    assert ours.tpot_ms["mean"] == default.tpot_ms["mean"]


def test_summary_skips_unsupported_shapes_with_their_reason():
    """fp8_block at m=1 raises CUBLAS_STATUS_NOT_SUPPORTED on cuBLAS 13: the summary names it, never NaN."""
    from r1lab.calibrate.gpu_bench import print_summary

    base = {"kind": "gemm", "dtype": "fp8_block", "name": "lm_head", "tp": 8, "k": 7168, "n": 16160}
    records = [
        {**base, "m": 1, "error": "unsupported: CUBLAS_STATUS_NOT_SUPPORTED when calling cublasLtMatmul"},
        {**base, "m": 64, "seconds": 2e-5, "tflops": 740.0, "weight_tb_s": 3.1},
    ]
    lines: list[str] = []
    print_summary(records, lines.append)
    text = "\n".join(lines)
    assert "nan" not in text.lower()
    assert "m=1 skipped (unsupported: CUBLAS_STATUS_NOT_SUPPORTED" in text
    assert "m>=4096 not measured" in text
