"""`predict()`: the one entry point the planner, the accuracy benchmark, the twin and notebooks use.

    from r1lab.perf import predict
    p = predict("H200", 8, "TP8", "vllm", isl=1024, osl=1024, concurrency=64)
    p.tpot_ms["mean"], p.tok_s_per_gpu, p.memory["kv_tokens"], p.bottleneck

Pure (no I/O besides reading the reference profile once, cached) and fast (milliseconds per load point).
Units: latencies in ms ({mean, p50, p90, p99}); throughput in output tokens/s. Definitions follow
`vllm bench serve`: TTFT send -> first token; TPOT (E2E - TTFT) / (output tokens - 1); ITL gap between chunks.
A prediction of a deployment that does not fit carries fits=False, the reason, and NaN metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from r1lab.model import ModelSpec, Parallelism
from r1lab.perf import hardware, network
from r1lab.perf.memory import DEFAULT_BLOCK_SIZE, MemoryPlan, memory_plan
from r1lab.perf.ops import Deployment, StepModel
from r1lab.perf.profile import Efficiency, load_profile, reference_profiles
from r1lab.perf.simulate import (
    PDConfig,
    SchedulerConfig,
    Workload,
    percentiles,
    simulate,
    weighted_percentiles,
)
from r1lab.perf.steady import steady_state

MODEL_VERSION = "r1lab-perf-2"


def _rate(link: network.Link) -> str:
    bits = link.gb_s * 8e9
    return f"{bits / 1e6:.0f} Mbps" if bits < 1e9 else f"{bits / 1e9:.0f} Gb/s"


def parse_parallelism(text: str | Parallelism) -> Parallelism:
    """'TP8', 'TP8xPP2', 'TP8 PP2', 'TP1 DP8 EP8', 'TP8 DP2 EP', 'TP8 EP4' (experts over 4 ranks, each split
    over 2: TP x EP) -> Parallelism."""
    if isinstance(text, Parallelism):
        return text
    t = text.upper()
    vals = {k: int(v) for k, v in re.findall(r"(TP|PP|DP|EP)\s*=?\s*(\d+)", t)}
    ep = "EP" in t
    if not vals and not ep:
        raise ValueError(f"cannot read parallelism {text!r}: expected e.g. 'TP8', 'TP8xPP2', 'TP1 DP8 EP8'")
    tp, dp = vals.get("TP", 1), vals.get("DP", 1)
    ep_n = vals.get("EP", 0)
    moe_ep = ep_n if ep_n and ep_n != tp * dp else 0
    return Parallelism(tp=tp, pp=vals.get("PP", 1), dp=dp, ep=ep, moe_ep=moe_ep)


@dataclass(frozen=True)
class Disaggregation:
    """P/D: `prefill_instances` instances of `prefill` parallelism feed `decode_instances` decode instances
    (the `parallelism` argument of predict) over `network` (a key of network.LINKS or a provider network)."""

    prefill: Parallelism
    prefill_instances: int = 1
    decode_instances: int = 1
    network: str = "global-networking"
    kv_transfer_gb_s: float | None = None  # override the link's bandwidth (GB/s)


@dataclass
class Prediction:
    hardware: str
    gpus: int
    parallelism: str
    engine: str
    isl: int
    osl: int
    concurrency: int | None
    rate: float | None
    fits: bool
    reason: str
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2e_ms: dict[str, float]
    output_tok_s: float
    input_tok_s: float
    tok_s_per_gpu: float
    tok_s_per_user: float
    rps: float
    memory: dict[str, Any]
    bottleneck: dict[str, Any]
    step_breakdown_ms: dict[str, float]
    preemptions: int = 0
    mean_batch: float = 0.0
    disaggregated: bool = False
    kv_transfer_ms: float | None = None
    source: str = "modelled"
    model_version: str = MODEL_VERSION
    efficiency: dict[str, Any] = field(default_factory=dict)
    evaluated_by: str = (
        "simulation"  # or "steady-state" (r1lab.perf.steady, predict(method="auto"|"analytic"))
    )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan}
    ms = [v * 1e3 for v in values]
    p50, p90, p99 = percentiles(ms, (50, 90, 99))
    return {"mean": statistics.fmean(ms), "p50": p50, "p90": p90, "p99": p99}


# a profile file read once per process (H100 SXM and H100 NVL share one; the all-reduce donors are read once)
_profile = functools.lru_cache(maxsize=16)(load_profile)


@functools.lru_cache(maxsize=16)
def _profile_efficiency(slug: str, gpu_short: str) -> Efficiency:
    """A profile's efficiency constants on one GPU type, kept (a GPU's own profile is often the donor below)."""
    return _profile(slug).efficiency(hardware.gpu(gpu_short))


@functools.lru_cache(maxsize=64)
def _efficiency(gpu_short: str, profile: str | None) -> Efficiency:
    """The GPU's efficiency constants; a profile without all-reduce data borrows the measured curve of a
    reference profile that has one (NVSwitch systems: the latency floor and bus rate of NCCL on NVLink 4)."""
    hw = hardware.gpu(gpu_short)
    eff = _profile_efficiency(profile or hw.default_profile, hw.short)
    if not eff.ar_points:
        donor = _allreduce_donor(eff.timing)
        if donor is not None:
            eff = dataclasses.replace(eff, ar_points=donor.ar_points, ar_from=donor.profile)
    return eff


@functools.lru_cache(maxsize=4)
def _allreduce_donor(timing: str) -> Efficiency | None:
    """The reference profile whose all-reduce curve a profile without one borrows: one timed the same way
    (queued all-reduces carry no launch latency) first, newest first; None if no reference profile has one."""
    donors = [(slug, _profile(slug)) for slug in reference_profiles()]
    donors.sort(key=lambda d: d[1].measured, reverse=True)
    donors.sort(key=lambda d: d[1].timing_method != timing)  # stable: same timing first
    for slug, prof in donors:
        if prof.allreduce:  # an efficiency's all-reduce curve is made of these records alone
            return _profile_efficiency(slug, prof.gpu)  # on its own GPU
    return None


@functools.lru_cache(maxsize=256)
def _step_model(dep: Deployment) -> StepModel:
    """One StepModel per deployment, kept: its per-batch step costs (`StepModel.parts`' table) do not depend on
    the load point, so every point of a sweep reuses the costs the others computed."""
    return StepModel(dep, _efficiency(dep.hw.short, dep.profile))


# pure: the same plan for every repeat of its args
_memory_plan = functools.lru_cache(maxsize=1024)(memory_plan)


def predict(
    hardware_name: str,
    gpus: int,
    parallelism: str | Parallelism,
    engine: str = "vllm",
    isl: int = 1024,
    osl: int = 1024,
    concurrency: int | None = 1,
    *,
    rate: float | None = None,
    kv_dtype: str = "auto",
    gpu_memory_utilization: float = 0.90,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 8192,
    enable_chunked_prefill: bool = True,
    num_speculative_tokens: int = 0,
    max_model_len: int | None = None,
    gpus_per_node: int = 8,
    network_name: str = "none",
    disaggregation: Disaggregation | None = None,
    num_requests: int | None = None,
    isl_range: tuple[int, int] | None = None,
    osl_range: tuple[int, int] | None = None,
    profile: str | None = None,
    seed: int = 0,
    spec: ModelSpec | None = None,
    method: str = "simulate",
) -> Prediction:
    """Predict one load point (fixed `concurrency`, or Poisson `rate` req/s) of one deployment.

    `gpus` must equal the GPUs the layout uses (checked). `network_name` joins the nodes of one instance;
    `disaggregation` adds prefill instances and the link that carries KV caches to the decode instance(s).
    `method`: "simulate" (the event simulation), "auto" (the analytic closed-loop steady state, r1lab.perf.steady,
    where it applies, the simulation elsewhere) or "analytic" (ValueError where it does not apply)."""
    if method not in ("simulate", "auto", "analytic"):
        raise ValueError(f"method must be 'simulate', 'auto' or 'analytic', got {method!r}")
    hw = hardware.gpu(hardware_name)
    par = parse_parallelism(parallelism)
    spec = spec or ModelSpec.deepseek_r1()
    if concurrency is None and rate is None:
        raise ValueError("give a concurrency or a rate")
    pd = disaggregation
    used = par.gpus * (pd.decode_instances if pd else 1) + (
        pd.prefill.gpus * pd.prefill_instances if pd else 0
    )
    if used != gpus:
        raise ValueError(f"{par.label()} uses {used} GPUs but gpus={gpus} was given")

    def plan_memory(p: Parallelism, speculative_tokens: int) -> MemoryPlan:
        return _memory_plan(hw.runpod_id, p, kv_dtype, gpu_memory_utilization, max_num_batched_tokens,
                           max_num_seqs, DEFAULT_BLOCK_SIZE, isl, osl, max_model_len, speculative_tokens, spec)  # fmt: skip

    mem = plan_memory(par, num_speculative_tokens)
    fits, reason = mem.fits, mem.reason
    pre_mem = None
    if pd is not None:
        pre_mem = plan_memory(pd.prefill, 0)
        if not pre_mem.fits:
            fits, reason = False, f"prefill instance: {pre_mem.reason}"
    memory = mem.as_dict()
    nan = {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan}
    base: dict[str, Any] = dict(
        hardware=hw.short,
        gpus=gpus,
        parallelism=par.label() + (f" + P/D {pd.prefill.label()}" if pd else ""),
        engine=engine,
        isl=isl,
        osl=osl,
        concurrency=concurrency,
        rate=rate,
        memory=memory,
        disaggregated=pd is not None,
    )
    if not fits:
        return Prediction(
            **base,
            fits=False,
            reason=reason,
            ttft_ms=nan,
            tpot_ms=nan,
            itl_ms=nan,
            e2e_ms=nan,
            output_tok_s=0.0,
            input_tok_s=0.0,
            tok_s_per_gpu=0.0,
            tok_s_per_user=0.0,
            rps=0.0,
            bottleneck={"component": "memory", "detail": reason},
            step_breakdown_ms={},
        )

    def fabric(p: Parallelism, role: str) -> str:
        """The network joining the nodes an instance spans (an instance inside one node needs none)."""
        if p.gpus <= gpus_per_node or network_name != "none":
            return network_name
        if pd is not None and pd.network in network.NETWORK_TO_LINK and pd.network != "none":
            return pd.network  # P/D pools on one fabric: the instance spans nodes over the pools' network
        raise ValueError(
            f"the {role} instance ({p.label()}, {p.gpus} GPUs) spans {-(-p.gpus // gpus_per_node)} nodes of "
            f"{gpus_per_node} GPUs but no network joins them: pass network_name (e.g. 'infiniband')"
        )

    dep = Deployment(
        hw.runpod_id,
        par,
        engine,
        kv_dtype,
        gpus_per_node,
        fabric(par, "decode" if pd else "serving"),
        num_speculative_tokens,
        profile,
        spec,
    )
    sm = _step_model(dep)
    # who is simulated: P/D -> every decode rank of every decode instance against the one shared prefill pool;
    # attention-DP under EP -> the instance's DP ranks in lock-step (they meet at every MoE all-to-all);
    # otherwise one replica of the independent ones (data parallel without EP)
    coupled = pd is not None or (par.ep and par.dp > 1)
    replicas = par.dp * (pd.decode_instances if pd else 1)
    ranks = replicas if coupled else 1
    split = 1 if coupled else replicas
    conc = None if concurrency is None else max(1, math.ceil(concurrency / split))
    r_rate = None if rate is None else rate / split
    wl = Workload(
        isl=isl_range or isl,
        osl=osl_range or osl,
        concurrency=conc,
        rate=r_rate,
        num_requests=None if num_requests is None else max(1, math.ceil(num_requests / split)),
        seed=seed,
    )
    sched = SchedulerConfig(
        max_num_seqs, max_num_batched_tokens, enable_chunked_prefill, mem.num_blocks, DEFAULT_BLOCK_SIZE
    )
    pdc = None
    kv_ms = None
    if pd is not None:
        link = network.LINKS.get(pd.network) or network.internode_link(pd.network)
        if pd.kv_transfer_gb_s:
            link = network.Link(
                f"{link.name} @ {pd.kv_transfer_gb_s} GB/s", pd.kv_transfer_gb_s, link.latency_us
            )
        if link.gb_s <= 0:
            raise ValueError(f"P/D needs a link between the pools: network {pd.network!r} carries no bytes")
        pre_dep = Deployment(
            hw.runpod_id, pd.prefill, engine, kv_dtype, gpus_per_node, fabric(pd.prefill, "prefill"), 0,
            profile, spec,
        )  # fmt: skip
        # one shared pool: every prefill rank (instances x their DP ranks) serves every decode rank, FIFO
        pdc = PDConfig(
            _step_model(pre_dep), link, pd.prefill_instances * pd.prefill.dp, max_num_batched_tokens, par.tp
        )
        kv_ms = pdc.prefill.kv_transfer_s(isl, link, par.tp) * 1e3
    res = None
    if method != "simulate" and pdc is None:
        res = steady_state(sm, wl, sched, ranks=ranks, ranks_per_instance=par.dp)
    evaluated_by = "simulation" if res is None else "steady-state"
    if res is None and method == "analytic":
        raise ValueError("the analytic steady state does not apply to this load point (r1lab.perf.steady)")
    if res is None:
        res = simulate(sm, wl, sched, pdc, ranks=ranks, ranks_per_instance=par.dp)
    busy = (
        1.0
        if coupled
        else (replicas if concurrency is None or conc is None else min(replicas, concurrency / conc))
    )  # replicas with work
    out_tok_s = res.output_tokens / res.duration_s * busy
    in_tok_s = res.input_tokens / res.duration_s * busy
    tpot = _stats(res.tpot_s)
    itl_pairs = res.itl
    i50, i90, i99 = weighted_percentiles(itl_pairs, (50, 90, 99))
    itl = {
        "mean": sum(g * w for g, w in itl_pairs) / max(sum(w for _, w in itl_pairs), 1e-12) * 1e3,
        "p50": i50 * 1e3,
        "p90": i90 * 1e3,
        "p99": i99 * 1e3,
    }
    b = min(max(res.mean_batch, 1.0), max_num_seqs)
    ctx = isl + osl / 2
    parts = sm.breakdown(b, b * ctx)
    total = sum(parts.values())
    top = max(parts, key=lambda k: parts[k])
    bottleneck: dict[str, Any] = {
        "component": top,
        "ms_per_step": parts[top] * 1e3,
        "share": parts[top] / total,
        "step_ms": total * 1e3,
        "batch": b,
    }
    bottleneck["detail"] = (
        f"{top.replace('_', ' ')}: {parts[top] * 1e3:.1f} of {total * 1e3:.1f} ms per decode step at batch {b:.0f}"
    )
    if pd is None and tpot["mean"] > 1.5 * total * 1e3:
        bottleneck = {
            "component": "prefill_interference",
            "ms_per_step": total * 1e3,
            "tpot_ms": tpot["mean"],
            "decode_component": top,
            "detail": (
                f"TPOT {tpot['mean']:.1f} ms against a {total * 1e3:.1f} ms decode step: steps carrying prefill "
                f"chunks of other requests ({isl}-token prompts, budget {max_num_batched_tokens}) stall decoding"
            ),
        }
    elif top == "pp_send":
        bottleneck["link"] = sm.pp_link.description
        bottleneck["detail"] = (
            f"pipeline activations ({2 * spec.hidden_size * 2:,} B/token) cross {sm.pp_link.name} at "
            f"{_rate(sm.pp_link)}: {parts[top] * 1e3:.1f} of {total * 1e3:.1f} ms per decode step "
            f"at batch {b:.0f}"
        )
    if pd is not None and pdc is not None and kv_ms is not None:  # pdc and kv_ms are set together
        pre_ms = pdc.prefill.prefill_s(isl) * 1e3
        if kv_ms > pre_ms:
            bottleneck = {
                "component": "kv_transfer",
                "ms_per_request": kv_ms,
                "prefill_ms": pre_ms,
                "link": pdc.link.description,
                "detail": (
                    f"each {isl}-token prompt's KV cache ({isl * spec.kv_transfer_bytes_per_token(kv_dtype, par.tp) / 1e6:.1f} MB: "
                    f"one latent copy per decode TP rank, x{par.tp}) "
                    f"takes {kv_ms:,.0f} ms over {pdc.link.name} at {_rate(pdc.link)} against {pre_ms:.0f} ms of prefill; "
                    "the link carries one cache at a time, so it caps the whole deployment"
                ),
            }
    eff = sm.eff
    return Prediction(
        **base,
        fits=True,
        reason="",
        ttft_ms=_stats(res.ttft_s),
        tpot_ms=tpot,
        itl_ms=itl,
        e2e_ms=_stats(res.e2e_s),
        output_tok_s=out_tok_s,
        input_tok_s=in_tok_s,
        tok_s_per_gpu=out_tok_s / gpus,
        tok_s_per_user=1000.0 / tpot["mean"] if tpot["mean"] > 0 else math.nan,
        rps=res.requests * busy / res.duration_s,
        bottleneck=bottleneck,
        step_breakdown_ms={k: v * 1e3 for k, v in parts.items()},
        preemptions=res.preemptions,
        mean_batch=res.mean_batch,
        kv_transfer_ms=kv_ms,
        evaluated_by=evaluated_by,
        efficiency={
            "profile": eff.profile,
            "scaled_from": eff.scaled_from,
            "weight_tb_s": eff.weight_tb_s,
            "kv_tb_s": eff.kv_tb_s,
            "fp8_tflops_max": eff.fp8_curve[-1][1],
        },
    )
