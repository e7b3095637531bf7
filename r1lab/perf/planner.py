"""The capacity planner: `plan_experiment(exp) -> Plan` (the `r1lab plan` command is r1lab.plan_cli).

For the params' own topology and the standard alternatives (1 x 8 H100 NVL TP8; 2 x 8 H100 NVL TP8xPP2, P/D
and DP+EP over Global Networking; 2 x 8 H100 SXM Instant Cluster; 1 x 8 H100 SXM; 1 x 8 H200 TP8 and DP+EP) it
gives: fits or not and why, KV tokens, largest concurrency, predicted TTFT/TPOT/throughput at every load point of
the params' scenarios, $/h and $ per million output tokens, the bottleneck with numbers, the known problems of the
original plan (facts.md) with their status, and the serving commands.

JSON schema (`Plan.as_dict()`, schema_version 1; stable: fields are only ever added):
  {"schema_version": 1, "experiment": str, "model_version": str, "source": "modelled",
   "params_topology": <topology id>,
   "prices": {gpu_type: {"usd_per_gpu_hour", "date", "source"}},
   "topologies": [{"id", "label", "gpu", "gpu_type", "nodes", "gpus_per_node", "gpus", "parallelism",
                   "network", "disaggregated", "engine", "kv_dtype", "is_params", "fits", "reason",
                   "memory": memory_plan(...).as_dict(), "kv_tokens", "max_concurrency", "usd_per_hour", "price",
                   "bottleneck": {"component", "detail", ...},
                   "points": [{"scenario", "isl", "osl", "concurrency", "rate", "ttft_ms": {mean,p50,p90,p99},
                               "tpot_ms": {...}, "itl_ms": {...}, "e2e_ms": {...}, "output_tok_s",
                               "tok_s_per_gpu", "tok_s_per_user", "usd_per_mtok_out", "meets_slo",
                               "preemptions", "kv_transfer_ms"}]}],
   "problems": [{"id", "severity": "error"|"warning"|"info", "status": "present"|"avoided", "title",
                 "detail", "fix"}],
   "commands": {"source": "r1lab.serve.commands" | "not rendered", "lines": [str], ...},
   "summary": [str]}
Latencies in ms, throughput in output tokens/s, money in USD. Every number is modelled, never measured.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from r1lab import gpus
from r1lab.loadshapes import shape_of
from r1lab.model import Parallelism
from r1lab.perf import hardware, network
from r1lab.perf.memory import DEFAULT_BLOCK_SIZE
from r1lab.perf.predict import MODEL_VERSION, Disaggregation, _efficiency, predict
from r1lab.resolved import EngineSpec, LoadPoint, ResolvedDeployment

SCHEMA_VERSION = 1
# The catalog's dated fallbacks (r1lab.gpus, secure cloud); params and live prices win.
FALLBACK_PRICES = {
    gpu_id: {"usd_per_gpu_hour": p.secure, "date": p.date, "source": p.source}
    for gpu_id, p in gpus.fallback_prices().items()
}


@dataclass(frozen=True)
class Topology:
    id: str
    gpu_type: str
    nodes: int
    gpus_per_node: int
    par: Parallelism
    network: str = "none"
    disagg: Disaggregation | None = None

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    def label(self) -> str:
        g = hardware.gpu(self.gpu_type).short
        how = f"P/D {self.disagg.prefill.label()} -> {self.par.label()}" if self.disagg else self.par.label()
        net = f" over {self.network}" if self.nodes > 1 else ""
        return f"{self.nodes} x {self.gpus_per_node} {g}, {how}{net}"


STANDARD: list[Topology] = [
    Topology("1x8-h100nvl-tp8", "NVIDIA H100 NVL", 1, 8, Parallelism(8)),
    Topology("2x8-h100nvl-tp8pp2-gn", "NVIDIA H100 NVL", 2, 8, Parallelism(8, 2), "global-networking"),
    Topology(
        "2x8-h100nvl-pd-gn",
        "NVIDIA H100 NVL",
        2,
        8,
        Parallelism(8),
        "global-networking",
        Disaggregation(Parallelism(8), 1, 1, "global-networking"),
    ),
    Topology(
        "2x8-h100nvl-dp2ep-gn", "NVIDIA H100 NVL", 2, 8, Parallelism(8, 1, 2, True), "global-networking"
    ),
    Topology("1x8-h100sxm-tp8", "NVIDIA H100 80GB HBM3", 1, 8, Parallelism(8)),
    Topology("2x8-h100sxm-tp8pp2-ic", "NVIDIA H100 80GB HBM3", 2, 8, Parallelism(8, 2), "instant-cluster"),
    Topology("1x8-h200-tp8", "NVIDIA H200", 1, 8, Parallelism(8)),
    Topology("1x8-h200-dp8ep", "NVIDIA H200", 1, 8, Parallelism(1, 1, 8, True)),
]


@dataclass
class Plan:
    experiment: str
    params_topology: str
    prices: dict[str, Any]
    topologies: list[dict[str, Any]]
    problems: list[dict[str, Any]]
    commands: dict[str, Any]
    summary: list[str]
    schema_version: int = SCHEMA_VERSION
    model_version: str = MODEL_VERSION
    source: str = "modelled"
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return _clean(d)

    def topology(self, tid: str) -> dict[str, Any]:
        return next(t for t in self.topologies if t["id"] == tid)


def _clean(obj: Any) -> Any:
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def params_topology(exp: Any) -> Topology:
    """The topology the params describe (P/D when Dynamo disaggregates: one instance per role's pods)."""
    s, d = exp.serving, exp.dynamo
    pods = exp.serving_pods
    gpu_type, gpn, nodes = exp.gpu_type, exp.gpus_per_node, exp.nodes
    net = exp.provider.network if nodes > 1 else "none"
    if d.enabled and d.disaggregated:
        gpus_per_instance = max(1, exp.total_gpus // max(1, d.prefill_workers + d.decode_workers))
        tp = min(s.tensor_parallel, gpus_per_instance)
        inst = Parallelism(tp, max(1, gpus_per_instance // tp))
        link = "global-networking" if net == "global-networking" else (net if nodes > 1 else "nvswitch-nvl4")
        dis = Disaggregation(inst, d.prefill_workers, d.decode_workers, link, d.kv_transfer_gbps)
        return Topology("params", gpu_type, nodes, gpn, inst, net, dis)
    par = Parallelism(s.tensor_parallel, s.pipeline_parallel, s.data_parallel, s.expert_parallel)
    del pods
    return Topology("params", gpu_type, nodes, gpn, par, net)


def resolved_topology(r: ResolvedDeployment) -> Topology:
    """The params' topology as the resolved deployment holds it: its instance groups (one "engine" group, or
    "prefill" feeding "decode" under P/D over the resolved KV link)."""
    roles = {g.role: g for g in r.groups}
    net = r.provider.network
    if "decode" in roles and "prefill" in roles:
        pre, dec = roles["prefill"], roles["decode"]
        dis = Disaggregation(pre.parallelism.parallelism(), pre.count, dec.count, r.kv_network or net,
                             r.kv_transfer_gb_s)  # fmt: skip
        return Topology(
            "params", r.gpu_type, r.nodes, r.gpus_per_node, dec.parallelism.parallelism(), net, dis
        )
    return Topology(
        "params", r.gpu_type, r.nodes, r.gpus_per_node, r.group("engine").parallelism.parallelism(), net
    )


def engine_spec(exp: Any) -> EngineSpec:
    """The engine settings the params serve with (the resolved deployment's engine spec)."""
    s = exp.serving
    return EngineSpec(
        engine=s.engine,
        kv_cache_dtype=s.kv_cache_dtype,
        kv_dtype=_kv_dtype(s),
        gpu_memory_utilization=s.gpu_memory_utilization,
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens,
        max_model_len=s.max_model_len,
        num_speculative_tokens=s.num_speculative_tokens,
        block_size=DEFAULT_BLOCK_SIZE,
        enable_chunked_prefill=s.enable_chunked_prefill,
    )


def point_dict(p: LoadPoint) -> dict[str, Any]:
    """A resolved load point in the planner's form (as `_points` gives it)."""
    return dict(scenario=p.scenario, isl=p.isl, osl=p.osl, isl_r=p.isl_range, osl_r=p.osl_range,
                conc=p.concurrency, rate=p.rate, n=p.requests, modelled_as=p.modelled_as)  # fmt: skip


def quotes(r: ResolvedDeployment) -> dict[str, dict[str, Any]]:
    """The resolved deployment's dated price quotes in the planner's form."""
    return {k: {"usd_per_gpu_hour": q.usd_per_gpu_hour, "date": q.date, "source": q.source}
            for k, q in r.prices.items()}  # fmt: skip


def _price(gpu_type: str, exp: Any, prices: dict[str, Any] | None) -> dict[str, Any] | None:
    if prices and gpu_type in prices:
        p = prices[gpu_type]
        return (
            p if isinstance(p, dict) else {"usd_per_gpu_hour": float(p), "date": "live", "source": "catalog"}
        )
    cp = getattr(getattr(exp, "cost", None), "prices", {}) or {}
    if gpu_type in cp:
        p = cp[gpu_type]
        return {
            "usd_per_gpu_hour": p.usd_per_gpu_hour,
            "date": p.date,
            "source": p.source or "params cost.prices",
        }
    return FALLBACK_PRICES.get(gpu_type)


def _length(v: Any) -> tuple[int, tuple[int, int] | None]:
    if isinstance(v, int):
        return v, None
    if v.kind == "fixed":
        return v.value, None
    if v.kind == "uniform":
        return (v.min + v.max) // 2, (v.min, v.max)
    lo, hi = max(1, int(v.mean - 2 * (v.std or 0))), int(v.mean + 2 * (v.std or 0))
    return v.mean, (lo, max(lo, hi))


def _trace_load(sc: Any) -> tuple[int, int, float, int] | None:
    """(mean input, mean output, mean rate/s, requests) of a trace scenario's file; None when it cannot be read."""
    try:
        rows = [json.loads(x) for x in sc.trace.path().read_text().splitlines() if x.strip()]
        cap = sc.trace.max_total_tokens
        rows = [r for r in rows if cap is None or r["input_length"] + r["output_length"] <= cap]
        rows = rows[: sc.trace.max_requests] if sc.trace.max_requests else rows
        span = (rows[-1]["timestamp"] - rows[0]["timestamp"]) / 1000.0 * sc.trace.time_scale
        n = len(rows)
        isl = round(sum(r["input_length"] for r in rows) / n)
        osl = round(sum(r["output_length"] for r in rows) / n)
    except (OSError, ValueError, KeyError, TypeError, IndexError, ZeroDivisionError):
        return None
    return isl, osl, ((n - 1) / span if span > 0 else float(n)), n


def _points(exp: Any) -> list[dict[str, Any]]:
    """The load points the planner models. Workloads it has no model for are stated as what they are modelled
    as (`modelled_as`): shared-prefix and multi-turn as their mean input at the same concurrency with no
    prefix-cache reuse (an upper bound on prefill work); a trace as Poisson at its mean rate and mean lengths."""
    pts = []
    for sc in exp.load.scenarios:
        isl, isl_r = _length(sc.input_tokens)
        osl, osl_r = _length(sc.output_tokens)
        loads: list[tuple[int | None, float | None]]
        loads = shape_of(sc).loads(sc)  # the same points the bench runs (r1lab.loadshapes)
        n, how = sc.requests_per_point, None
        wl = getattr(sc, "workload", "synthetic")
        if sc.shape == "trace":
            tl = _trace_load(sc)
            if tl is None:
                continue  # an unreadable trace is reported where it is run (bench.traces names file and line)
            isl, osl, rate, n = tl
            isl_r = osl_r = None
            loads = [(sc.max_concurrency, rate)]
            how = f"poisson at the trace's mean rate {rate:.3g}/s, mean lengths, no prefix-cache reuse"
        elif wl == "shared-prefix":
            isl, isl_r = sc.shared_prefix.prefix_tokens + sc.shared_prefix.suffix_tokens, None
            how = "its full input (prefix + suffix) at this concurrency, no prefix-cache reuse"
        elif wl == "multi-turn":
            mt = sc.multi_turn
            isl = round(mt.user_tokens * (mt.turns + 1) / 2 + osl * (mt.turns - 1) / 2)
            isl_r, n = (
                (mt.user_tokens, mt.turns * mt.user_tokens + (mt.turns - 1) * osl),
                mt.conversations * mt.turns,
            )
            how = "its mean turn input (history grows per turn) at this concurrency, no prefix-cache reuse"
        for conc, point_rate in loads:
            pts.append(dict(scenario=sc.name, isl=isl, osl=osl, isl_r=isl_r, osl_r=osl_r, conc=conc, rate=point_rate,
                            n=n, modelled_as=how))  # fmt: skip
    if not pts:
        pts.append(
            dict(scenario="default", isl=1024, osl=1024, isl_r=None, osl_r=None, conc=16, rate=None, n=None)
        )
    return pts


def _kv_dtype(s: Any) -> str:
    return s.kv_cache_dtype if s.kv_cache_dtype != "bfloat16" else "auto"


def _profile_label(gpu_type: str) -> dict[str, Any]:
    """Which hardware profile the figures come from; `scaled_from`: measured on that GPU, scaled by datasheet."""
    eff = _efficiency(hardware.gpu(gpu_type).short, None)
    return {
        "name": eff.profile,
        "scaled_from": eff.scaled_from,
        "datasheet_derived": eff.scaled_from is not None,
    }


def evaluate_topology(
    topo: Topology,
    exp: Any,
    prices: dict[str, Any] | None = None,
    method: str = "simulate",
    memo: dict[tuple[Any, ...], Any] | None = None,
    engine: EngineSpec | None = None,
    load_points: list[dict[str, Any]] | None = None,
    memory: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Memory, load points, cost and bottleneck of one topology under the params' serving settings.

    `engine`, `load_points`: the resolved deployment's engine spec and load points (default: derived from `exp`);
    `memory`: the memory plan the resolved deployment holds for this topology's serving instance (the params'
    own), reported as is (default: the plan predict() makes at the first point).

    `method`: predict()'s ("simulate", or "auto": the analytic steady state where it applies, r1lab.perf.steady).
    `memo`: predictions already made in this plan, by their arguments (the params' topology is often one of the
    standard ones: the same deployment at the same load point is predicted once)."""
    s = engine or engine_spec(exp)
    eng = "vllm" if s.engine in ("vllm", "mocker") else s.engine
    price = _price(topo.gpu_type, exp, prices)
    usd_h = price["usd_per_gpu_hour"] * topo.gpus if price else None
    slo = exp.load.slo
    points: list[dict[str, Any]] = []
    fits, reason = True, ""
    memory = dict(memory or {})
    bottleneck: dict[str, Any] = {}
    for pt in _points(exp) if load_points is None else load_points:
        args = (topo.gpu_type, topo.gpus, topo.par, eng, pt["isl"], pt["osl"], pt["conc"])
        kwargs = dict(
            rate=pt["rate"],
            kv_dtype=s.kv_dtype,
            gpu_memory_utilization=s.gpu_memory_utilization,
            max_num_seqs=s.max_num_seqs,
            max_num_batched_tokens=s.max_num_batched_tokens,
            enable_chunked_prefill=s.enable_chunked_prefill,
            num_speculative_tokens=s.num_speculative_tokens,
            max_model_len=s.max_model_len,
            gpus_per_node=topo.gpus_per_node,
            network_name=topo.network,
            disaggregation=topo.disagg,
            num_requests=pt["n"],
            isl_range=pt["isl_r"],
            osl_range=pt["osl_r"],
            seed=exp.seed,
            method=method,
        )
        key = (args, tuple(sorted(kwargs.items())))
        p = copy.deepcopy(memo[key]) if memo is not None and key in memo else None
        if p is None:
            p = predict(*args, **kwargs)
            if memo is not None:
                memo[key] = p
        memory = memory or p.memory
        if not p.fits:
            fits, reason, bottleneck = False, p.reason, p.bottleneck
            break
        if not bottleneck or (pt["conc"] or 0) >= (bottleneck.get("_conc") or 0):
            bottleneck = {**p.bottleneck, "_conc": pt["conc"] or 0, "at": f"{pt['scenario']} c={pt['conc']}"}
        usd_mtok = usd_h / (p.output_tok_s * 3600) * 1e6 if usd_h and p.output_tok_s > 0 else None
        meets = (slo.ttft_ms is None or p.ttft_ms["p99"] <= slo.ttft_ms) and (
            slo.tpot_ms is None or p.tpot_ms["p99"] <= slo.tpot_ms
        )
        points.append(
            dict(
                scenario=pt["scenario"],
                isl=pt["isl"],
                osl=pt["osl"],
                concurrency=pt["conc"],
                rate=pt["rate"],
                ttft_ms=p.ttft_ms,
                tpot_ms=p.tpot_ms,
                itl_ms=p.itl_ms,
                e2e_ms=p.e2e_ms,
                output_tok_s=p.output_tok_s,
                tok_s_per_gpu=p.tok_s_per_gpu,
                tok_s_per_user=p.tok_s_per_user,
                usd_per_mtok_out=usd_mtok,
                meets_slo=bool(meets),  # numpy bool when the step model was cached from the mocker tables
                preemptions=p.preemptions,
                kv_transfer_ms=p.kv_transfer_ms,
                **({"modelled_as": pt["modelled_as"], "requests": pt["n"]} if pt.get("modelled_as") else {}),
            )
        )
    bottleneck.pop("_conc", None)
    return dict(
        id=topo.id,
        label=topo.label(),
        gpu=hardware.gpu(topo.gpu_type).short,
        gpu_type=topo.gpu_type,
        nodes=topo.nodes,
        gpus_per_node=topo.gpus_per_node,
        gpus=topo.gpus,
        parallelism=(
            f"P/D {topo.disagg.prefill.label()} x{topo.disagg.prefill_instances} -> "
            f"{topo.par.label()} x{topo.disagg.decode_instances}"
        )
        if topo.disagg
        else topo.par.label(),
        network=topo.network,
        disaggregated=topo.disagg is not None,
        engine=eng,
        kv_dtype=s.kv_cache_dtype,
        is_params=topo.id == "params",
        fits=fits,
        reason=reason,
        memory=memory,
        kv_tokens=memory.get("kv_tokens"),
        max_concurrency=memory.get("max_concurrency"),
        usd_per_hour=usd_h,
        price=price,
        bottleneck=bottleneck,
        profile=_profile_label(topo.gpu_type),
        points=points,
    )


def _problems(exp: Any, topos: list[dict[str, Any]], params: Topology) -> list[dict[str, Any]]:
    """The original plan's known problems (facts.md), each with its status under these params, plus findings."""
    s, d = exp.serving, exp.dynamo
    out: list[dict[str, Any]] = []

    def add(pid: str, severity: str, present: bool, title: str, detail: str, fix: str) -> None:
        out.append(
            dict(
                id=pid,
                severity=severity if present else "info",
                status="present" if present else "avoided",
                title=title,
                detail=detail,
                fix=fix,
            )
        )

    inc = exp.model.include
    add(
        "download-patterns",
        "error",
        not any(p.endswith(".safetensors") for p in inc),
        "The plan's download matches no weight file",
        '`--include "*.fp8"` matches nothing in deepseek-ai/DeepSeek-R1 (its FP8 weights are 163 '
        "model-*.safetensors shards) and the second download excludes *.safetensors; `huggingface-cli` is now `hf`. "
        f"These params include {inc[:3]}...",
        "hf download deepseek-ai/DeepSeek-R1 --include '*.safetensors' '*.json' ... (r1lab.hub)",
    )
    add(
        "api-server",
        "error",
        False,
        "`python -m vllm.entrypoints.api_server` is gone",
        "It was a demo server serving only /generate; r1lab renders `vllm serve MODEL` (OpenAI-compatible).",
        "vllm serve /workspace/models/DeepSeek-R1 ...",
    )
    add(
        "dtype-fp8",
        "error",
        any("float8" in a for a in s.extra_args),
        "`--dtype float8_e4m3fn` is rejected by vLLM",
        "FP8 comes from config.json's quantization_config by itself (r1lab.config rejects the flag).",
        "drop --dtype",
    )
    tp16 = s.tensor_parallel > exp.gpus_per_node and exp.nodes > 1
    add(
        "tp16-across-nodes",
        "warning",
        tp16,
        "TP16 across two pods",
        f"tensor_parallel={s.tensor_parallel} with {exp.gpus_per_node} GPUs per pod puts 2 all-reduces per layer "
        "(122 per token) on the inter-pod link.",
        "tensor_parallel = GPUs per pod, pipeline_parallel = pods (or DP+EP)",
    )
    add(
        "dynamo-plain-vllm",
        "error",
        False,
        "Dynamo does not forward to a plain vLLM endpoint",
        "Its frontend routes to Dynamo workers (`python -m dynamo.vllm`) registered in its discovery; "
        f"these params {'enable' if d.enabled else 'do not enable'} Dynamo, and r1lab launches dynamo.vllm workers.",
        "python -m dynamo.frontend + python -m dynamo.vllm workers",
    )
    add(
        "ray-public",
        "error",
        False,
        "Ray dashboard/job API on 0.0.0.0 of a pod with public ports",
        "Anyone could submit jobs; r1lab keeps Ray on the private network and reaches it through SSH forwarding.",
        "ray start --dashboard-host 127.0.0.1; SSH port forward",
    )
    # topology findings
    me = next(t for t in topos if t["is_params"])
    if not me["fits"]:
        add(
            "does-not-fit",
            "error",
            True,
            f"{me['label']} cannot serve R1",
            me["reason"],
            "more memory per GPU (H200) or more GPUs",
        )
    if me["fits"] and me["nodes"] > 1 and me["network"] == "global-networking":
        b = dict(me["bottleneck"])
        if b.get("component") == "kv_transfer" and b.get("ms_per_request"):
            osl = me["points"][0]["osl"] if me["points"] else 1024
            single = next(
                (t for t in topos if t["id"] == "1x8-h100nvl-tp8" and t["fits"] and t["points"]), None
            )
            alone = (
                f"; one 8 x H100 NVL pod alone is predicted at {max(p['output_tok_s'] for p in single['points']):,.0f}"
                if single
                else ""
            )
            b["detail"] = (
                f"{b['detail']}: at most {1000 / b['ms_per_request']:.2f} requests/s, about "
                f"{osl * 1000 / b['ms_per_request']:,.0f} output tok/s at {osl} output tokens for all "
                f"{me['gpus']} GPUs{alone} tok/s"
            )
        add(
            "inter-pod-link",
            "error",
            True,
            "The inter-pod link (Global Networking, 100 Mbps) is the bottleneck",
            b.get("detail", str(b)),
            "one pod (8 x H200 fits R1 with room), or an Instant Cluster (1.6-3.2 Tbps) for two nodes",
        )
    if me["fits"] and hardware.gpu(me["gpu_type"]).short == "H100 NVL" and params.par.tp > 2:
        add(
            "nvl-pcie-allreduce",
            "warning",
            True,
            "TP8 on H100 NVL all-reduces over PCIe",
            "H100 NVL cards are NVLink-bridged in pairs only; vLLM turns its custom all-reduce off, so NCCL rings "
            "cross PCIe Gen5 (~64 GB/s each way) for 2 all-reduces per layer.",
            "accept it, or H100 SXM/H200 with NVSwitch",
        )
    if me["fits"] and me["max_concurrency"] is not None:
        pts = me["points"]
        top = max((p["concurrency"] or 0) for p in pts) if pts else 0
        if me["max_concurrency"] < top:
            add(
                "kv-capacity",
                "warning",
                True,
                "KV cache too small for the highest load point",
                f"{me['kv_tokens']:,} KV tokens per replica hold {me['max_concurrency']} sequences of "
                f"{me['memory'].get('seq_len')} tokens; the sweep goes to {top}: requests queue or get preempted.",
                "kv_cache_dtype: fp8, higher gpu_memory_utilization, or more memory",
            )
    if me["usd_per_hour"]:
        need = me["usd_per_hour"] * exp.provider.budget_hours
        if need > exp.provider.budget_usd:
            add(
                "budget",
                "warning",
                True,
                "Budget ends the run early",
                f"${me['usd_per_hour']:.2f}/h x {exp.provider.budget_hours} h = ${need:.0f} > budget "
                f"${exp.provider.budget_usd:.0f}",
                "raise budget_usd or shorten budget_hours",
            )
    return out


NOT_RENDERED = {"source": "not rendered", "lines": [], "note": "the serving commands are rendered above perf: "
                "r1lab.stages.plan.make_plan(exp) carries them (r1lab.serve.plan_commands)"}  # fmt: skip


def plan_experiment(
    exp: Any,
    prices: dict[str, Any] | None = None,
    include_standard: bool = True,
    method: str = "simulate",
    commands: dict[str, Any] | None = None,
    resolved: ResolvedDeployment | None = None,
) -> Plan:
    """Plan one Experiment (r1lab.config). `prices`: live {gpu_type: usd_per_gpu_hour or price dict}.
    `method`: "simulate" (every point through the event simulation) or "auto" (the analytic closed-loop steady
    state where it applies, r1lab.perf.steady: faster, within the tolerance that module states).
    `commands`: the serving commands per stage as r1lab.serve.plan_commands renders them (serve stands above
    perf, so the caller passes them in; r1lab.stages.plan.make_plan does).
    `resolved`: the run's resolved deployment (r1lab.resolve): the params' topology, its memory plan, the engine
    spec, the load points and the price quotes are read from it (live `prices` are then ignored: it was priced
    when resolved), and the standard alternatives are planned under the same engine spec and points; None: all
    derived from `exp` here."""
    if resolved is not None:
        ptopo, engine = resolved_topology(resolved), resolved.engine
        points: list[dict[str, Any]] | None = [point_dict(p) for p in resolved.load_points]
        prices, memory = quotes(resolved), resolved.serving_group.memory
    else:
        # the load points once per plan (a trace scenario reads its file to find them)
        ptopo, engine, points, memory = params_topology(exp), engine_spec(exp), _points(exp), None
    topos = [ptopo] + (STANDARD if include_standard else [])
    from r1lab.progress import track  # noqa: PLC0415

    memo: dict[tuple[Any, ...], Any] = {}
    results = [
        evaluate_topology(t, exp, prices, method, memo, engine, points, memory if t is ptopo else None)
        for t in track(topos, "planning topologies", len(topos))
    ]
    problems = _problems(exp, results, ptopo)
    summary = []
    for r in results:
        if not r["fits"]:
            summary.append(f"{r['label']}: does not fit: {r['reason']}")
            continue
        best = max(r["points"], key=lambda p: p["output_tok_s"])
        cost = (
            f", ${best['usd_per_mtok_out']:.2f}/M output tokens" if best and best["usd_per_mtok_out"] else ""
        )
        summary.append(
            f"{r['label']}: {r['kv_tokens']:,} KV tokens/replica; best {best['output_tok_s']:.0f} tok/s "
            f"({best['tok_s_per_gpu']:.0f}/GPU) at c={best['concurrency']}, TPOT {best['tpot_ms']['mean']:.0f} ms"
            f"{cost}; bottleneck {r['bottleneck'].get('component')}"
        )
    price_table = {g: _price(g, exp, prices) for g in sorted({t.gpu_type for t in topos})}
    return Plan(
        experiment=exp.name,
        params_topology="params",
        prices=price_table,
        topologies=results,
        problems=problems,
        commands=commands if commands is not None else dict(NOT_RENDERED),
        summary=summary,
    )


def render_text(plan: Plan, exp: Any = None) -> str:
    """The plan as text for a person (r1lab.perf.plan_text): recommendation, budget, each topology once."""
    from r1lab.perf.plan_text import render_text as _render  # noqa: PLC0415

    return _render(plan, exp)


__all__ = [
    "Plan",
    "Topology",
    "STANDARD",
    "plan_experiment",
    "evaluate_topology",
    "resolved_topology",
    "engine_spec",
    "network",
]
