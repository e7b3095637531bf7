"""A tiny DeepSeek-R1-shaped model directory, generated offline and deterministically.

DeepSeek-V3 architecture (`DeepseekV3ForCausalLM`: MLA + MoE + one MTP layer) with R1's field set, shrunk to a few
layers and experts, but keeping R1's MLA latent (kv_lora_rank 512, qk_rope_head_dim 64: vLLM's CPU MLA needs them)
and head dims. The tokenizer is a byte-level BPE trained here with `tokenizers` on generated text, with R1's special
tokens (`<｜begin▁of▁sentence｜>`, `<｜User｜>`, `<｜Assistant｜>`, `<think>`, ...) and R1's chat template (which opens
`<think>\\n` for the reply). Optional random weights are written as R1-named safetensors shards with an index.

Consumers: Dynamo's mocker (tokenizer.json, tokenizer_config.json, config.json, generation_config.json), vLLM CPU
with `--load-format dummy` (bf16 variant), the load generator, and the fake Hub (`quantized=True`: R1's
`quantization_config` and FP8 weights with `weight_scale_inv` blocks, laid out like the real repo).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
# R1's added tokens that matter to serving and parsing (ids follow the trained vocabulary, unlike R1's 128xxx).
ADDED_TOKENS = [
    ("<｜User｜>", True),
    ("<｜Assistant｜>", True),
    ("<think>", False),
    ("</think>", False),
    ("<｜tool▁calls▁begin｜>", True),
    ("<｜tool▁calls▁end｜>", True),
    ("<｜tool▁call▁begin｜>", True),
    ("<｜tool▁call▁end｜>", True),
    ("<｜tool▁outputs▁begin｜>", True),
    ("<｜tool▁outputs▁end｜>", True),
    ("<｜tool▁output▁begin｜>", True),
    ("<｜tool▁output▁end｜>", True),
    ("<｜tool▁sep｜>", True),
]

# DeepSeek-R1's chat template (tokenizer_config.json of deepseek-ai/DeepSeek-R1): the generation prompt opens
# the reasoning block with `<think>\n`; earlier assistant turns lose their reasoning (`split('</think>')`).
R1_CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{bos_token}}{{ns.system_prompt}}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}{%- set ns.is_tool = false -%}"
    "{%- for tool in message['tool_calls']%}{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + "
    "'<｜tool▁call▁end｜>'}}{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + "
    "'```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}"
    "{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}"
    "{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}"
    "{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}"
    "{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"
)

R1_QUANTIZATION_CONFIG: dict[str, Any] = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}

TOKENIZER_VOCAB_SIZE = 4096  # trained BPE vocabulary, special tokens included

# Words the training corpus (and nothing else) is built from: prose, numbers, code and math, so prompts of any of
# these kinds tokenize at realistic characters-per-token ratios.
_WORDS = (
    "the of and to in is that for it as with was on be by this are at from or an have not which but all they "
    "one you were there can more has been their if will when what about so would we no out up into time only "
    "other some could than them these then its also two over first new after like most used may should any "
    "model reasoning answer question think step because therefore problem solution value number result compute "
    "let suppose assume given find show prove equation function variable matrix vector token tokens layer "
    "expert experts attention cache latency throughput request server client prompt output input memory "
    "network volume weights download verify file files hash size pod cluster node nodes gpu gpus batch "
    "sequence length context prefill decode stream chunk second seconds minute hour cost price dollar "
    "first second third finally however thus hence wait check again compare total sum product difference "
    "python code import def return class self print list dict string int float true false none error "
    "system user assistant hello please explain why how where who write short story poem essay summary "
    "water river mountain city country history science physics chemistry biology economics language"
).split()
_CODE_LINES = [
    "def f(x):\n    return x * x + 1\n",
    "for i in range(10):\n    total += i\n",
    "if n % 2 == 0:\n    print('even')\nelse:\n    print('odd')\n",
    "import numpy as np\na = np.zeros((4, 4))\n",
    "class Node:\n    def __init__(self, value):\n        self.value = value\n",
]


_ONSETS = "b c d f g h j k l m n p r s t v w z br cr dr fl gr pl pr sh st th tr ch".split()
_NUCLEI = "a e i o u ai ea ee io ou".split()


def _lexicon(rng: random.Random, n: int = 6000) -> list[str]:
    """The real words plus generated syllable words, so BPE finds a few thousand merges."""
    made = {
        "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) for _ in range(rng.randint(1, 4)))
        + rng.choice(["", "n", "s", "r", "l", "t"])
        for _ in range(n)
    }
    return _WORDS * 8 + sorted(made)


def _corpus(seed: int, lines: int = 6000) -> list[str]:
    rng = random.Random(seed)
    lexicon = _lexicon(rng)
    weights = [1.0 / (1 + i) ** 0.8 for i in range(len(lexicon))]  # Zipf-like: frequent words merge first
    out = []
    for i in range(lines):
        kind = i % 10
        if kind < 7:
            words = rng.choices(lexicon, weights, k=rng.randint(6, 30))
            words[0] = words[0].capitalize()
            out.append(" ".join(words) + rng.choice([".", "?", "!", ",", ":"]))
        elif kind == 7:
            a, b = rng.randint(0, 99999), rng.randint(0, 9999)
            out.append(f"Compute {a} + {b} = {a + b}, then {a} * {b} = {a * b}; x^2 - {b} = 0.")
        else:
            out.append(rng.choice(_CODE_LINES))
    return out


def build_tokenizer(seed: int = 0, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> Any:
    """Train the byte-level BPE tokenizer (deterministic for a given seed) and add R1's special tokens.

    Training takes seconds and every notebook kernel that renders the mocker's commands needs it, so the result is
    kept in the cache dir (`R1LAB_CACHE`, default ~/.cache/r1lab), keyed by this module's source, the seed, the
    vocabulary size and the tokenizers version: the same bytes as training again (tested)."""
    from tokenizers import Tokenizer

    path = _tokenizer_cache(seed, vocab_size)
    if path is not None and path.exists():
        try:
            return Tokenizer.from_file(str(path))
        except Exception:  # noqa: BLE001 - a torn or foreign cache file: train again and replace it
            pass
    tok = train_tokenizer(seed, vocab_size)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(tok.to_str(), encoding="utf-8")
            os.replace(tmp, path)  # atomic: concurrent kernels never read half a file
        except OSError:
            pass
    return tok


def _tokenizer_cache(seed: int, vocab_size: int) -> Path | None:
    import tokenizers

    root = os.environ.get("R1LAB_CACHE") or str(Path.home() / ".cache" / "r1lab")
    if root in ("0", "off"):
        return None
    blob = Path(__file__).read_bytes() + json.dumps([seed, vocab_size, tokenizers.__version__]).encode()
    return Path(root) / "tinymodel" / f"tokenizer-{hashlib.sha256(blob).hexdigest()[:16]}.json"


def train_tokenizer(seed: int = 0, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> Any:
    """`build_tokenizer` without the cache: train it now."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD]  # ids 0, 1, 2 as in R1
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(ADDED_TOKENS),
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in ADDED_TOKENS if not s])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, s in ADDED_TOKENS if s])
    # R1 prepends BOS on encode (add_bos_token: true).
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    return tok


