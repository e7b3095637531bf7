"""Memory per GPU under vLLM's `gpu_memory_utilization` semantics, and from it the KV-cache capacity.

vLLM lets one instance use `gpu_memory_utilization x total` bytes of each GPU; of that, it subtracts the weights,
the activation peak of a profiling forward pass of `max_num_batched_tokens` tokens, memory outside PyTorch's
allocator (CUDA context, NCCL buffers) and CUDA-graph memory; the rest becomes KV-cache blocks. vLLM refuses to
start when those blocks cannot hold one sequence of `max_model_len` tokens.

Public interface: `memory_plan(hardware, parallelism, ...) -> MemoryPlan` (fields in GiB-free bytes; `as_dict()`
adds GiB). Reserve sizes are documented estimates (RESERVES), not measurements: calibration on lent GPUs
replaces them with vLLM's logged values when available.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from r1lab.model import KV_DTYPE_BYTES, ModelSpec, Parallelism
from r1lab.perf import hardware

GIB = 2**30

RESERVES = {
    # CUDA context, cuBLAS/cuDNN workspaces: memory vLLM counts as "non-torch" and keeps out of the KV budget
    "cuda_context_bytes": 0.5 * GIB,
    # NCCL communicator buffers per process group in use (TP, PP, DP/EP), plus custom all-reduce buffers
    "nccl_bytes_per_group": 0.25 * GIB,
    # CUDA graphs for the default capture sizes (vLLM logs ~0.5-2 GiB for DeepSeek-V3-class models)
    "cudagraph_bytes": 1.0 * GIB,
}
DEFAULT_BLOCK_SIZE = 64  # vLLM's FlashMLA block size on Hopper/Blackwell (and the mocker's vLLM default)


def activation_peak_bytes(
    spec: ModelSpec, par: Parallelism, max_num_batched_tokens: int, max_num_seqs: int
) -> float:
    """Peak of the profiling forward pass: per token, a few hidden-size buffers, the fused-MoE intermediates
    (top-k copies of the hidden state and of the sharded expert intermediate) and the expanded MLA prefill
    q/k/v of this rank's heads; plus the sampler's dummy run (full-vocabulary fp32 logits and probabilities)."""
    h, k = spec.hidden_size, spec.num_experts_per_tok
    inter = spec.moe_intermediate_size / par.moe_tp
    heads = spec.num_attention_heads / par.tp
    per_token = (
        4 * h * 2 + k * h * 2 + k * 2 * inter * 2 + heads * (spec.qk_head_dim * 2 + spec.v_head_dim) * 2
    )
    sampler = max_num_seqs * spec.vocab_size * 4 * 2
    return max_num_batched_tokens * per_token + sampler


@dataclass
class MemoryPlan:
    gpu: str
    parallelism: str
    total_bytes: float
    budget_bytes: float
    gpu_memory_utilization: float
    weights_bytes: float
    weights_by_component: dict[str, float]
    activation_bytes: float
    cudagraph_bytes: float
    non_torch_bytes: float
    kv_bytes: float
    kv_bytes_per_token: int
    block_size: int
    num_blocks: int
    kv_tokens: int
    kv_tokens_total: int
    max_concurrency: int | None
    seq_len: int | None
    max_model_len: int | None
    fits: bool
    reason: str
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MemoryPlan:
        """The plan `as_dict()` gave (its derived *_gib figures dropped): a resolved deployment's stored plan."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def as_dict(self) -> dict:
        # dataclasses.asdict's copy, without its deepcopy of every scalar
        d = {name: _copied(getattr(self, name)) for name in _PLAN_FIELDS}
        for key in (
            "total_bytes",
            "budget_bytes",
            "weights_bytes",
            "activation_bytes",
            "cudagraph_bytes",
            "non_torch_bytes",
            "kv_bytes",
        ):
            d[key.replace("_bytes", "_gib")] = round(d[key] / GIB, 3)
        return d


_PLAN_FIELDS = tuple(f.name for f in fields(MemoryPlan))


