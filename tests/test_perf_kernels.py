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