@functools.lru_cache(maxsize=1)
def think_token_ids() -> tuple[int, int]:
    """The ids of `<think>` and `</think>` in the tiny model's tokenizer (the same for every seed)."""
    tok = build_tokenizer()
    ids = tok.token_to_id("<think>"), tok.token_to_id("</think>")
    assert None not in ids
    return ids[0], ids[1]


def tiny_config(vocab_size: int, *, quantized: bool = False, max_position_embeddings: int = 163840) -> dict:
    """config.json: R1's fields and values, shrunk (3 layers: 1 dense + 2 MoE, 8 experts, 4 heads) + 1 MTP layer."""
    cfg: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "ep_size": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": 256,
        "initializer_range": 0.02,
        "intermediate_size": 512,
        "kv_lora_rank": 512,
        "max_position_embeddings": max_position_embeddings,
        "model_type": "deepseek_v3",
        "moe_intermediate_size": 128,
        "moe_layer_freq": 1,
        "n_group": 2,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": 4,
        "num_experts_per_tok": 2,
        "num_hidden_layers": 3,
        "num_key_value_heads": 4,
        "num_nextn_predict_layers": 1,
        "pretraining_tp": 1,
        "q_lora_rank": 192,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.46.3",
        "use_cache": True,
        "v_head_dim": 128,
        "vocab_size": vocab_size,
    }
    if quantized:
        cfg["quantization_config"] = dict(R1_QUANTIZATION_CONFIG)
    return dict(sorted(cfg.items()))


