"""r1lab.perf.kernels: the kernel times measured on the lent H200 and how the step model uses them."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from r1lab.model import Parallelism
from r1lab.perf.kernels import KernelTable
from r1lab.perf.ops import Deployment, StepModel


def _records() -> list[dict]:
    text = resources.files("r1lab").joinpath("data", "kernels", "h200-kernels-2026-12-01.json").read_text()
    return json.loads(text)["records"]


def test_table_is_the_measurement():
    t = KernelTable.for_gpu("H200")
    assert t is not None and "layer_bench.py" in t.source and t.scale == 1.0
    r = next(r for r in _records() if r["kind"] == "gemm_tuned" and r["name"] == "q_b tp8" and r["m"] == 16)
    assert t.gemm_s(16, r["k"], r["n"]) == pytest.approx(r["seconds"])
    assert t.gemm_s(4096, r["k"], r["n"]) is None  # beyond the measured m: the profile decides
    # both fused-MoE layouts stream experts near HBM speed, with a fixed cost for the padded launch grid
    for fit in t.moe:
        assert 2.5 < fit.tb_s < 4.8 and 0 < fit.fixed_s < 60e-6


def test_other_hopper_parts_scale_by_bandwidth():
    h200, h100 = KernelTable.for_gpu("H200"), KernelTable.for_gpu("H100 SXM")
    assert "scaled from H200" in h100.source
    k, n = next(iter(h200.gemm))
    assert h100.gemm_s(1, k, n) == pytest.approx(h200.gemm_s(1, k, n) * 4.8 / 3.35)


def test_measured_kernels_only_ever_speed_up_a_gemm():
    sm = StepModel(Deployment("H200", Parallelism(8)))
    assert sm.kt is not None
    for m in (1, 8, 64):
        for k, n in (sm.a_rep, sm.a_qb, sm.a_o):
            assert sm._g(m, k, n) <= max(sm.eff.gemm_s(m, k, n), 2.5e-6) + 1e-12


def test_prefill_takes_the_measured_gemm_and_attention_rates():
    """Prefill GEMMs and attention run at the layer forward's measured rate (never faster than the roofline);
    the same factor at the measured sizes, interpolated between; decode untouched."""
    t = KernelTable.for_gpu("H200")
    dep = Deployment("H200", Parallelism(8))
    measured, roofline = StepModel(dep), StepModel(dep, measured_prefill=False)
    m = 8192
    rec = dict(t.prefill["tp8"])[m]
    assert measured._prefill_factor("gemm", m) == pytest.approx(rec["gemm"] / roofline._dense_gemms_s(m))
    assert all(f >= 1.0 for pts in measured._prefill_factors.values() for _, f in pts)
    # below the measured prefill sizes: 1 where the tuned decode-size kernels decide, bridged up to 1024 rows
    assert measured._prefill_factor("gemm", 128) == 1.0
    assert 1.0 < measured._prefill_factor("gemm", 512) < measured._prefill_factor("gemm", 1024)
    pre = measured.breakdown(0, 0, m, m * (m + 1) / 2)
    ref = roofline.breakdown(0, 0, m, m * (m + 1) / 2)
    assert pre["attention_gemm"] > ref["attention_gemm"] and pre["attention_core"] > ref["attention_core"]
    assert (
        pre["moe_experts"] > ref["moe_experts"]
    )  # shared expert + router GEMMs; the routed ones are measured
    assert measured.breakdown(64, 64 * 2000) == roofline.breakdown(64, 64 * 2000)
    # a chunk after a long prefix: attention at the rate of the work it does (query-key pairs), not of its size
    chunk, prefix = 1024, 31 * 1024
    f_chunk = measured._prefill_factor("attention", measured.heads * chunk * (prefix + chunk / 2))
    assert f_chunk < measured._prefill_factor("attention", measured.heads * chunk * chunk / 2)


def test_mla_decode_has_the_measured_kernel_latency():
    t = KernelTable.for_gpu("H200")
    mla = [
        r["parts"]["MLA decode attention (split-KV + combine)"]
        for r in _records()
        if r["kind"] == "layer" and r["mode"] == "decode" and r["m"] == 1 and "parts" in r
    ]
    assert t.mla_decode_floor_s == pytest.approx(min(mla))
    sm = StepModel(Deployment("H200", Parallelism(8)))
    assert sm.parts(1, 1000, 0, 0)["attention_core"] == pytest.approx(sm.layers * t.mla_decode_floor_s)


def test_attention_tp_with_ep_needs_no_all_to_all():
    """TP8 attention + EP8 experts: every rank holds every token, the TP all-reduce sums the experts' outputs;
    attention-DP ranks (DP8 EP8) dispatch their tokens."""
    tp_ep = StepModel(Deployment("H200", Parallelism(8, ep=True)))
    dp_ep = StepModel(Deployment("H200", Parallelism(1, 1, 8, True)))
    assert tp_ep.breakdown(8, 8000)["ep_all_to_all"] == 0.0
    assert dp_ep.breakdown(8, 8000)["ep_all_to_all"] > 0.0


def test_sglang_runs_the_shared_expert_inside_the_fused_moe():
    """sglang: the shared expert is one more expert of the grouped GEMMs (its own GEMMs and kernels gone); not
    under EP, not in vLLM."""
    sg = StepModel(Deployment("H200", Parallelism(8), "sglang"))
    vl = StepModel(Deployment("H200", Parallelism(8), "vllm"))
    a, b = sg.breakdown(8, 8 * 2000), vl.breakdown(8, 8 * 2000)
    assert a["small_kernels"] < b["small_kernels"] and a["moe_experts"] < b["moe_experts"]
    ep = StepModel(Deployment("H200", Parallelism(8, ep=True), "sglang"))
    ep_v = StepModel(Deployment("H200", Parallelism(8, ep=True), "vllm"))
    assert ep.breakdown(8, 8 * 2000)["small_kernels"] == ep_v.breakdown(8, 8 * 2000)["small_kernels"]


def test_long_prompt_attention_rate_is_the_measured_one():
    """Past the layer forward's 8192 tokens the attention rate comes from prefill_attention_bench's records (same
    kernel): the factor falls as the work grows instead of staying at the 8192 value."""
    t = KernelTable.for_gpu("H200")
    assert t.prefill_attention and all(m > 8192 for _, m, _ in t.prefill_attention)
    sm = StepModel(Deployment("H200", Parallelism(8)))
    f8k = sm._prefill_factor("attention", 16 * 8192 * 8193 / 2)
    f32k = sm._prefill_factor("attention", 16 * 32768 * 32769 / 2)
    assert 1.0 <= f32k < f8k