def _copied(v: Any) -> Any:
    """A copy of a plan field's value as `dataclasses.asdict` makes it: containers copied, scalars kept."""
    if isinstance(v, dict):
        return {k: _copied(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copied(x) for x in v]
    return v


def memory_plan(
    hardware_name: str,
    parallelism: Parallelism,
    kv_dtype: str = "auto",
    gpu_memory_utilization: float = 0.90,
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 256,
    block_size: int = DEFAULT_BLOCK_SIZE,
    isl: int | None = None,
    osl: int | None = None,
    max_model_len: int | None = None,
    num_speculative_tokens: int = 0,
    spec: ModelSpec | None = None,
) -> MemoryPlan:
    """Per-GPU memory of one deployment and the KV capacity left; `fits` False with the reason when not."""
    spec = spec or ModelSpec.deepseek_r1()
    hw = hardware.gpu(hardware_name)
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    par = parallelism
    weights = spec.weight_bytes_per_gpu(par, with_mtp=num_speculative_tokens > 0)
    weights_total = weights.total  # (a sum over its fields, each time it is read)
    total = float(hw.memory_bytes)
    budget = gpu_memory_utilization * total
    act = activation_peak_bytes(spec, par, max_num_batched_tokens, max_num_seqs)
    groups = sum(1 for n in (par.tp, par.pp, par.dp * (2 if par.ep else 1)) if n > 1)
    non_torch = RESERVES["cuda_context_bytes"] + groups * RESERVES["nccl_bytes_per_group"]
    graphs = RESERVES["cudagraph_bytes"]
    kv = budget - weights_total - act - non_torch - graphs
    # the KV of this GPU's pipeline stage; every TP rank holds a full copy of its layers' latent cache
    stage_layers = max(spec.pp_layers(par.pp))
    per_token = spec.kv_bytes_per_token(kv_dtype, layers=stage_layers)
    num_blocks = max(0, math.floor(kv / (block_size * per_token))) if kv > 0 else 0
    tokens = num_blocks * block_size
    seq_len = (isl + osl) if isl is not None and osl is not None else None
    notes: list[str] = []
    reason = ""
    fits = True
    gib = lambda b: f"{b / GIB:.1f} GiB"  # noqa: E731
    if weights_total > total:
        fits = False
        reason = (
            f"weights alone need {gib(weights_total)} per GPU under {par.label()}, more than the "
            f"{gib(total)} of one {hw.short}"
        )
    elif weights_total > budget:
        fits = False
        reason = (
            f"weights alone need {gib(weights_total)} per GPU under {par.label()}, more than the {gib(budget)} "
            f"vLLM may use (gpu_memory_utilization {gpu_memory_utilization} x {gib(total)} of one {hw.short}); "
            f"with activations, CUDA graphs and NCCL ({gib(act + graphs + non_torch)}) nothing is left for KV cache"
        )
    elif kv <= 0 or num_blocks == 0:
        fits = False
        reason = (
            f"weights {gib(weights_total)} + activations {gib(act)} + CUDA graphs {gib(graphs)} + "
            f"CUDA/NCCL {gib(non_torch)} exceed gpu_memory_utilization {gpu_memory_utilization} x "
            f"{gib(total)} = {gib(budget)} per {hw.short}: no room for KV cache"
        )
    elif max_model_len is not None and tokens < max_model_len:
        fits = False
        reason = (
            f"KV cache holds {tokens:,} tokens per replica ({gib(kv)} per GPU), fewer than max_model_len "
            f"{max_model_len:,}: vLLM refuses to start; lower max_model_len, use fp8 KV or more GPUs"
        )
    max_conc = None
    if seq_len is not None:
        per_seq_blocks = math.ceil(seq_len / block_size)
        max_conc = (num_blocks // per_seq_blocks) * par.dp
        max_conc = min(max_conc, max_num_seqs * par.dp)
        if fits and max_conc == 0:
            notes.append(f"not one sequence of {seq_len:,} tokens fits the KV cache")
    if kv_dtype in ("fp8", "fp8_e4m3") and KV_DTYPE_BYTES[kv_dtype] == 1:
        notes.append("fp8 KV cache: half the bytes per token of bf16 ('auto')")
    return MemoryPlan(
        gpu=hw.short,
        parallelism=par.label(),
        total_bytes=total,
        budget_bytes=budget,
        gpu_memory_utilization=gpu_memory_utilization,
        weights_bytes=weights_total,
        weights_by_component=weights.as_dict(),
        activation_bytes=act,
        cudagraph_bytes=graphs,
        non_torch_bytes=non_torch,
        kv_bytes=max(kv, 0.0),
        kv_bytes_per_token=per_token,
        block_size=block_size,
        num_blocks=num_blocks,
        kv_tokens=tokens,
        kv_tokens_total=tokens * par.dp,
        max_concurrency=max_conc,
        seq_len=seq_len,
        max_model_len=max_model_len,
        fits=fits,
        reason=reason,
        notes=notes,
    )