def tokenizer_config() -> dict[str, Any]:
    """tokenizer_config.json as R1 has it, except the class: PreTrainedTokenizerFast loads tokenizer.json as is
    (R1 names LlamaTokenizerFast, whose transformers 5 class rebuilds the pipeline for SentencePiece-style vocabularies)."""
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "legacy": True,
        "model_max_length": 16384,
        "pad_token": EOS,
        "sp_model_kwargs": {},
        "unk_token": None,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": R1_CHAT_TEMPLATE,
    }


GENERATION_CONFIG = {
    "_from_model_config": True,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "do_sample": True,
    "temperature": 0.6,
    "top_p": 0.95,
    "transformers_version": "4.46.3",
}


# --- weights ------------------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {"BF16": 2, "F32": 4, "F8_E4M3": 1}


def _tensor_shapes(cfg: dict[str, Any]) -> list[tuple[str, tuple[int, ...], bool]]:
    """Every tensor of the checkpoint, R1's names, in R1's order: (name, shape, quantizable linear weight)."""
    h, v, heads = cfg["hidden_size"], cfg["vocab_size"], cfg["num_attention_heads"]
    q_lora, kv_lora = cfg["q_lora_rank"], cfg["kv_lora_rank"]
    nope, rope, vd = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    n_exp, moe_i, dense_i = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["intermediate_size"]
    shared_i = moe_i * cfg["n_shared_experts"]
    out: list[tuple[str, tuple[int, ...], bool]] = [("model.embed_tokens.weight", (v, h), False)]

    def mlp(prefix: str, inter: int) -> None:
        out.extend(
            [
                (f"{prefix}.gate_proj.weight", (inter, h), True),
                (f"{prefix}.up_proj.weight", (inter, h), True),
                (f"{prefix}.down_proj.weight", (h, inter), True),
            ]
        )

    def layer(i: int) -> None:
        p = f"model.layers.{i}"
        out.extend(
            [
                (f"{p}.input_layernorm.weight", (h,), False),
                (f"{p}.self_attn.q_a_proj.weight", (q_lora, h), True),
                (f"{p}.self_attn.q_a_layernorm.weight", (q_lora,), False),
                (f"{p}.self_attn.q_b_proj.weight", (heads * (nope + rope), q_lora), True),
                (f"{p}.self_attn.kv_a_proj_with_mqa.weight", (kv_lora + rope, h), True),
                (f"{p}.self_attn.kv_a_layernorm.weight", (kv_lora,), False),
                (f"{p}.self_attn.kv_b_proj.weight", (heads * (nope + vd), kv_lora), True),
                (f"{p}.self_attn.o_proj.weight", (h, heads * vd), True),
                (f"{p}.post_attention_layernorm.weight", (h,), False),
            ]
        )
        if i < cfg["first_k_dense_replace"]:
            mlp(f"{p}.mlp", dense_i)
            return
        out.extend(
            [
                (f"{p}.mlp.gate.weight", (n_exp, h), False),
                (f"{p}.mlp.gate.e_score_correction_bias", (n_exp,), False),
            ]
        )
        for e in range(n_exp):
            mlp(f"{p}.mlp.experts.{e}", moe_i)
        mlp(f"{p}.mlp.shared_experts", shared_i)

    n_layers = cfg["num_hidden_layers"]
    for i in range(n_layers):
        layer(i)
    out.extend([("model.norm.weight", (h,), False), ("lm_head.weight", (v, h), False)])
    # MTP: a full layer plus its own heads
    for i in range(n_layers, n_layers + cfg["num_nextn_predict_layers"]):
        layer(i)
        p = f"model.layers.{i}"
        out.extend(
            [
                (f"{p}.embed_tokens.weight", (v, h), False),
                (f"{p}.enorm.weight", (h,), False),
                (f"{p}.hnorm.weight", (h,), False),
                (f"{p}.eh_proj.weight", (h, 2 * h), False),
                (f"{p}.shared_head.norm.weight", (h,), False),
                (f"{p}.shared_head.head.weight", (v, h), False),
            ]
        )
    return out


