"""The tiny R1-shaped model dir: loads offline with transformers, R1's fields and template, valid R1-named shards."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from r1lab.tinymodel import R1_QUANTIZATION_CONFIG, write_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "m", weights=True, seed=0)


@pytest.fixture(scope="module")
def fp8_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(
        tmp_path_factory.mktemp("tiny") / "q", weights=True, quantized=True, seed=0, shards=3
    )


def _hashes(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _header(path: Path) -> dict:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])


def test_config_is_r1_shaped_and_tiny(model_dir: Path) -> None:
    from transformers import AutoConfig

    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["DeepseekV3ForCausalLM"] and cfg["model_type"] == "deepseek_v3"
    assert (cfg["kv_lora_rank"], cfg["qk_rope_head_dim"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]) == (
        512,
        64,
        128,
        128,
    )
    assert cfg["num_nextn_predict_layers"] == 1 and cfg["torch_dtype"] == "bfloat16"
    assert cfg["topk_method"] == "noaux_tc" and cfg["scoring_func"] == "sigmoid"
    assert (
        cfg["n_routed_experts"] % cfg["n_group"] == 0
        and cfg["num_hidden_layers"] > cfg["first_k_dense_replace"]
    )
    assert "quantization_config" not in cfg  # vLLM CPU runs the bf16 variant
    loaded = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    assert type(loaded).__name__ == "DeepseekV3Config" and loaded.hidden_size == cfg["hidden_size"] <= 512


def test_tokenizer_loads_offline_with_r1_chat_template(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert 3000 <= len(tok) <= cfg["vocab_size"]
    assert tok.bos_token_id == cfg["bos_token_id"] == gen["bos_token_id"] == 0
    assert tok.eos_token_id == cfg["eos_token_id"] == gen["eos_token_id"] == 1
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]
    text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert text == "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Why is the sky blue?<｜Assistant｜><think>\n"
    # Earlier reasoning is dropped from history, as in R1.
    hist = msgs + [{"role": "assistant", "content": "<think>\nhmm\n</think>Rayleigh."}]
    assert "hmm" not in tok.apply_chat_template(hist, tokenize=False)
    for t in ("<think>", "</think>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"):
        assert len(tok.encode(t, add_special_tokens=False)) == 1, t
    ids = tok("Explain the reasoning step by step, then compute 12345 + 678.").input_ids
    assert ids[0] == 0 and 10 <= len(ids) <= 40  # BPE actually merges: far fewer tokens than bytes
    assert (
        tok.decode(ids, skip_special_tokens=True)
        == "Explain the reasoning step by step, then compute 12345 + 678."
    )


def test_same_seed_same_bytes_other_seed_other_weights(model_dir: Path, tmp_path: Path) -> None:
    again = write_tiny_model(tmp_path / "again", weights=True, seed=0)
    assert _hashes(again) == _hashes(model_dir)
    other = write_tiny_model(tmp_path / "other", weights=True, seed=1)
    assert (
        _hashes(other)["model-00002-of-000004.safetensors"]
        != _hashes(model_dir)["model-00002-of-000004.safetensors"]
    )


def test_bf16_shards_and_index(model_dir: Path) -> None:
    from safetensors import safe_open

    cfg = json.loads((model_dir / "config.json").read_text())
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in model_dir.glob("*.safetensors"))
    assert shards == [f"model-{i:05d}-of-000004.safetensors" for i in range(1, 5)]
    assert set(index["weight_map"].values()) == set(shards)
    total, seen = 0, {}
    for name in shards:
        with safe_open(str(model_dir / name), framework="numpy") as f:  # the library's own header validation
            keys = set(f.keys())
        header = _header(model_dir / name)
        assert keys == set(header) - {"__metadata__"}
        for key in keys:
            meta = header[key]
            seen[key] = name
            total += meta["data_offsets"][1] - meta["data_offsets"][0]
            assert meta["dtype"] in ("BF16", "F32")
    assert seen == index["weight_map"] and total == index["metadata"]["total_size"]
    n = cfg["num_hidden_layers"]
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    assert _header(model_dir / seen["model.embed_tokens.weight"])["model.embed_tokens.weight"]["shape"] == [
        v,
        h,
    ]
    assert f"model.layers.{n}.eh_proj.weight" in seen  # the MTP layer
    assert f"model.layers.{n - 1}.mlp.experts.{cfg['n_routed_experts'] - 1}.down_proj.weight" in seen
    assert (
        "model.layers.0.mlp.gate_proj.weight" in seen
        and "model.layers.0.mlp.experts.0.up_proj.weight" not in seen
    )


def test_fp8_variant_has_r1_quantization(fp8_dir: Path) -> None:
    cfg = json.loads((fp8_dir / "config.json").read_text())
    assert cfg["quantization_config"] == R1_QUANTIZATION_CONFIG
    index = json.loads((fp8_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {f"model-{i:05d}-of-000003.safetensors" for i in (1, 2, 3)}
    name = "model.layers.1.self_attn.kv_b_proj.weight"
    shard = fp8_dir / index["weight_map"][name]
    header = _header(shard)
    assert header[name]["dtype"] == "F8_E4M3" and header[name + "_scale_inv"]["dtype"] == "F32"
    rows, cols = header[name]["shape"]
    assert header[name + "_scale_inv"]["shape"] == [math.ceil(rows / 128), math.ceil(cols / 128)]
    start = 8 + int.from_bytes(shard.read_bytes()[:8], "little")
    a, b = header[name]["data_offsets"]
    data = shard.read_bytes()[start + a : start + b]
    assert b"\x7f" not in data and b"\xff" not in data  # e4m3fn NaN encodings
    assert _header(fp8_dir / index["weight_map"]["lm_head.weight"])["lm_head.weight"]["dtype"] == "BF16"


def test_bad_shards_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shards must be >= 1"):
        write_tiny_model(tmp_path / "x", weights=True, shards=0)


def test_tokenizer_cache_gives_the_trained_bytes_and_survives_a_torn_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_tokenizer keeps the trained tokenizer in R1LAB_CACHE: a hit is byte for byte what training gives,
    and a torn cache file is trained again and replaced (never a half tokenizer)."""
    from r1lab import tinymodel

    monkeypatch.setenv("R1LAB_CACHE", str(tmp_path / "cache"))
    trained = tinymodel.train_tokenizer(3).to_str()
    first = tinymodel.build_tokenizer(3)  # a miss: trains and writes the cache
    [cached] = list((tmp_path / "cache" / "tinymodel").glob("tokenizer-*.json"))
    assert first.to_str() == trained and cached.read_text(encoding="utf-8") == trained
    assert tinymodel.build_tokenizer(3).to_str() == trained  # a hit
    cached.write_text(trained[: len(trained) // 2], encoding="utf-8")
    assert tinymodel.build_tokenizer(3).to_str() == trained
    assert cached.read_text(encoding="utf-8") == trained
    assert tinymodel.build_tokenizer(4).to_str() != trained  # another seed, another entry
    assert len(list(cached.parent.glob("tokenizer-*.json"))) == 2
