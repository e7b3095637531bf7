"""r1lab.perf.memory_plan: vLLM gpu_memory_utilization semantics, pinned against hand-computed values."""

from __future__ import annotations

import math

import pytest

from r1lab.model import ModelSpec, Parallelism
from r1lab.perf import memory_plan
from r1lab.perf.memory import RESERVES

GIB = 2**30
R1 = ModelSpec.deepseek_r1()


def test_h100_nvl_tp8_kv_capacity_by_hand():
    plan = memory_plan("NVIDIA H100 NVL", Parallelism(8), "auto", 0.90, 8192, 256, 64, 1024, 1024)
    total = 95830 * 2**20
    weights = 85_140_130_848
    # activation peak: per token 4*h*2 + k*h*2 + k*2*(I/tp)*2 + heads/tp*(192*2+128)*2, plus sampler logits
    per_token = 4 * 7168 * 2 + 8 * 7168 * 2 + 8 * 2 * 256 * 2 + 16 * (192 * 2 + 128) * 2
    assert per_token == 196_608
    act = 8192 * per_token + 256 * 129280 * 4 * 2
    reserves = RESERVES["cuda_context_bytes"] + RESERVES["nccl_bytes_per_group"] + RESERVES["cudagraph_bytes"]
    kv = 0.90 * total - weights - act - reserves
    blocks = math.floor(kv / (64 * 70_272))
    assert plan.fits
    assert plan.weights_bytes == weights
    assert plan.activation_bytes == act
    assert plan.kv_bytes == pytest.approx(kv)
    assert plan.num_blocks == blocks
    assert plan.kv_tokens == blocks * 64
    assert plan.max_concurrency == blocks // 32  # 2048 tokens = 32 blocks per sequence
    assert 0.5 * GIB < plan.kv_bytes < 5 * GIB  # "a few GB per GPU" (facts.md)


def test_fp8_kv_doubles_tokens():
    a = memory_plan("H100 NVL", Parallelism(8), "auto", 0.92)
    b = memory_plan("H100 NVL", Parallelism(8), "fp8", 0.92)
    assert b.kv_bytes_per_token == 35_136
    assert b.kv_tokens == pytest.approx(2 * a.kv_tokens, rel=0.01)


def test_h100_sxm_tp8_does_not_fit_and_says_why():
    plan = memory_plan("NVIDIA H100 80GB HBM3", Parallelism(8), "fp8", 0.92)
    assert not plan.fits
    assert "weights alone need 79.3 GiB" in plan.reason
    assert "73.3 GiB" in plan.reason  # 0.92 x 79.6 GiB
    assert plan.kv_tokens == 0


def test_h200_tp8_fits_with_room():
    plan = memory_plan("h200", Parallelism(8), "auto", 0.90, isl=1024, osl=1024)
    assert plan.fits and plan.kv_bytes > 40 * GIB
    assert plan.max_concurrency == 256  # capped by max_num_seqs


def test_max_model_len_larger_than_cache_refuses_to_start():
    plan = memory_plan("H100 NVL", Parallelism(8), "auto", 0.90, max_model_len=131072)
    assert not plan.fits
    assert "fewer than max_model_len 131,072" in plan.reason


def test_pipeline_stage_caches_only_its_layers():
    plan = memory_plan("H100 NVL", Parallelism(8, 2), "auto", 0.90)
    assert plan.kv_bytes_per_token == 31 * 576 * 2
    assert plan.fits and plan.kv_tokens > 1_000_000


def test_data_parallel_replicas_add_capacity():
    plan = memory_plan(
        "H200", Parallelism(1, 1, 8, True), "auto", 0.90, isl=1024, osl=1024, max_num_seqs=4096
    )
    assert plan.kv_tokens_total == 8 * plan.kv_tokens
    assert plan.max_concurrency == 8 * (plan.num_blocks // 32)


def test_bad_utilization_rejected():
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        memory_plan("H200", Parallelism(8), gpu_memory_utilization=1.5)