def _bf16_bytes(a: np.ndarray) -> bytes:
    """float32 -> bfloat16 (round to nearest even), little-endian bytes."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return r.astype("<u2").tobytes()


def _fp8_e4m3_bytes(rng: np.random.Generator, n: int) -> bytes:
    """Random finite e4m3fn values of small magnitude (exponent field <= 7, so |x| < 2; never NaN)."""
    sign = rng.integers(0, 2, n, dtype=np.uint8) << 7
    exp = rng.integers(0, 8, n, dtype=np.uint8) << 3
    man = rng.integers(0, 8, n, dtype=np.uint8)
    return (sign | exp | man).tobytes()


def _tensors(
    cfg: dict[str, Any], seed: int, quantized: bool
) -> list[tuple[str, str, tuple[int, ...], bytes]]:
    rng = np.random.default_rng(seed)
    block = R1_QUANTIZATION_CONFIG["weight_block_size"]
    out = []
    for name, shape, linear in _tensor_shapes(cfg):
        n = math.prod(shape)
        if name.endswith("e_score_correction_bias"):
            out.append((name, "F32", shape, rng.normal(0, 0.01, n).astype("<f4").tobytes()))
        elif name.endswith("norm.weight"):
            out.append((name, "BF16", shape, _bf16_bytes(np.ones(n, np.float32))))
        elif quantized and linear:
            out.append((name, "F8_E4M3", shape, _fp8_e4m3_bytes(rng, n)))
            sshape = (math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1]))
            scale = rng.uniform(1e-3, 2e-3, math.prod(sshape)).astype("<f4").tobytes()
            out.append((name + "_scale_inv", "F32", sshape, scale))
        else:
            out.append((name, "BF16", shape, _bf16_bytes(rng.normal(0, 0.02, n))))
    return out


def write_safetensors(
    path: Path, tensors: list[tuple[str, str, tuple[int, ...], bytes]], metadata: dict
) -> int:
    """Write one safetensors file (8-byte header length, JSON header, raw data); returns its size in bytes."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, data in tensors:
        assert len(data) == math.prod(shape) * _SAFETENSORS_DTYPES[dtype], name
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for *_, data in tensors:
            f.write(data)
    return 8 + len(raw) + offset


def _write_weights(d: Path, cfg: dict[str, Any], seed: int, quantized: bool, shards: int) -> None:
    tensors = _tensors(cfg, seed, quantized)
    total = sum(len(t[3]) for t in tensors)
    per = total / shards
    groups: list[list] = [[] for _ in range(shards)]
    acc = 0
    for t in tensors:  # contiguous split by cumulative bytes, as R1's shards follow layer order
        groups[min(int(acc / per), shards - 1)].append(t)
        acc += len(t[3])
    weight_map = {}
    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{shards:06d}.safetensors"
        write_safetensors(d / fname, group, {"format": "pt"})
        weight_map.update({t[0]: fname for t in group})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tiny_model(
    dir: Path,
    *,
    weights: bool = False,
    seed: int = 0,
    quantized: bool = False,
    shards: int = 4,
    max_position_embeddings: int = 163840,
) -> Path:
    """Write the tiny R1-shaped model into `dir` (created if needed) and return it.

    weights: also write random safetensors shards `model-0000N-of-00000M.safetensors` (5 and 6 digits, as R1) + `model.safetensors.index.json`
    (bf16; with `quantized`, R1's layout: FP8 e4m3 linear weights with `weight_scale_inv` F32 blocks).
    quantized: add R1's `quantization_config` to config.json (the fake Hub's repo; vLLM CPU needs the bf16 variant).
    Same seed, same bytes.
    """
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(seed)
    tok.save(str(d / "tokenizer.json"))
    vocab = 128 * math.ceil(tok.get_vocab_size(with_added_tokens=True) / 128)  # padded like R1's 129280
    cfg = tiny_config(vocab, quantized=quantized, max_position_embeddings=max_position_embeddings)
    _dump(d / "config.json", cfg)
    _dump(d / "tokenizer_config.json", tokenizer_config())
    _dump(d / "generation_config.json", GENERATION_CONFIG)
    if weights:
        if shards < 1:
            raise ValueError(f"write_tiny_model: shards must be >= 1, got {shards}")
        _write_weights(d, cfg, seed, quantized, shards)
    return d
