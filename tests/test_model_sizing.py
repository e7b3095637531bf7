"""r1lab.model: DeepSeek-R1 sizes pinned against hand-computed values from config.json."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

import pytest

from r1lab.model import ModelSpec, Parallelism, WeightBytes

R1 = ModelSpec.deepseek_r1()


def test_kv_bytes_per_token_mla_latent():
    # 61 layers x (kv_lora_rank 512 + qk_rope_head_dim 64) x 2 bytes
    assert R1.kv_bytes_per_token("auto") == 61 * 576 * 2 == 70_272
    assert R1.kv_bytes_per_token("bf16") == 70_272
    assert R1.kv_bytes_per_token("fp8") == 35_136
    assert R1.kv_bytes_per_token("auto", layers=31) == 31 * 576 * 2
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        R1.kv_bytes_per_token("int3")


def test_parameter_counts():
    attn = 7168 * 1536 + 1536 * 24576 + 7168 * 576 + 512 * 32768 + 16384 * 7168  # 187,105,280
    dense = 3 * 7168 * 18432
    moe = 257 * 3 * 7168 * 2048 + 256 * 7168
    embed_head = 2 * 129280 * 7168
    total = 61 * attn + 3 * dense + 58 * moe + embed_head
    assert total == 671_025_397_760
    assert R1.total_params() == total
    assert 36.5e9 < R1.active_params() < 38e9  # "about 37B active per token"


def test_weights_per_gpu_tp8_hand_computed():
    # block-FP8 linear k x n: k*n bytes + 4 B per 128x128 block
    fp8 = lambda k, n: k * n + 4 * -(-k // 128) * -(-n // 128)  # noqa: E731
    expert = 2 * fp8(7168, 2048) + fp8(2048, 7168)
    assert expert == 44_050_944
    w = R1.weight_bytes_per_gpu(Parallelism(tp=8))
    assert w.routed_experts == 58 * 256 * expert / 8 == 81_758_552_064
    replicated = fp8(7168, 1536) + fp8(7168, 576)  # q_a_proj, kv_a_proj_with_mqa on every rank
    split = (fp8(1536, 24576) + fp8(512, 32768) + fp8(16384, 7168)) / 8
    assert w.attention == 61 * (replicated + split) == 2_235_264_480
    assert w.shared_experts == 58 * expert / 8
    assert w.embedding == w.lm_head == 2 * 129280 * 7168 / 8
    assert w.total == pytest.approx(85_140_130_848)
    assert w.total / 2**30 == pytest.approx(79.29, abs=0.01)


def test_checkpoint_size_matches_the_hub():
    # facts.md: ~642 GiB / ~689 GB in 163 shards, MTP layer included
    assert R1.checkpoint_bytes() == pytest.approx(689e9, rel=0.005)


def test_pipeline_split_like_vllm():
    assert R1.pp_layers(2) == [31, 30]
    assert R1.stage_layers(2, 0) == (3, 28)
    assert R1.stage_layers(2, 1) == (0, 30)
    w = R1.weight_bytes_per_gpu(Parallelism(tp=8, pp=2))
    assert w.total < R1.weight_bytes_per_gpu(Parallelism(tp=8)).total * 0.53


def test_expert_parallel_spreads_experts_over_tp_times_dp():
    tp8 = R1.weight_bytes_per_gpu(Parallelism(tp=8))
    ep16 = R1.weight_bytes_per_gpu(Parallelism(tp=8, dp=2, ep=True))
    assert ep16.routed_experts == pytest.approx(tp8.routed_experts / 2)
    assert ep16.attention == tp8.attention
    dp8 = R1.weight_bytes_per_gpu(Parallelism(tp=1, dp=8, ep=True))
    assert dp8.routed_experts == pytest.approx(tp8.routed_experts)
    assert dp8.attention == pytest.approx(61 * (187_105_280 + 2688 + 1120 + 9216 + 4096 + 28672))


def test_from_config_json_roundtrip(tmp_path):
    cfg = {
        k: getattr(R1, k) for k in R1.__dataclass_fields__ if k not in ("name", "weight_block", "fp8_weights")
    }
    cfg["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    spec = ModelSpec.from_config_json(p)
    assert spec.kv_bytes_per_token() == 70_272
    assert spec.total_params() == R1.total_params()
    del cfg["kv_lora_rank"]
    p.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json: missing key 'kv_lora_rank'"):
        ModelSpec.from_config_json(p)


def test_parallelism_rejects_zero():
    with pytest.raises(ValueError, match="tp"):
        Parallelism(tp=0)


def test_weight_bytes_total_adds_every_field_in_order() -> None:
    """WeightBytes.total adds every field in declaration order, bit for bit as sum(asdict(...).values())."""
    wb = WeightBytes(*(0.1 * 3.0**k + 1e-7 * k for k in range(len(fields(WeightBytes)))))
    assert wb.total == sum(asdict(wb).values())
    assert wb.as_dict()["total"] == wb.total
