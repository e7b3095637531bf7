"""The analytic steady state (r1lab.perf.steady) against the event simulation it stands in for, on a grid of
deployments, engines and closed-loop loads: within the tolerances the module states."""

from __future__ import annotations

import importlib

import pytest

from r1lab.model import Parallelism
from r1lab.perf import steady

P = importlib.import_module("r1lab.perf.predict")

KW = dict(kv_dtype="fp8", gpu_memory_utilization=0.92, network_name="instant-cluster")
DEPLOYMENTS = [
    ("NVIDIA H200", Parallelism(8), "vllm"),
    ("NVIDIA H200", Parallelism(8), "trtllm"),  # overlap scheduling: arrivals wait one step more
    ("NVIDIA H100 80GB HBM3", Parallelism(8, 2), "vllm"),  # two pipeline stages over an Instant Cluster
    ("NVIDIA H200", Parallelism(8), "trtllm+mtp"),  # one MTP draft token per step (1.85 tokens per step)
]
LOADS = [(1024, 1024, 1, None), (1024, 1024, 8, None), (1024, 1024, 64, None), (1024, 1024, 256, None),
         (1024, 1024, 512, None), (256, 4096, 64, 64), (1280, 256, 16, 160)]  # fmt: skip


@pytest.mark.parametrize(
    "gpu,par,engine", DEPLOYMENTS, ids=lambda v: v.label() if isinstance(v, Parallelism) else v
)
@pytest.mark.parametrize("isl,osl,conc,n", LOADS)
def test_agrees_with_simulation(
    gpu: str, par: Parallelism, engine: str, isl: int, osl: int, conc: int, n: int | None
) -> None:
    kw = dict(KW, num_requests=n)
    if engine.endswith("+mtp"):
        engine, kw["num_speculative_tokens"] = engine.removesuffix("+mtp"), 1
    a = P.predict(gpu, par.gpus, par, engine, isl, osl, conc, method="analytic", **kw)
    s = P.predict(gpu, par.gpus, par, engine, isl, osl, conc, method="simulate", **kw)
    assert a.fits and s.fits
    assert a.evaluated_by == "steady-state" and s.evaluated_by == "simulation"
    assert a.output_tok_s == pytest.approx(s.output_tok_s, rel=steady.THROUGHPUT_TOLERANCE)
    assert a.tpot_ms["mean"] == pytest.approx(s.tpot_ms["mean"], rel=steady.TPOT_TOLERANCE)
    for q in ("mean", "p99"):
        assert a.ttft_ms[q] == pytest.approx(s.ttft_ms[q], rel=steady.TTFT_TOLERANCE)
    assert a.preemptions == s.preemptions == 0


# lock-step attention-DP ranks under EP (one instance, one node; an engine that schedules step by step)
LOCKSTEP = [Parallelism(1, 1, 8, True), Parallelism(2, 1, 4, True)]
LOCKSTEP_LOADS = [(1024, 1024, 8, None), (1024, 1024, 64, None), (1024, 1024, 512, None), (256, 4096, 64, 64),
                  (8000, 256, 16, None), (1280, 256, 16, 160)]  # fmt: skip


@pytest.mark.parametrize("par", LOCKSTEP, ids=lambda v: v.label())
@pytest.mark.parametrize("isl,osl,conc,n", LOCKSTEP_LOADS)
def test_lockstep_ranks_agree_with_simulation(
    par: Parallelism, isl: int, osl: int, conc: int, n: int | None
) -> None:
    kw = dict(KW, num_requests=n)
    a = P.predict("NVIDIA H200", 8, par, "vllm", isl, osl, conc, method="analytic", **kw)
    s = P.predict("NVIDIA H200", 8, par, "vllm", isl, osl, conc, method="simulate", **kw)
    assert a.evaluated_by == "steady-state" and s.evaluated_by == "simulation"
    assert a.output_tok_s == pytest.approx(s.output_tok_s, rel=steady.THROUGHPUT_TOLERANCE)
    assert a.tpot_ms["mean"] == pytest.approx(s.tpot_ms["mean"], rel=steady.LOCKSTEP_TPOT_TOLERANCE)
    for q in ("mean", "p99"):
        assert a.ttft_ms[q] == pytest.approx(s.ttft_ms[q], rel=steady.TTFT_TOLERANCE)


def test_auto_falls_back_to_the_simulation_where_it_does_not_apply() -> None:
    cases = [
        (Parallelism(8), dict(concurrency=None, rate=2.0)),  # Poisson arrivals
        (Parallelism(8), dict(concurrency=16, isl_range=(512, 1536))),  # length spread
        (Parallelism(8), dict(concurrency=16, isl=16000)),  # a prompt longer than one step's budget
        (Parallelism(8), dict(concurrency=64, isl=100000)),  # the KV cache holds 14 of them: preemption
        (Parallelism(1, 1, 8, True), dict(concurrency=12)),  # lock-step ranks, clients not an even share
        (Parallelism(1, 1, 8, True), dict(concurrency=64, engine="trtllm")),  # lock-step, schedules ahead
        (Parallelism(8), dict(concurrency=16, engine="sglang")),  # prefill batches pause decoding
    ]
    for par, case in cases:
        kw = {"isl": 1024, "osl": 256, "engine": "vllm", **case}
        with pytest.raises(ValueError, match="does not apply"):
            P.predict("NVIDIA H200", 8, par, method="analytic", **kw, **KW)
        auto = P.predict("NVIDIA H200", 8, par, method="auto", **kw, **KW)
        sim = P.predict("NVIDIA H200", 8, par, method="simulate", **kw, **KW)
        assert auto == sim  # the very same simulation
    # lock-step ranks whose experts' all-to-all leaves the node (two pods over Global Networking)
    two = dict(kv_dtype="fp8", gpu_memory_utilization=0.92, network_name="global-networking")
    with pytest.raises(ValueError, match="does not apply"):
        P.predict(
            "NVIDIA H100 NVL", 16, Parallelism(8, 1, 2, True), "vllm", 1024, 256, 16, method="analytic", **two
        )


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="method must be"):
        P.predict("NVIDIA H200", 8, "TP8", method="fast")
