"""Hardware profiles: reference files load, bad files name their key, calibration dirs convert."""

from __future__ import annotations

import json

import pytest

from r1lab.perf import hardware
from r1lab.perf.profile import load_profile, parse_profile, profile_from_calibration_dir, reference_profiles


def test_reference_profiles_load_with_dates_and_versions():
    assert {"h100-sxm-2026-11-27", "h200-2026-11-27"} <= set(reference_profiles())
    for slug in reference_profiles():
        p = load_profile(slug)
        assert p.measured == "2026-11-27" and p.versions["torch"].startswith("2.11")
        e = p.efficiency()
        hbm = hardware.gpu(p.gpu).hbm_tb_s
        assert 1.5 < e.weight_tb_s < hbm and 1000 < e.fp8_curve[-1][1] < 1500


def test_every_gpu_has_a_profile_and_aliases_resolve():
    for g in hardware.GPUS.values():
        load_profile(g.default_profile)
    assert hardware.gpu("h100nvl").runpod_id == "NVIDIA H100 NVL"
    assert hardware.gpu("H100 SXM").runpod_id == "NVIDIA H100 80GB HBM3"
    with pytest.raises(KeyError, match="unknown GPU"):
        hardware.gpu("A100")


def test_scaled_profile_for_h100_nvl():
    e = load_profile("h100-sxm-2026-11-27").efficiency("H100 NVL")
    base = load_profile("h100-sxm-2026-11-27").efficiency()
    assert e.scaled_from == "H100 SXM"
    assert e.weight_tb_s == pytest.approx(base.weight_tb_s * 3.9 / 3.35)


def test_gemm_roofline_monotone_in_m():
    e = load_profile("h200-2026-11-27").efficiency()
    times = [e.gemm_s(m, 7168, 4096) for m in (1, 16, 256, 4096, 16384)]
    assert times == sorted(times)
    assert e.allreduce_s(4096, 4) <= e.allreduce_s(268435456, 4)


def test_bad_profile_names_file_and_key(tmp_path):
    good = load_profile("h200-2026-11-27").to_json()
    bad = dict(good, gemm=[dict(good["gemm"][0], dtype="int4")])
    with pytest.raises(ValueError, match=r"x.json: gemm\[0\].dtype"):
        parse_profile(bad, "x.json")
    with pytest.raises(ValueError, match="measured"):
        parse_profile(dict(good, measured="yesterday"), "x.json")
    p = tmp_path / "p.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_profile(p)


def test_convert_calibration_dir(tmp_path):
    d = tmp_path / "cal"
    d.mkdir()
    recs = [
        {"kind": "device", "name": "NVIDIA H200", "count": 2, "torch": "2.11.0+cu130", "mem_gib": 139.8},
        {"kind": "hbm_copy", "bytes": 1 << 30, "seconds": 0.0005, "tb_s": 4.0},
    ] + [
        {
            "kind": "gemm",
            "dtype": "fp8",
            "name": "o_proj",
            "m": m,
            "k": 16384,
            "n": 7168,
            "seconds": s,
            "tflops": 2 * m * 16384 * 7168 / s / 1e12,
            "weight_tb_s": 0,
        }
        for m, s in ((1, 6e-5), (1024, 2e-4))
    ]
    (d / "gemm.jsonl").write_text("\n".join(json.dumps(r) for r in recs))
    (d / "ar.jsonl").write_text(
        json.dumps({"kind": "allreduce", "world": 2, "bytes": 4096, "seconds": 5e-5, "bus_gb_s": 0.1})
    )
    prof = profile_from_calibration_dir(d, "H200", "2026-11-28")
    assert prof.gpus == 2 and prof.versions["cuda"] == "13.0" and len(prof.gemm) == 2
    again = parse_profile(json.loads(json.dumps(prof.to_json())), "roundtrip")
    assert again.efficiency().ar_points[2]


def _gemm(dtype, k, n, m, tflops, name="x", tp=1):
    return {
        "dtype": dtype,
        "name": name,
        "tp": tp,
        "m": m,
        "k": k,
        "n": n,
        "seconds": 2 * m * k * n / tflops / 1e12,
    }


def _calibrate_tool_profile(gemm):
    """A profile as r1lab calibrate (gpu_bench.py) writes it: tp per GEMM, fp8 KV read, source as an object."""
    return {
        "schema_version": 1,
        "gpu": "H200",
        "device_name": "NVIDIA H200",
        "gpus": 1,
        "measured": "2026-11-27",
        "versions": {"torch": "2.11.0+cu130", "cuda": "13.0"},
        "copy_tb_s": 4.2,
        "kv_read_tb_s": 3.9,
        "kv_read_fp8_tb_s": 3.8,
        "gemm": gemm,
        "allreduce": [],
        "source": {"tool": "r1lab calibrate", "method": "queued behind a spin kernel"},
    }


def test_block_scaled_fp8_rows_are_preferred_when_they_cover_both_regimes():
    big = (7168, 36864)
    rows = [_gemm("fp8", *big, m, 1300.0) for m in (1, 256, 4096)]
    rows += [_gemm("fp8_block", *big, m, 900.0) for m in (1, 256, 4096)]
    rows += [_gemm("bf16", *big, m, 700.0) for m in (1, 256, 4096)]
    e = parse_profile(_calibrate_tool_profile(rows), "cal.json").efficiency()
    assert e.fp8_kind == "fp8_block"
    assert e.fp8_curve[-1][1] == pytest.approx(900.0)
    # without block rows at small m the per-tensor rows are used, and said so
    partial = [r for r in rows if not (r["dtype"] == "fp8_block" and r["m"] == 1)]
    e2 = parse_profile(_calibrate_tool_profile(partial), "cal.json").efficiency()
    assert e2.fp8_kind == "fp8" and e2.fp8_curve[-1][1] == pytest.approx(1300.0)


def test_measured_shape_curve_replaces_the_all_shape_best():
    big, thin = (7168, 36864), (256, 7168)  # a TP8 expert down-projection is thin in k
    rows = [_gemm("fp8", *big, m, 1300.0) for m in (1, 256, 4096)]
    rows += [_gemm("fp8", *thin, m, 300.0, tp=8) for m in (256, 4096)]
    e = parse_profile(_calibrate_tool_profile(rows), "cal.json").efficiency()
    assert e.tflops(4096, "fp8", *thin) == pytest.approx(300.0)
    assert e.tflops(4096, "fp8", 512, 4096) == pytest.approx(1300.0)  # not measured: all-shape best
    flops_equal = e.gemm_s(4096, *thin) / e.gemm_s(4096, 256 * 2, 7168 // 2)
    assert flops_equal == pytest.approx(1300.0 / 300.0, rel=1e-6)
    # a profile of another GPU type is scaled by datasheet ratios and keeps no per-shape curves
    assert load_profile("h200-2026-11-27").efficiency("H100 SXM").shapes == {}


def test_calibrate_tool_keys_are_validated():
    rows = [_gemm("fp8", 7168, 4096, m, 1000.0) for m in (1, 256)]
    assert parse_profile(_calibrate_tool_profile(rows), "cal.json").kv_read_fp8_tb_s == 3.8
    bad = _calibrate_tool_profile([dict(rows[0], tp=0)] + rows[1:])
    with pytest.raises(ValueError, match=r"cal.json: gemm\[0\].tp"):
        parse_profile(bad, "cal.json")
