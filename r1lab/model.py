"""DeepSeek-R1 facts and sizing, all derived from config.json values (never magic numbers elsewhere).

Public interface (others depend on these names):

- `ModelSpec.deepseek_r1()`: R1's architecture as its config.json states it.
- `ModelSpec.from_config_json(path)`: the same from any DeepSeek-V3-shaped config.json.
- `ModelSpec.kv_bytes_per_token(dtype)`: MLA latent cache per token, all layers: 61 x (512 + 64) x bytes
  = 70,272 B for bf16 ("auto"), 35,136 B for fp8. vLLM keeps a full copy on every tensor-parallel rank.
- `kv_transfer_copies(decode_tp)` / `ModelSpec.kv_transfer_bytes_per_token(dtype, decode_tp)`: P/D moves one
  latent copy per decode TP rank (vLLM NixlConnector), e.g. 8 x 35,136 B per token for TP8 -> TP8 in fp8.
- `ModelSpec.weight_bytes_per_gpu(Parallelism(...))` -> `WeightBytes`: bytes one GPU holds under
  TP/PP/DP/EP the way vLLM shards DeepSeek-V3 (largest pipeline stage).
- `Parallelism(tp, pp, dp, ep)`: the layout; `ep=True` spreads routed experts over tp x dp ranks.

Weights: block-FP8 (1 byte + one fp32 scale per 128x128 block) for every linear layer of attention, dense MLP,
shared and routed experts; bf16 for embeddings, lm_head, norms and the MoE router (as in the checkpoint).
vLLM's MLA keeps q_a_proj and kv_a_proj_with_mqa replicated on every TP rank and splits q_b/kv_b/o_proj by heads.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

KV_DTYPE_BYTES = {"auto": 2, "bf16": 2, "bfloat16": 2, "fp16": 2, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}


def kv_transfer_copies(decode_tp: int, mla: bool = True) -> int:
    """How many copies of a prompt's KV cache cross the link in P/D with vLLM's NixlConnector: each decode TP
    rank pulls its KV from one prefill rank (`kv_connector/v1/nixl/tp_mapping.compute_tp_mapping`: for MLA,
    `attn_ranks = [tp_rank * remote_tp // tp]`, read in full). MLA's latent cache is replicated on every TP
    rank, so every decode rank pulls a whole copy: `decode_tp` copies, homogeneous or heterogeneous TP (read
    in vLLM 0.31.0's source, ai-dynamo 1.6.1's pin, and 0.32's). Attention that splits KV heads across ranks
    moves one copy in all."""
    if decode_tp < 1:
        raise ValueError(f"decode_tp must be >= 1, got {decode_tp}")
    return decode_tp if mla else 1


@dataclass(frozen=True)
class Parallelism:
    """tp: tensor parallel (attention heads, dense layers); pp: pipeline stages; dp: data-parallel replicas of
    attention; ep: routed experts spread over tp*dp ranks (vLLM --enable-expert-parallel) instead of TP-split;
    moe_ep: with ep, the experts spread over this many ranks only, each expert TP-split over the tp*dp/moe_ep
    ranks that share it (TensorRT-LLM's moe_tensor_parallel x moe_expert_parallel); 0 = all ranks."""

    tp: int = 8
    pp: int = 1
    dp: int = 1
    ep: bool = False
    moe_ep: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp"):
            if getattr(self, name) < 1:
                raise ValueError(f"Parallelism.{name} must be >= 1, got {getattr(self, name)}")
        if self.moe_ep and (not self.ep or (self.tp * self.dp) % self.moe_ep):
            raise ValueError(
                f"Parallelism.moe_ep={self.moe_ep} needs ep=True and must divide tp*dp={self.tp * self.dp}"
            )

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def ep_size(self) -> int:
        return (self.moe_ep or self.tp * self.dp) if self.ep else 1

    @property
    def moe_tp(self) -> int:
        """Ranks each routed expert is split over (1 under full EP)."""
        return (self.tp * self.dp) // self.ep_size if self.ep else self.tp

    def label(self) -> str:
        s = f"TP{self.tp}"
        if self.pp > 1:
            s += f"xPP{self.pp}"
        if self.dp > 1:
            s += f" DP{self.dp}"
        if self.ep:
            s += f" EP{self.ep_size}"
        return s


@dataclass(frozen=True)
class WeightBytes:
    """Bytes of weights on one GPU by component (the largest pipeline stage)."""

    attention: float
    dense_mlp: float
    shared_experts: float
    routed_experts: float
    router: float
    embedding: float
    lm_head: float
    norms: float
    mtp: float

    @property
    def total(self) -> float:
        # the fields in declaration order, as sum(asdict(self).values()) added them (bit for bit)
        return sum(
            (
                self.attention,
                self.dense_mlp,
                self.shared_experts,
                self.routed_experts,
                self.router,
                self.embedding,
                self.lm_head,
                self.norms,
                self.mtp,
            )
        )

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class ModelSpec:
    """A DeepSeek-V3-family model's shape (names follow config.json)."""

    name: str
    num_hidden_layers: int
    first_k_dense_replace: int
    hidden_size: int
    num_attention_heads: int
    q_lora_rank: int
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    moe_intermediate_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    num_nextn_predict_layers: int = 1
    weight_block: int = 128
    fp8_weights: bool = True

    # -- construction ----------------------------------------------------------------------------------
    @classmethod
    def deepseek_r1(cls) -> ModelSpec:
        """deepseek-ai/DeepSeek-R1 config.json values."""
        return cls(
            name="deepseek-ai/DeepSeek-R1",
            num_hidden_layers=61,
            first_k_dense_replace=3,
            hidden_size=7168,
            num_attention_heads=128,
            q_lora_rank=1536,
            kv_lora_rank=512,
            qk_rope_head_dim=64,
            qk_nope_head_dim=128,
            v_head_dim=128,
            n_routed_experts=256,
            n_shared_experts=1,
            num_experts_per_tok=8,
            moe_intermediate_size=2048,
            intermediate_size=18432,
            vocab_size=129280,
            max_position_embeddings=163840,
            num_nextn_predict_layers=1,
        )

    @classmethod
    def from_config_json(cls, path: str | Path) -> ModelSpec:
        """Read a DeepSeek-V3-shaped config.json; errors name the file and the missing key."""
        p = Path(path)
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{p}: no such config.json") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{p}: not valid JSON ({exc})") from None
        keys = [f for f in cls.__dataclass_fields__ if f not in ("name", "weight_block", "fp8_weights")]
        kwargs: dict = {}
        for k in keys:
            if k in cfg and cfg[k] is not None:
                kwargs[k] = int(cfg[k])
            elif k == "num_nextn_predict_layers":
                kwargs[k] = 0
            elif k == "q_lora_rank":
                raise ValueError(
                    f"{p}: key 'q_lora_rank' is null/missing: only q-LoRA MLA models are modelled"
                )
            else:
                raise ValueError(f"{p}: missing key {k!r} (expected a DeepSeek-V3-shaped config.json)")
        q = cfg.get("quantization_config") or {}
        block = (q.get("weight_block_size") or [128, 128])[0]
        return cls(
            name=str(cfg.get("_name_or_path") or p.parent.name),
            weight_block=int(block),
            fp8_weights=q.get("quant_method") == "fp8",
            **kwargs,
        )

    # -- derived shapes --------------------------------------------------------------------------------
    @property
    def moe_layers(self) -> int:
        return self.num_hidden_layers - self.first_k_dense_replace

    @property
    def kv_latent_dim(self) -> int:
        """Values cached per layer per token by MLA: the compressed latent plus the decoupled RoPE key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def kv_bytes_per_token(self, dtype: str = "auto", layers: int | None = None) -> int:
        """MLA KV cache bytes per token over `layers` (default all): layers x (kv_lora_rank + rope) x bytes."""
        if dtype not in KV_DTYPE_BYTES:
            raise ValueError(f"unknown kv_cache_dtype {dtype!r}; expected one of {sorted(KV_DTYPE_BYTES)}")
        n = self.num_hidden_layers if layers is None else layers
        return n * self.kv_latent_dim * KV_DTYPE_BYTES[dtype]

    def kv_transfer_bytes_per_token(self, dtype: str = "auto", decode_tp: int = 1) -> int:
        """KV bytes per prompt token that cross the link from a prefill to a decode instance (P/D), all layers:
        `kv_transfer_copies(decode_tp)` copies of the MLA latent cache."""
        return self.kv_bytes_per_token(dtype) * kv_transfer_copies(decode_tp)

    # parameter counts of each linear (k x n) per layer
    def attention_linears(self) -> dict[str, tuple[int, int]]:
        h, nh = self.hidden_size, self.num_attention_heads
        return {
            "q_a_proj": (h, self.q_lora_rank),
            "q_b_proj": (self.q_lora_rank, nh * self.qk_head_dim),
            "kv_a_proj": (h, self.kv_latent_dim),
            "kv_b_proj": (self.kv_lora_rank, nh * (self.qk_nope_head_dim + self.v_head_dim)),
            "o_proj": (nh * self.v_head_dim, h),
        }

    def fp8_bytes(self, k: int, n: int) -> float:
        """Bytes of one block-FP8 linear: k*n bytes plus an fp32 scale per block."""
        if not self.fp8_weights:
            return 2.0 * k * n
        b = self.weight_block
        return k * n + 4.0 * math.ceil(k / b) * math.ceil(n / b)

    def expert_bytes(self, intermediate: int) -> float:
        """One gated MLP (gate, up, down) of the given intermediate size in block-FP8."""
        h = self.hidden_size
        return 2 * self.fp8_bytes(h, intermediate) + self.fp8_bytes(intermediate, h)

    def total_params(self, include_mtp: bool = False) -> float:
        """Parameter count (671B for R1 without the MTP layer)."""
        h = self.hidden_size
        attn = sum(k * n for k, n in self.attention_linears().values())
        dense = 3 * h * self.intermediate_size
        moe = (self.n_routed_experts + self.n_shared_experts) * 3 * h * self.moe_intermediate_size
        router = self.n_routed_experts * h
        total = (
            self.num_hidden_layers * attn
            + self.first_k_dense_replace * dense
            + self.moe_layers * (moe + router)
            + 2 * self.vocab_size * h
        )
        if include_mtp:
            total += self.num_nextn_predict_layers * (attn + moe + router + 2 * h * h)
        return float(total)

    def active_params(self) -> float:
        """Parameters touched per token (~37B for R1)."""
        h = self.hidden_size
        attn = sum(k * n for k, n in self.attention_linears().values())
        moe = (self.num_experts_per_tok + self.n_shared_experts) * 3 * h * self.moe_intermediate_size
        return float(
            self.num_hidden_layers * attn
            + self.first_k_dense_replace * 3 * h * self.intermediate_size
            + self.moe_layers * moe
            + 2 * self.vocab_size * h
        )

    # -- sharding --------------------------------------------------------------------------------------
    def pp_layers(self, pp: int) -> list[int]:
        """Layers per pipeline stage as vLLM's get_pp_indices splits them (remainder to the second-last)."""
        parts = [self.num_hidden_layers // pp] * pp
        for i in range(2, self.num_hidden_layers % pp + 2):
            parts[-i] += 1
        return parts

    def stage_layers(self, pp: int, stage: int) -> tuple[int, int]:
        """(dense, moe) layer counts of one pipeline stage."""
        parts = self.pp_layers(pp)
        start = sum(parts[:stage])
        end = start + parts[stage]
        dense = max(0, min(end, self.first_k_dense_replace) - start)
        return dense, parts[stage] - dense

    def weight_bytes_per_gpu(self, par: Parallelism, with_mtp: bool = False) -> WeightBytes:
        """Weights on one GPU (the heaviest pipeline stage) under vLLM's DeepSeek-V3 sharding."""
        stages = [self._stage_weights(par, s, with_mtp) for s in range(par.pp)]
        return max(stages, key=lambda w: w.total)

    def _stage_weights(self, par: Parallelism, stage: int, with_mtp: bool) -> WeightBytes:
        tp, h = par.tp, self.hidden_size
        dense_n, moe_n = self.stage_layers(par.pp, stage)
        n_layers = dense_n + moe_n
        lin = self.attention_linears()
        replicated = self.fp8_bytes(*lin["q_a_proj"]) + self.fp8_bytes(*lin["kv_a_proj"])
        split = sum(self.fp8_bytes(*lin[k]) for k in ("q_b_proj", "kv_b_proj", "o_proj")) / tp
        attn_layer = replicated + split
        norms_layer = 2.0 * (2 * h + self.q_lora_rank + self.kv_lora_rank)
        dense_layer = self.expert_bytes(self.intermediate_size) / tp
        shared_layer = self.n_shared_experts * self.expert_bytes(self.moe_intermediate_size) / tp
        all_routed = self.n_routed_experts * self.expert_bytes(self.moe_intermediate_size)
        routed_layer = all_routed / (par.ep_size * par.moe_tp) if par.ep else all_routed / tp
        router_layer = 2.0 * self.n_routed_experts * h + 4.0 * self.n_routed_experts
        vocab_shard = 2.0 * self.vocab_size * h / tp
        mtp = 0.0
        if with_mtp and stage == par.pp - 1 and self.num_nextn_predict_layers:
            mtp = self.num_nextn_predict_layers * (
                attn_layer + shared_layer + routed_layer + router_layer + 2.0 * 2 * h * h / tp
            )
        return WeightBytes(
            attention=n_layers * attn_layer,
            dense_mlp=dense_n * dense_layer,
            shared_experts=moe_n * shared_layer,
            routed_experts=moe_n * routed_layer,
            router=moe_n * router_layer,
            embedding=vocab_shard if stage == 0 else 0.0,
            lm_head=vocab_shard if stage == par.pp - 1 else 0.0,
            norms=n_layers * norms_layer + (2.0 * h if stage == par.pp - 1 else 0.0),
            mtp=mtp,
        )

    def checkpoint_bytes(self) -> float:
        """Bytes of the whole checkpoint: every layer unsharded plus the MTP layer, which stores its own copies
        of the embedding and the output head (bf16)."""
        one = self._stage_weights(Parallelism(tp=1), 0, with_mtp=True).total
        return one + self.num_nextn_predict_layers * 2 * (2.0 * self.vocab_size * self.hidden_size)
