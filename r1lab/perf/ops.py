"""Operator costs: the time of one engine step of DeepSeek-R1 on one deployment, from a GEMM roofline on
measured efficiency curves, MoE expert coverage, MLA attention, TP all-reduce, PP send/receive, EP all-to-all
and a per-step engine overhead.

Public interface:
- `Deployment(gpu, par, engine, kv_dtype, nodes, network, ...)`: what runs where.
- `ENGINES`: documented per-engine constants (`EngineConstants`), one set per engine, not fitted to results.
- `StepModel(dep)`: `step_s(...)` (seconds of one step, batch of decodes + prefill chunks),
  `breakdown(...)` (the same split by component, for naming a bottleneck).

The step of a batch of M tokens, per layer, on one GPU (one TP rank of one DP replica):
  GEMMs  max(weight bytes / streaming rate, flops / rate at M)  (Efficiency.gemm_s), floor KERNEL_MIN_US each;
  MoE    routed experts touched by M tokens: E * (1 - (1 - k/E)^M); their weights streamed once;
  MLA    decode reads each sequence's latent cache (ctx x 576 x bytes); prefill computes causal attention;
  comm   2 TP all-reduces of M x hidden x 2 B (over nodes: NCCL's model, network.multinode_allreduce_s);
         EP under attention-DP: all-to-all of M x k x hidden (fp8 out, bf16 back); EP under attention TP: none;
  measured on the GPU (perf/kernels.py): decode split-K GEMMs, the fused MoE, the MLA decode kernel's latency
         floor; prefill GEMMs and attention at the layer forward's measured rate (never above the roofline);
  PP     hidden + residual (2 x hidden x 2 B per token) sent between stages;
  small  the norms, quantisations, RoPE, routing and sampling kernels (NON_GEMM_KERNELS), KERNEL_MIN_US each.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

from r1lab.model import KV_DTYPE_BYTES, ModelSpec, Parallelism, kv_transfer_copies
from r1lab.perf import hardware, network
from r1lab.perf.curve import Curve
from r1lab.perf.kernels import KernelTable
from r1lab.perf.profile import Efficiency, load_profile
from r1lab.perf.serving import measured as measured_serving_path

DECODE_TUNED_MAX_M = 256  # largest m of the tuned split-K GEMMs measured on the GPU (perf/kernels.py)
KERNEL_MIN_US = 2.5  # shortest kernel inside a CUDA graph (launch gaps + tail), documented, not fitted

# The kernels of one step that are neither GEMMs, attention nor collectives (which the model times itself), as
# vLLM's and sglang's DeepSeek-V3 forward launches them for block-FP8 linears (one entry = one kernel launch).
# Each streams its activations (m tokens x hidden x ACT_BYTES_PER_VALUE: what dominates in prefill) and costs at
# least KERNEL_MIN_US; that floor is charged only with profiles timed "queued" (GPU time only): an "eager"
# profile's GEMM times carry ~25-100 us of launch latency each, which already stands in for it in decode.
ACT_BYTES_PER_VALUE = 4  # a small kernel reads and writes each hidden-state value once in bf16 (2 + 2 bytes)
NON_GEMM_KERNELS: dict[str, tuple[str, ...]] = {
    "attention": (  # every layer
        "input RMSNorm with fused residual add",
        "FP8 activation quant for the fused q_a/kv_a GEMM",
        "q_a RMSNorm",
        "kv_a RMSNorm",
        "FP8 activation quant for q_b",
        "RoPE on q_pe and k_pe",
        "latent KV-cache write",
        "second absorbed-MLA bmm (W_UK and W_UV run as two kernels; kv_b is timed as one GEMM)",
        "split-KV attention combine",
        "FP8 activation quant for o_proj",
        "post-attention RMSNorm with fused residual add",
    ),
    "moe": (  # every MoE layer
        "grouped top-k routing",
        "sort/align tokens by expert",
        "FP8 activation quant for the experts",
        "SiLU-and-mul",
        "FP8 quant of the expert intermediate",
        "top-k weighted sum",
        "shared expert: FP8 activation quant",
        "shared expert: SiLU-and-mul",
        "shared expert: FP8 quant of the intermediate",
        "shared + routed add",
    ),
    "dense": ("FP8 activation quant", "SiLU-and-mul", "FP8 quant of the intermediate"),  # first dense layers
    "step": (  # once per forward pass
        "embedding gather",
        "final RMSNorm",
        "logits temperature/softmax",
        "top-k/top-p filter",
        "sample",
        "gather sampled ids",
    ),
}


@dataclass(frozen=True)
class EngineConstants:
    """One documented set per engine (not fitted to any published row).

    step_overhead_s: CPU time per step not hidden behind the GPU (scheduling, sampling, output processing);
    request_overhead_s: added once to TTFT (vLLM: the engine side of the serving path, measured; others: an
    estimate of HTTP, tokenisation, detokenisation, streaming the first chunk);
    frontend_s / frontend_per_token_s: the API server's CPU work per request (and per prompt token), served FIFO
    (vLLM: measured, r1lab.perf.serving; 0 where not measured);
    mtp_acceptance: chance each MTP draft token is accepted, given the previous one was. 0.76: R1 has one MTP
    module, chained for further drafts (TRT-LLM's "MTP Eagle"), so later drafts are accepted less often than the
    DeepSeek-V3 report's 85-90 % for the first; TensorRT-LLM's MTP blog (tech_blog2, figure 7: MTP-3 = 2.16x
    nextn=0 at batch 1, 8 x B200, 1K/2K real dataset; not a row of the accuracy benchmark) gives 0.76 through this
    model's B200 steps (FP8 weights there, FP4 in the blog: an under-estimate if anything);
    fuses_shared_expert: sglang runs DeepSeek-V3/R1's shared expert as a 257th expert of the fused MoE (on by
    default on CUDA capability >= 8.0, off under expert parallelism: deepseek_v2.determine_num_fused_shared_experts,
    `--disable-shared-experts-fusion` turns it off); vLLM 0.11 and TensorRT-LLM run it as its own MLP;
    schedule_ahead_steps: steps the CPU scheduler runs ahead of the GPU (overlap scheduling: batch N+1 is formed
    and launched while batch N runs, so a request arriving mid-step waits for the step after the next). sglang:
    1 (overlap scheduler on by default since 0.4, `--disable-overlap-schedule` turns it off); TensorRT-LLM
    PyTorch backend: 1 (overlap scheduler on by default, NVIDIA's MTP blog measures it); vLLM: 0 (synchronous
    unless `--async-scheduling`).
    dp_attention_handoff: attention DP in front of TP-split experts (sglang `--enable-dp-attention` without EP),
    off by default (today's model: one all-reduce of the gathered tokens per MoE layer, the MoE block's other work
    on the rank's own tokens). On, as read from sglang's source (not fitted): sglang gathers the DP ranks' hidden states before every MLP and scatters
    them after (layers/dp_attention.py, communicator.py; PR #8280): in a batch with any extend (prefill) it pads to
    the sum of the ranks' tokens and gathers by all-reducing a zero-filled buffer, then all-reduces the MLP output
    (`DpPaddingMode.get_dp_padding_mode`: is_extend_in_batch -> SUM_LEN): two all-reduces of the gathered tokens;
    decode batches (MAX_LEN) all-gather and reduce-scatter, one all-reduce's worth. Its dense layers' MLP runs
    TP-split on the gathered tokens too (`--moe-dense-tp-size` unset), and so do the router, the shared expert
    (fused into the routed experts' kernel, expert parallelism being 1) and the MoE block's small kernels. Off by
    default: it was judged on gpustack's 2025-11-12 sglang bursts, which turned out not to run attention DP at all
    (`--enable-dp-attention` without `--dp`: sglang turns it off at dp_size 1), so no published row tests it now.
    prefill_first: sglang's default scheduler (managers/scheduler.py get_next_batch_to_run; enable_mixed_chunk
    off): a prefill batch runs whenever waiting requests can be admitted, alone, the running requests' decoding
    paused for it; admission reserves KV for the running requests' expected remaining decode (simulate.py,
    PrefillAdder). vLLM and TensorRT-LLM mix prefill chunks into decode steps (False).
    pd_first_token: when a P/D request's first token reaches the client, read from each engine's decode side.
    "recompute_last" (vLLM V1 with a KV connector: Scheduler._update_waiting_for_remote_kv sets
    num_computed_tokens = num_tokens - 1 once every prompt block has landed, so the decode worker computes the last
    prompt token in its next step, mixed into the running batch, and streams the first token at that step's end);
    "next_step" (sglang: event_loop_normal/overlap_disagg_decode polls the transfer queue once per loop iteration
    and streams the prefill's token from a "prebuilt" batch with no forward, so it goes out at the decode worker's
    first iteration after the cache has landed, i.e. when the running step ends); "kv_landed" (the token counted
    as soon as the cache has landed: TensorRT-LLM, not read from its source).
    """

    name: str
    step_overhead_s: float
    request_overhead_s: float
    mtp_acceptance: float = 0.76
    schedule_ahead_steps: int = 0
    fuses_shared_expert: bool = False  # the shared expert runs inside the routed experts' grouped GEMMs
    dp_attention_handoff: bool = (
        False  # the attention-DP -> TP-split MLP hand-off as sglang runs it (see above)
    )
    frontend_s: float = 0.0  # serving front end's CPU work per request, served FIFO (r1lab.perf.serving)
    frontend_per_token_s: float = 0.0  # ... and per prompt token (tokenisation)
    prefill_first: bool = False  # a step is a prefill batch or a decode batch, never both (sglang, see above)
    pd_first_token: str = "kv_landed"  # P/D: when the first token reaches the client (see above)


def _vllm(name: str) -> EngineConstants:
    """vLLM's constants: the serving path measured on vLLM's own API server (r1lab.perf.serving) where the data
    file is present: its one-process front end served FIFO, the engine side as a delay; else a 10 ms estimate."""
    sp = measured_serving_path()
    if sp is None:
        return EngineConstants(
            name, step_overhead_s=1.5e-3, request_overhead_s=10e-3, pd_first_token="recompute_last"
        )
    return EngineConstants(
        name,
        step_overhead_s=1.5e-3,
        request_overhead_s=sp.engine_side_s,
        frontend_s=sp.fixed_s,
        frontend_per_token_s=sp.per_token_s,
        pd_first_token="recompute_last",
    )


def _python_front_end(
    name: str,
    step_overhead_s: float,
    fuses_shared_expert: bool = False,
    prefill_first: bool = False,
    pd_first_token: str = "kv_landed",
) -> EngineConstants:
    """sglang (TokenizerManager in the HTTP process) and trtllm-serve tokenise the prompt in their Python front
    end with the same Hugging Face tokenizer as vLLM's API server: they carry its measured per-token cost
    (r1lab.perf.serving), served FIFO. vLLM's fixed per-request part (16 ms of its own handler on this 2-core
    machine) is not carried: sglang's front end admits 1,000 requests in under 6.5 s (gpustack's 128/4 burst), far
    below it. The engine side (IPC, first-token output) keeps the 10 ms estimate. Overlap scheduling on."""
    sp = measured_serving_path()
    return EngineConstants(
        name,
        step_overhead_s=step_overhead_s,
        request_overhead_s=10e-3,
        schedule_ahead_steps=1,
        frontend_per_token_s=sp.per_token_s if sp else 0.0,
        fuses_shared_expert=fuses_shared_expert,
        prefill_first=prefill_first,
        pd_first_token=pd_first_token,
    )


ENGINES: dict[str, EngineConstants] = {
    "vllm": _vllm("vllm"),
    "mocker": _vllm("mocker"),  # times vLLM
    "sglang": _python_front_end(
        "sglang", 1.0e-3, fuses_shared_expert=True, prefill_first=True, pd_first_token="next_step"
    ),
    "trtllm": _python_front_end("trtllm", 0.5e-3),
}


def engine_constants(engine: str) -> EngineConstants:
    key = engine.split()[0].lower().replace("-", "")
    key = {"tensorrtllm": "trtllm", "trt": "trtllm"}.get(key, key)
    if key not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; expected one of {sorted(ENGINES)}")
    return ENGINES[key]


@dataclass(frozen=True)
class Deployment:
    """One serving instance: GPU type, parallelism, engine, KV dtype, how many nodes and what joins them."""

    gpu: str
    par: Parallelism
    engine: str = "vllm"
    kv_dtype: str = "auto"
    gpus_per_node: int = 8
    network: str = "none"  # between nodes: none|global-networking|instant-cluster|infiniband
    num_speculative_tokens: int = 0
    profile: str | None = None  # slug or path; default: the GPU's reference profile
    spec: ModelSpec = field(default_factory=ModelSpec.deepseek_r1)

    @property
    def hw(self) -> hardware.GPU:
        return hardware.gpu(self.gpu)

    @property
    def nodes(self) -> int:
        return max(1, -(-self.par.gpus // self.gpus_per_node))

    @property
    def eng(self) -> EngineConstants:
        return engine_constants(self.engine)

    def efficiency(self) -> Efficiency:
        return load_profile(self.profile or self.hw.default_profile).efficiency(self.hw)

    def label(self) -> str:
        n = f"{self.nodes}x{min(self.gpus_per_node, self.par.gpus)}"
        return f"{n} {self.hw.short} {self.par.label()}" + (
            f" MTP{self.num_speculative_tokens}" if self.num_speculative_tokens else ""
        )


# parts()' components in the order it returns them (StepModel._stage_s adds them in this order)
_PART_KEYS = ("attention_gemm", "attention_core", "dense_mlp", "moe_experts", "tp_allreduce", "ep_all_to_all",
              "lm_head", "mtp_draft", "small_kernels", "engine_overhead")  # fmt: skip


_KERNEL_MIN_S = KERNEL_MIN_US * 1e-6
# entries one of StepModel's memos holds before it is emptied (bounded memory over long sweeps)
MEMO_CAP = 200_000
_V = TypeVar("_V")


def _keep(memo: dict[Any, _V], key: Any, value: _V) -> _V:
    """Keep `value`, a pure function's result for `key`, in one of StepModel's memos (emptied whole once it holds
    more than MEMO_CAP entries), and return it."""
    if len(memo) > MEMO_CAP:
        memo.clear()
    memo[key] = value
    return value


class _GemmTimes:
    """One GEMM shape (k, n, dtype) on one GPU, its seconds by rows m, kept: the profile's (Efficiency.gemm_s),
    capped by the faster kernel measured on the GPU itself where there is one (as an engine picks one per shape),
    at least KERNEL_MIN_US."""

    __slots__ = ("shape", "tuned", "times")

    def __init__(self, eff: Efficiency, kt: KernelTable | None, k: float, n: float, dtype: str) -> None:
        self.shape = eff.gemm_shape(k, n, dtype)
        self.tuned = kt.tuned_gemm(k, n) if kt is not None and dtype == "fp8" else None  # block-FP8 kernels
        self.times: dict[float, float] = {}

    def at(self, m: float) -> float:
        t = self.times.get(m)
        if t is None:
            t = self.shape.seconds(m)
            if self.tuned is not None:
                tuned = self.tuned.seconds(m)
                if tuned is not None and tuned < t:  # min(t, tuned)
                    t = tuned
            t = _keep(self.times, m, _KERNEL_MIN_S if _KERNEL_MIN_S > t else t)  # max(t, floor)
        return t


class StepModel:
    """Step times of one deployment (precomputed constants; `step_s` is a few dozen float operations)."""

    def __init__(self, dep: Deployment, eff: Efficiency | None = None, measured_prefill: bool = True) -> None:
        self.dep = dep
        self.spec = s = dep.spec
        self.eff = eff or dep.efficiency()
        self.eng = dep.eng
        par = dep.par
        self.tp, self.pp, self.dp = par.tp, par.pp, par.dp
        hw = dep.hw
        self.kv_elem = KV_DTYPE_BYTES[dep.kv_dtype]
        # layers of the heaviest stage
        stages = [s.stage_layers(par.pp, i) for i in range(par.pp)]
        self.dense_layers, self.moe_layers = max(stages, key=lambda x: x[0] + x[1] * 3)
        self.layers = self.dense_layers + self.moe_layers
        # links: TP group inside a node unless tp exceeds gpus per node
        intra = self._intra = network.LINKS[hw.intranode]
        inter = network.internode_link(dep.network)
        self.tp_crosses_nodes = par.tp > dep.gpus_per_node
        self.tp_link = inter if self.tp_crosses_nodes else intra
        if not hw.nvlink_all_pairs and par.tp <= 2:
            self.tp_link = network.LINKS["nvlink-bridge"]  # H100 NVL: a bridged pair
        # measured all-reduce curves are of NVSwitch systems: used only where the TP group is NVSwitch-joined
        self.use_measured_ar = not self.tp_crosses_nodes and hw.nvlink_all_pairs
        self.pp_link = inter if par.pp > 1 and dep.nodes > 1 else intra
        ep_nodes = -(-par.ep_size // dep.gpus_per_node) if par.ep else 1
        self.ep_link = inter if ep_nodes > 1 else intra
        self.ep_remote = (par.ep_size - min(par.ep_size, dep.gpus_per_node)) / par.ep_size if par.ep else 0.0
        h = s.hidden_size
        self.h = h
        lin = s.attention_linears()
        self.a_rep = (lin["q_a_proj"][0], lin["q_a_proj"][1] + lin["kv_a_proj"][1])
        self.a_qb = (lin["q_b_proj"][0], lin["q_b_proj"][1] / self.tp)
        self.a_kvb = (lin["kv_b_proj"][0], lin["kv_b_proj"][1] / self.tp)
        self.a_o = (lin["o_proj"][0] / self.tp, lin["o_proj"][1])
        self.heads = s.num_attention_heads / self.tp
        self.dense_i = s.intermediate_size / self.tp
        self.shared_i = s.n_shared_experts * s.moe_intermediate_size / self.tp
        self.E, self.k, self.I = s.n_routed_experts, s.num_experts_per_tok, s.moe_intermediate_size
        self.expert_bytes_full = s.expert_bytes(self.I)
        self.vocab_shard = s.vocab_size / self.tp
        self.kv_layer_bytes = s.kv_latent_dim * self.kv_elem
        self.mtp = dep.num_speculative_tokens
        self._q = 1 + self.mtp  # queries per decoding sequence and step (MTP drafts verified)
        self._eo = self.eng.step_overhead_s
        self._ahead = self.eng.schedule_ahead_steps
        # kernels timed on the GPU itself (split-K decode GEMMs, the fused MoE's stream): perf/kernels.py
        self.kt = KernelTable.for_gpu(hw.short) if self.eff.timing == "queued" else None
        self._attn_rate = self.eff.bf16_curve[-1][1] * 1e12  # attention kernels run at the bf16 plateau
        # _attn_core's constant factors, each the same product its expression forms left to right
        self._kv_rate = self.eff.kv_tb_s * 1e12
        self._dec_flops_per_ctx = 2.0 * self.heads * (s.kv_latent_dim + s.kv_lora_rank)
        self._pre_flops_per_pair = 2.0 * self.heads * (s.qk_head_dim + s.v_head_dim)
        self._mla_floor = (self.kt.mla_decode_floor_s if self.kt is not None else None) or 0.0
        # TP x EP: experts spread over ep_size ranks, each expert split over the moe_tp ranks that share it
        self.moe_tp = par.moe_tp
        # the routed experts' GEMM shapes on one GPU (gate_up, down), and their measured rate curves if the
        # profile has both (_grouped_expert_s)
        split = self.moe_tp if par.ep else self.tp
        self._expert_shapes = ((h, 2 * self.I / split), (self.I / split, h))
        self._expert_rates: tuple[Curve, Curve] | None = None
        if all(("fp8", round(k), round(n)) in self.eff.shapes for k, n in self._expert_shapes):
            (k_up, n_up), (k_down, n_down) = self._expert_shapes
            self._expert_rates = (
                self.eff.rate_curve("fp8", k_up, n_up),
                self.eff.rate_curve("fp8", k_down, n_down),
            )
        # sglang runs the shared expert inside the routed experts' grouped GEMMs unless experts are spread by id
        # (expert parallelism of size > 1); today's model (the hand-off off) only where there is no EP at all
        self._fused_shared = self.eng.fuses_shared_expert and (
            par.ep_size == 1 if self.eng.dp_attention_handoff else not par.ep
        )
        # small kernels of one step (NON_GEMM_KERNELS): launches per layer kind, and their floor (queued only)
        self._k_attn = len(NON_GEMM_KERNELS["attention"])
        self._k_moe = len(NON_GEMM_KERNELS["moe"])
        if self._fused_shared:
            self._k_moe -= sum(1 for k in NON_GEMM_KERNELS["moe"] if k.startswith("shared"))
        self._small_kernels_per_step = (
            self.layers * self._k_attn
            + self.moe_layers * self._k_moe
            + self.dense_layers * len(NON_GEMM_KERNELS["dense"])
        )
        self._small_kernel_floor = KERNEL_MIN_US * 1e-6 if self.eff.timing == "queued" else 0.0
        # memos of pure functions of their keys, one set per model (each emptied past MEMO_CAP entries, _keep)
        self._base: dict[tuple[float, float, float | None, float | None], tuple[float, ...]] = {}  # _parts
        self._dense: dict[tuple[float, float], tuple[float, ...]] = {}  # _dense_terms by (n_dec, n_pre)
        self._routed: dict[tuple[float, float], float] = {}  # _routed_s by (expert tokens, fused rows)
        self._ep_comm: dict[tuple[float, float], float] = {}  # _ep_comm_s by (m, expert tokens)
        # _g's shapes, each keeping its times by m
        self._gemm: dict[tuple[float, float, str], _GemmTimes] = {}
        self._factor_memo: dict[tuple[str, float], float] = {}  # _prefill_factor
        # every step's GEMMs by shape (the same _GemmTimes as _g's): attention projections, dense MLP, shared
        # expert (gate_up, down), router, LM head
        self._attn_gemms = tuple(
            self._gemm_times(k, n) for k, n in (self.a_rep, self.a_qb, self.a_kvb, self.a_o)
        )
        self._dense_mlp_gemms = (self._gemm_times(h, 2 * self.dense_i), self._gemm_times(self.dense_i, h))
        self._shared_gemms = (self._gemm_times(h, 2 * self.shared_i), self._gemm_times(self.shared_i, h))
        self._router_gemm = self._gemm_times(h, self.E, "bf16")
        self._head_gemm = self._gemm_times(h, self.vocab_shard, "bf16")
        self._prefill_factors = self._measured_prefill_factors() if measured_prefill else {}
        self._prefill_curves = {g: Curve(pts) for g, pts in self._prefill_factors.items()}

    def _measured_prefill_factors(self) -> dict[str, tuple[tuple[float, float], ...]]:
        """Prefill: measured / modelled time of the dense GEMMs and of the MLA prefill attention in the layer
        forwards measured on the GPU (kernels.PREFILL_GROUPS: layer_bench's `tp8` forward, 16 heads, and `dp8ep8`,
        128 heads), never below 1. The model's rooflines (the profile's cuBLAS plateau, the bf16 peak) are what no
        kernel beats; measured kernels of the same algorithm are what one gets. {group: ((size, factor), ...)}:
        GEMMs by rows (this deployment's layout: `dp8ep8` for attention-DP, else `tp8`), attention by causal
        query-key pairs x heads, both layouts on one curve (a chunk after a long prefix, or many heads, do the
        work of a long prompt)."""
        if self.kt is None or not self.kt.prefill:
            return {}
        layouts = {"tp8": (Parallelism(8), 16), "dp8ep8": (Parallelism(1, 1, 8, True), 128)}
        gemm_cfg = "dp8ep8" if self.dp > 1 and "dp8ep8" in self.kt.prefill else "tp8"
        out: dict[str, list[tuple[float, float]]] = {"gemm": [], "attention": []}
        for cfg, records in self.kt.prefill.items():
            if cfg not in layouts:
                continue
            par, heads = layouts[cfg]
            ref = StepModel(
                Deployment(self.dep.gpu, par, "vllm", profile=self.dep.profile),
                self.eff,
                measured_prefill=False,
            )
            for m, groups in records:
                pairs = m * (m + 1) / 2
                attn = ref._attn_core(0, 0, m, pairs)
                out["attention"].append((heads * pairs, max(1.0, groups["attention"] / attn)))
                if cfg == gemm_cfg:
                    out["gemm"].append((m, max(1.0, groups["gemm"] / ref._dense_gemms_s(m))))
            for h, m, seconds in self.kt.prefill_attention:  # longer prompts, attention measured alone
                if h == heads:
                    pairs = m * (m + 1) / 2
                    out["attention"].append((h * pairs, max(1.0, seconds / ref._attn_core(0, 0, m, pairs))))
        return {g: tuple(sorted(v)) for g, v in out.items() if v}

    def _prefill_factor(self, group: str, m: float) -> float:
        """Measured/modelled factor of `group` at size m (rows, or query-key pairs for attention; log-linear
        between measured sizes, the end values beyond them); 1 without measurements. GEMMs below the smallest
        measured prefill: log-linear from 1 at DECODE_TUNED_MAX_M rows (up to there the model takes the tuned
        kernels measured at those sizes) to the first measured factor."""
        c = self._prefill_curves.get(group)
        if c is None or m <= 0:
            return 1.0
        f = self._factor_memo.get((group, m))
        if f is None:
            f = _keep(self._factor_memo, (group, m), self._prefill_factor_of(c, group, m))
        return f

    @staticmethod
    def _prefill_factor_of(c: Curve, group: str, m: float) -> float:
        x0, f0 = c.xs[0], c.ys[0]
        if group == "gemm" and m < x0:
            if m <= DECODE_TUNED_MAX_M:
                return 1.0
            w = math.log(m / DECODE_TUNED_MAX_M) / math.log(x0 / DECODE_TUNED_MAX_M)
            return 1.0 + (f0 - 1.0) * w
        if m <= x0:
            return f0
        if m >= c.xs[-1]:
            return c.ys[-1]
        i = bisect.bisect_left(c.xs, m)  # the first segment with m0 <= m <= m1 (measured sizes m0 < m <= m1)
        return c.ys[i - 1] + c.dy[i] * (math.log(m) - c.lx[i - 1]) / c.dlx[i]

    def _dense_gemms_s(self, m: float) -> float:
        """One layer's non-expert GEMMs at m rows: attention projections, shared expert, router."""
        attn_lin = (
            self._g(m, *self.a_rep) + self._g(m, *self.a_qb) + self._g(m, *self.a_kvb) + self._g(m, *self.a_o)
        )
        shared = self._g(m, self.h, 2 * self.shared_i) + self._g(m, self.shared_i, self.h)
        return attn_lin + shared + self._g(m, self.h, self.E, "bf16")

    # -- primitives ----------------------------------------------------------------------------------------
    def _g(self, m: float, k: float, n: float, dtype: str = "fp8") -> float:
        """Seconds of one GEMM (k, n, dtype) at m rows on one GPU (_GemmTimes, kept per shape and m)."""
        return self._gemm_times(k, n, dtype).at(m)

    def _gemm_times(self, k: float, n: float, dtype: str = "fp8") -> _GemmTimes:
        g = self._gemm.get((k, n, dtype))
        if g is None:
            g = _keep(self._gemm, (k, n, dtype), _GemmTimes(self.eff, self.kt, k, n, dtype))
        return g

    def _expert_stream_s(self, touched: float, wbytes: float) -> float:
        """Routed experts' weights streamed by the grouped GEMMs: the fused MoE measured on the GPU where there
        is a table for it (fixed launch cost + touched experts' bytes at its rate), else the profile's rate."""
        if self.kt is not None and touched > 0:
            t = self.kt.moe_s(touched, wbytes / touched)
            if t is not None:
                return t
        return wbytes / (self.eff.weight_tb_s * 1e12)

    def _grouped_expert_s(self, rows: float, touched: float, flops: float) -> float:
        """Compute leg of the routed experts on one GPU: one grouped GEMM launch per projection over all touched
        experts (`rows` token-expert rows in all). Where the profile measured the expert shapes as this GPU holds
        them (gate_up h x 2I/tp, down I/tp x h; whole experts under EP), their rate at `rows` rows is used: a
        grouped launch fills the GPU like one GEMM of that many rows, at the efficiency of the thin per-expert
        shape. Otherwise the best rate at the per-expert row count stands in (weight-streaming-bound regime)."""
        if self._expert_rates is not None:
            (k_up, n_up), (k_down, n_down) = self._expert_shapes
            up, down = self._expert_rates  # eff.tflops(rows, "fp8", k, n) of each
            return 2.0 * rows * k_up * n_up / (up.log_lin(rows) * 1e12) + 2.0 * rows * k_down * n_down / (
                down.log_lin(rows) * 1e12
            )
        return flops / (self.eff.tflops(rows / max(touched, 1e-9)) * 1e12)

    def allreduce_s(self, nbytes: float) -> float:
        if self.tp <= 1:
            return 0.0
        if self.tp_crosses_nodes:  # NCCL over the nodes' NICs (network.multinode_allreduce_s)
            return network.multinode_allreduce_s(
                nbytes, self.tp, self.dep.gpus_per_node, self._intra, self.tp_link
            )
        if self.use_measured_ar:
            t = self.eff.allreduce_s(nbytes, self.tp)
            if t is not None:
                return t
        alpha = self.eff.allreduce_s(0.0, 2) if self.eff.ar_points else None
        alpha_us = max(self.tp_link.latency_us, (alpha or 0.0) * 1e6)
        return network.ring_allreduce_s(nbytes, self.tp, self.tp_link, alpha_us)

    def _allreduce_world(self, nbytes: float, world: int) -> float:
        """All-reduce of nbytes over `world` ranks of this node (measured curve where NVSwitch-joined)."""
        if world <= 1:
            return 0.0
        if self.dep.hw.nvlink_all_pairs and world <= self.dep.gpus_per_node:
            t = self.eff.allreduce_s(nbytes, world)
            if t is not None:
                return t
        if world > self.dep.gpus_per_node:
            inter = network.internode_link(self.dep.network)
            return network.multinode_allreduce_s(nbytes, world, self.dep.gpus_per_node, self._intra, inter)
        return network.ring_allreduce_s(nbytes, world, self._intra)

    def p2p_s(self, tokens: float) -> float:
        return self.pp_link.transfer_s(tokens * 2 * self.h * 2)

    # -- per-layer parts -------------------------------------------------------------------------------------
    def parts(
        self,
        n_dec: float,
        ctx_sum: float,
        n_pre: float,
        pre_pairs: float,
        n_logits: float | None = None,
        moe_tokens: float | None = None,
    ) -> dict[str, float]:
        """Seconds per step of the heaviest pipeline stage (one microbatch holding everything), by component.

        moe_tokens: tokens of every attention-DP rank that meet at this rank's experts (EP); default: every
        rank carries this rank's batch. Only the MLA core depends on the context: the rest is computed once per
        (batch, prefill tokens, logits, expert tokens) and kept (a simulation asks for the same batches often)."""
        key = (n_dec, n_pre, n_logits, moe_tokens)
        base = self._base.get(key)
        if base is None:
            base = _keep(self._base, key, self._parts(n_dec, n_pre, n_logits, moe_tokens))
        if not base:
            return {}
        ag, dm, me, ar, ep, lm, md, sk = base
        core = self.layers * self._attn_core(n_dec, ctx_sum, n_pre, pre_pairs)
        if self.mtp and ctx_sum:  # each draft pass reads the latent cache once more (kept with no context)
            kv_read = ctx_sum * self.kv_layer_bytes / self._kv_rate
            md += self.mtp * (max(kv_read / (1 + self.mtp), _KERNEL_MIN_S) - _KERNEL_MIN_S)
        out = dict(
            zip(_PART_KEYS, (ag, core, dm, me, ar, ep, lm, md, sk, self.eng.step_overhead_s), strict=True)
        )
        if self.eng.schedule_ahead_steps:
            gpu = sum(v for k, v in out.items() if k != "engine_overhead")
            out["engine_overhead"] = max(0.0, self.eng.step_overhead_s - gpu)
        return out

    def _stage_s(
        self, n_dec: float, ctx_sum: float, n_pre: float, pre_pairs: float, moe_tokens: float | None
    ) -> float | None:
        """GPU seconds of `parts(...)` (all but the engine overhead) without building its dict: the same values
        added in the same order (bit-identical to summing `parts()`), None for an empty step."""
        key = (n_dec, n_pre, None, moe_tokens)
        base = self._base.get(key)
        if base is None:
            base = _keep(self._base, key, self._parts(n_dec, n_pre, None, moe_tokens))
        if not base:
            return None
        ag, dm, me, ar, ep, lm, md, sk = base
        core = self.layers * self._attn_core(n_dec, ctx_sum, n_pre, pre_pairs)
        if self.mtp and ctx_sum:  # as parts(): each draft pass reads the latent cache once more
            kv_read = ctx_sum * self.kv_layer_bytes / self._kv_rate
            md += self.mtp * (max(kv_read / (1 + self.mtp), _KERNEL_MIN_S) - _KERNEL_MIN_S)
        return 0 + ag + core + dm + me + ar + ep + lm + md + sk  # sum()'s order, from its int start

    def _attn_core(self, n_dec: float, ctx_sum: float, n_pre: float, pre_pairs: float) -> float:
        """MLA core of one layer: decode reads the latent cache (q queries per seq), prefill computes causal
        attention."""
        if n_dec:
            kv_read = ctx_sum * self.kv_layer_bytes / self._kv_rate
            dec_flops = self._dec_flops_per_ctx * ctx_sum * self._q
            attn_core = max(kv_read, dec_flops / self._attn_rate, self._mla_floor)
        else:
            attn_core = 0.0
        if n_pre:
            f = self._prefill_factor("attention", self.heads * pre_pairs)
            attn_core += self._pre_flops_per_pair * pre_pairs / self._attn_rate * f
        return _KERNEL_MIN_S if _KERNEL_MIN_S > attn_core else attn_core  # max()

    def _parts(
        self, n_dec: float, n_pre: float, n_logits: float | None, moe_tokens: float | None
    ) -> tuple[float, ...]:
        """parts()' values that do not depend on the context, in _PART_KEYS order less attention_core and
        engine_overhead (the callers add those); () for an empty step. Assembled from kept pieces: the terms of
        the batch outside the experts (`_dense_terms`, per (batch, prefill tokens)), the routed experts' time
        (`_routed_s`, per expert tokens) and the expert-parallel exchange (`_ep_comm_s`), so that lock-step ranks
        whose batches meet at the experts, or a batch seen with other ranks' tokens, cost a few lookups."""
        q = 1 + self.mtp
        m = n_dec * q + n_pre
        if m <= 0:
            return ()
        pre = self._dense.get((n_dec, n_pre))
        if pre is None:
            pre = _keep(self._dense, (n_dec, n_pre), self._dense_terms(n_dec, n_pre, m))
        attn_lin, dense, shared, router, ar, kernels, kernels_mtp, head, mtp_draft = pre
        moe_m = m  # tokens whose hidden states enter this rank's MoE block (routing, experts' activations)
        gather = 0.0  # attention-DP -> TP-split MoE hand-off: gather the DP ranks' tokens, reduce them back
        if self.dep.par.ep:
            tokens = m * self.dp if moe_tokens is None else moe_tokens  # every DP rank's tokens meet here
            comm_ep = self._ep_comm.get((m, tokens))
            if comm_ep is None:
                comm_ep = _keep(self._ep_comm, (m, tokens), self._ep_comm_s(m, tokens))
            # with dp_attention_handoff (sglang), the MLP runs on the gathered tokens of the g ranks that share
            # the experts (router, MoE kernels, shared expert, dense layers) and a step carrying prefill gathers
            # by all-reduce (SUM_LEN padding): two all-reduces of the gathered tokens there
            g = min(self.moe_tp, self.dp)
            if g > 1 and self.eng.dp_attention_handoff:
                moe_m = tokens * g / self.dp
                gather = (2 if n_pre else 1) * self._allreduce_world(moe_m * self.h * 2, g)
                comm_ep += gather
                shared = self._g(moe_m, self.h, 2 * self.shared_i / g) + self._g(
                    moe_m, self.shared_i / g, self.h
                )
                router = self._g(moe_m, self.h, self.E, "bf16")
                dense = self._g(moe_m, self.h, 2 * self.dense_i / g) + self._g(
                    moe_m, self.dense_i / g, self.h
                )
        else:
            tokens = m
            comm_ep = 0.0
        dense_gather = gather  # the dense layers' MLP crosses the same hand-off (0 without it)
        if self._fused_shared:
            shared = 0.0  # run as one more routed expert (_routed_s)
        routed_key = (tokens, moe_m if self._fused_shared else 0.0)
        routed = self._routed.get(routed_key)
        if routed is None:
            routed = _keep(self._routed, routed_key, self._routed_s(tokens, moe_m))
        if moe_m != m:  # the MoE block's kernels run on the gathered tokens, not this rank's own
            act = m * self.h * ACT_BYTES_PER_VALUE / self._kv_rate
            act_moe = moe_m * self.h * ACT_BYTES_PER_VALUE / self._kv_rate
            floor = self._small_kernel_floor
            kernels += self.moe_layers * self._k_moe * (max(floor, act_moe) - max(floor, act))
            kernels += (
                self.dense_layers * len(NON_GEMM_KERNELS["dense"]) * (max(floor, act_moe) - max(floor, act))
            )
        if self.mtp:
            kernels += kernels_mtp
        if n_logits is not None:
            head = self._g(max(n_logits, 1), self.h, self.vocab_shard, "bf16")
        L, Lm, Ld = self.layers, self.moe_layers, self.dense_layers
        return (
            L * attn_lin,  # attention_gemm
            Ld * dense,  # dense_mlp
            Lm * (routed + shared + router),  # moe_experts
            L * ar,  # tp_allreduce
            Lm * comm_ep + Ld * dense_gather,  # ep_all_to_all
            head,  # lm_head
            mtp_draft,
            kernels,  # small_kernels
        )

    def _dense_terms(self, n_dec: float, n_pre: float, m: float) -> tuple[float, ...]:
        """What a batch of n_dec decodes (m rows with their drafts) and n_pre prefill tokens costs outside the
        routed experts: per layer the attention projections, dense MLP, shared expert, router and TP all-reduces;
        per step the small kernels (those of the MTP passes apart), the LM head at the default logits and the
        MTP draft passes with no context."""
        q = 1 + self.mtp
        # attention projections
        rep, qb, kvb, o = self._attn_gemms
        attn_lin = rep.at(m) + qb.at(m) + kvb.at(m) + o.at(m)
        # MLPs
        dense = self._dense_mlp_gemms[0].at(m) + self._dense_mlp_gemms[1].at(m)
        shared = self._shared_gemms[0].at(m) + self._shared_gemms[1].at(m)
        router = self._router_gemm.at(m)
        if n_pre and self._prefill_factors:  # the prefill rows' share at the measured kernels' rate
            f = 1.0 + (self._prefill_factor("gemm", m) - 1.0) * n_pre / m
            attn_lin, dense, shared, router = attn_lin * f, dense * f, shared * f, router * f
        ar = 2 * self.allreduce_s(m * self.h * 2)
        # small kernels: each moves its activations (m x hidden, read and written in bf16) at the streaming rate,
        # and inside a CUDA graph takes at least KERNEL_MIN_US (charged for queued profiles only, see above)
        floor = self._small_kernel_floor
        act = m * self.h * ACT_BYTES_PER_VALUE / self._kv_rate
        k_step = len(NON_GEMM_KERNELS["step"])
        kernels = self._small_kernels_per_step * max(floor, act) + k_step * floor
        kernels_mtp = 0.0
        if self.mtp:  # each MTP draft pass: one more layer's kernels and the head's, on n_dec tokens
            act_d = n_dec * self.h * ACT_BYTES_PER_VALUE / self._kv_rate
            kernels_mtp = self.mtp * ((self._k_attn + self._k_moe) * max(floor, act_d) + k_step * floor)
        head = self._head_gemm.at(max(n_dec * q + (1 if n_pre else 0), 1))  # the default logits
        mtp_draft = 0.0
        if (
            self.mtp
        ):  # each draft pass runs the MTP layer (one MoE layer + eh_proj) and the head on n_dec tokens
            mtp_draft = self.mtp * (
                self._g(n_dec, *self.a_rep)
                + self._g(n_dec, *self.a_qb)
                + self._g(n_dec, *self.a_o)
                + _KERNEL_MIN_S  # the latent-cache read, charged with the context (parts(), _stage_s)
                + self._g(n_dec, 2 * self.h, self.h / self.tp, "bf16")
                + max(
                    self.E
                    * (1 - (1 - self.k / self.E) ** n_dec)
                    * self.expert_bytes_full
                    / (self.tp if not self.dep.par.ep else self.dep.par.ep_size * self.moe_tp)
                    / (self.eff.weight_tb_s * 1e12),
                    2 * KERNEL_MIN_US * 1e-6,
                )
                + self._g(n_dec, self.h, self.vocab_shard, "bf16")
                + 2 * self.allreduce_s(n_dec * self.h * 2)
            )
        return attn_lin, dense, shared, router, ar, kernels, kernels_mtp, head, mtp_draft

    def _ep_comm_s(self, m: float, tokens: float) -> float:
        """Per MoE layer, the expert-parallel exchange of a rank with m tokens whose experts see `tokens` (every
        DP rank's): dispatch/combine all-to-all, and the experts' TP group's all-reduce under attention DP (the
        hand-off's gathers are added by _parts)."""
        a2a_bytes = m * self.k * self.h * (1 + 2)  # dispatch fp8, combine bf16
        if self.dep.par.ep_size == 1:
            comm_ep = 0.0  # no expert is split across ranks by expert id: no dispatch
        elif self.dp == 1:
            # attention TP (TRT-LLM `--tp 8 --ep 8` without attention DP, sglang/vLLM TP + EP): every rank
            # already holds every token; each runs its own experts on them and the layer's TP all-reduce
            # (`ar`) sums the outputs: no dispatch/combine all-to-all
            comm_ep = 0.0
        elif self.ep_remote > 0:
            comm_ep = self.ep_link.transfer_s(a2a_bytes * self.ep_remote)
        else:
            comm_ep = network.all_to_all_s(a2a_bytes, self.dep.par.ep_size, self.ep_link)
        # experts split over ranks that hold different attention-DP batches (sglang --enable-dp-attention
        # with TP MoE): those ranks all-gather their tokens before the experts and reduce-scatter after,
        # together one all-reduce of the gathered hidden states (without the hand-off, see _parts)
        g = min(self.moe_tp, self.dp)
        if g > 1 and not self.eng.dp_attention_handoff:
            comm_ep += self._allreduce_world(tokens * g / self.dp * self.h * 2, g)
        return comm_ep

    def _routed_s(self, tokens: float, moe_m: float) -> float:
        """Per MoE layer, the routed experts' grouped GEMMs on `tokens` (EP: every DP rank's tokens, else this
        rank's), the shared expert as one more expert on the moe_m tokens of this rank's MoE block where the
        engine fuses it."""
        if self.dep.par.ep:
            local = self.E / self.dep.par.ep_size
            touched = local * (1.0 - (1.0 - self.k / self.E) ** tokens)
            rows = tokens * self.k / self.dep.par.ep_size
            wbytes = touched * self.expert_bytes_full / self.moe_tp
            flops = 2.0 * rows * 3 * self.h * self.I / self.moe_tp
        else:
            touched = self.E * (1.0 - (1.0 - self.k / self.E) ** tokens)
            rows = tokens * self.k
            wbytes = touched * self.expert_bytes_full / self.tp
            flops = 2.0 * rows * 3 * self.h * self.I / self.tp
        if (
            self._fused_shared
        ):  # the shared expert as one more expert of the grouped GEMMs, every token routed to it
            split = self.moe_tp if self.dep.par.ep else self.tp
            touched += 1.0
            rows += moe_m
            wbytes += self.expert_bytes_full / split
            flops += 2.0 * moe_m * 3 * self.h * self.I / split
        measured_rows = (
            self.kt.moe_rows_s(rows, wbytes / max(touched, 1e-9))
            if self.kt is not None and touched > 0
            else None
        )
        return max(
            self._expert_stream_s(touched, wbytes),
            measured_rows or 0.0,
            self._grouped_expert_s(rows, touched, flops),
            2 * KERNEL_MIN_US * 1e-6,
        )

    def step_s(
        self,
        n_dec: float,
        ctx_sum: float,
        n_pre: float = 0.0,
        pre_pairs: float = 0.0,
        moe_tokens: float | None = None,
    ) -> float:
        """One engine step: every running sequence advances (decode) and prefill chunks are processed.

        With PP p, the batch runs as p microbatches in flight; a token of any sequence takes the whole pipe:
        p x stage time of a 1/p microbatch plus (p - 1) activation sends."""
        p = self.pp
        if p == 1:
            gpu = self._stage_s(n_dec, ctx_sum, n_pre, pre_pairs, moe_tokens)
            if gpu is None:
                return 0
            # sum(parts(...).values()): the exposed engine overhead last
            return gpu + (max(0.0, self._eo - gpu) if self._ahead else self._eo)
        mb = self._microbatches(n_dec, n_pre)
        mt = None if moe_tokens is None else moe_tokens / mb
        st = self._stage_s(n_dec / mb, ctx_sum / mb, n_pre / mb, pre_pairs / mb, mt)
        stage = 0 if st is None else st
        tokens = (n_dec * (1 + self.mtp) + n_pre) / mb
        return p * stage + (p - 1) * self.p2p_s(tokens) + self.eng.step_overhead_s

    def _microbatches(self, n_dec: float, n_pre: float) -> float:
        """Microbatches in flight: up to pp, never more than the sequences there are to split."""
        return float(min(self.pp, max(1.0, round(n_dec + (1 if n_pre else 0)))))

    def breakdown(
        self, n_dec: float, ctx_sum: float, n_pre: float = 0.0, pre_pairs: float = 0.0
    ) -> dict[str, float]:
        """Step time by component (pipeline sends under 'pp_send'), seconds."""
        p = self.pp
        mb = self._microbatches(n_dec, n_pre)
        parts = self.parts(n_dec / mb, ctx_sum / mb, n_pre / mb, pre_pairs / mb)
        out = {k: (v * p if k != "engine_overhead" else v) for k, v in parts.items()}
        if p > 1:
            out["pp_send"] = (p - 1) * self.p2p_s((n_dec * (1 + self.mtp) + n_pre) / mb)
        return out

    def tokens_per_step(self) -> float:
        """Expected tokens a sequence gains per step: 1 + a + a^2 + ... (MTP drafts accepted in a chain)."""
        a = self.eng.mtp_acceptance
        return sum(a**i for i in range(self.mtp + 1))

    def prefill_s(self, isl: int, ctx_before: int = 0) -> float:
        """One prefill of isl tokens alone (a TTFT floor)."""
        pairs = isl * ctx_before + isl * (isl + 1) / 2
        return self.step_s(0, 0, isl, pairs)

    def kv_transfer_s(self, tokens: int, link: network.Link, decode_tp: int = 1) -> float:
        """P/D: the prompt's KV cache (all layers) sent from this (prefill) instance to a decode instance of TP
        `decode_tp`: one latent copy per decode rank (`ModelSpec.kv_transfer_bytes_per_token`). Each decode rank
        pulls its copy from prefill rank `tp_rank * prefill_tp // decode_tp` (vLLM NixlConnector tp_mapping;
        sglang's mooncake backend pairs the ranks the same way), each rank over its own transfer agent: on a
        rail-optimised fabric (`Link.per_gpu`, a NIC per GPU) the pulls run side by side, a prefill NIC carrying
        ceil(decode_tp / prefill_tp) of them; over one link per node (`per_gpu` False) they share it."""
        nbytes: float = tokens * self.spec.kv_transfer_bytes_per_token(self.dep.kv_dtype, decode_tp)
        if link.per_gpu and decode_tp > 1:
            copies = kv_transfer_copies(decode_tp)
            nbytes = nbytes / copies * math.ceil(copies / min(copies, self.dep.par.tp))
        return link.transfer_s(nbytes)
