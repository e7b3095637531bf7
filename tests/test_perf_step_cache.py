"""StepModel's fast paths (kept GEMM times, step_s without parts()' dict) give exactly what parts() gives."""

from __future__ import annotations

import random

import pytest

from r1lab.model import Parallelism
from r1lab.perf.ops import Deployment, StepModel

DEPLOYMENTS = [
    Deployment("NVIDIA H200", Parallelism(8)),
    Deployment("NVIDIA H200", Parallelism(1, 1, 8, True), "sglang", num_speculative_tokens=2),
    Deployment("NVIDIA H100 NVL", Parallelism(8), "vllm", num_speculative_tokens=1),
    Deployment("NVIDIA H100 80GB HBM3", Parallelism(8, 2), "trtllm", network="instant-cluster"),
]


@pytest.mark.parametrize("dep", DEPLOYMENTS, ids=lambda d: d.label())
def test_step_s_is_the_sum_of_parts_bit_for_bit(dep: Deployment) -> None:
    sm, ref, fresh = StepModel(dep), StepModel(dep), StepModel(dep)
    rng = random.Random(7)
    for _ in range(300):
        n_dec = float(rng.choice([0, 1, 3, 17, 64, 255]))
        n_pre = float(rng.choice([0, 0, 1, 100, 4096, 8192]))
        ctx = n_dec * rng.uniform(0, 20000)
        pairs = n_pre * rng.uniform(0, 9000)
        moe = rng.choice([None, (n_dec + n_pre) * 8])
        got = sm.step_s(n_dec, ctx, n_pre, pairs, moe)
        if dep.par.pp == 1:
            want = sum(ref.parts(n_dec, ctx, n_pre, pairs, moe_tokens=moe).values())
        else:
            mb = ref._microbatches(n_dec, n_pre)
            parts = ref.parts(
                n_dec / mb, ctx / mb, n_pre / mb, pairs / mb, moe_tokens=None if moe is None else moe / mb
            )
            stage = sum(v for k, v in parts.items() if k != "engine_overhead")
            tokens = (n_dec * (1 + ref.mtp) + n_pre) / mb
            want = dep.par.pp * stage + (dep.par.pp - 1) * ref.p2p_s(tokens) + ref.eng.step_overhead_s
        assert got == want, (n_dec, ctx, n_pre, pairs, moe)
        # the kept GEMM times are the ones a fresh model computes
        fresh._gemm.clear()
        assert sm._g(n_dec + n_pre, 7168, 2112) == fresh._g(n_dec + n_pre, 7168, 2112)
