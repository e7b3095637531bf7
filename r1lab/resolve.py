"""`resolve(exp)`: the validated Experiment turned, once per run, into the resolved deployment every later layer reads.

It holds the GPU record from the one catalog (r1lab.gpus) and the links between GPUs and pods (perf.network), the
instance groups the params serve with (role, count, pods, GPUs, parallelism, P/D mode and the memory plan of one
instance), the engine spec, the expanded load points (the planner's), the price quotes with their dates and the
provider with its capabilities. Its types, `save(resolved, run_dir)` (`resolved.json`, never overwritten) and
`load(run_dir)` live in r1lab.resolved, low in the flow, so perf reads it too; a later notebook or stage reads the
same deployment instead of deriving it again. Each serving stage's engine groups carry their memory plan too:
one plan per group, the one every reader takes.

Every figure in it is modelled (the memory plans come from r1lab.perf.memory); nothing here is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from r1lab import gpus
from r1lab.config import Experiment
from r1lab.model import Parallelism
from r1lab.perf import network, planner
from r1lab.perf.memory import MemoryPlan, memory_plan
from r1lab.resolved import (
    FILENAME,
    SCHEMA_VERSION,
    EngineSpec,
    GPURecord,
    InstanceGroup,
    Link,
    LoadPoint,
    Parallel,
    ProviderCaps,
    Quote,
    ResolvedDeployment,
    ResolvedError,
    StageGroup,
    Worker,
    load,
    save,
)

__all__ = [
    "FILENAME", "SCHEMA_VERSION", "EngineSpec", "GPURecord", "InstanceGroup", "Link", "LoadPoint", "Parallel",
    "PlacementError", "ProviderCaps", "Quote", "ResolvedDeployment", "ResolvedError", "StageGroup", "Worker",
    "engine_spec", "for_run", "instance_memory", "load", "resolve", "save", "serving_stages", "stage_groups",
    "with_stage_memory",
]  # fmt: skip


class PlacementError(ValueError):
    """The params' workers cannot be placed on their pods (r1lab.serve renders it as a ServeConfigError)."""


def _link(link: network.Link) -> Link:
    return Link(link.name, link.gb_s, link.latency_us, link.description)


engine_spec = planner.engine_spec  # the engine settings the params serve with (one definition, in perf)


def instance_memory(
    gpu_type: str, par: Any, engine: EngineSpec, first: LoadPoint | None = None, **override: Any
) -> MemoryPlan:
    """The memory plan of one GPU of one instance of parallelism `par` under the engine spec (at the first load
    point's lengths): the one function through which every reader of `gpu_memory_utilization` models memory.
    `override`: engine fields a caller's instance sets otherwise (a stage's max_model_len)."""
    e = replace(engine, **override) if override else engine
    return memory_plan(
        gpu_type, par, e.kv_dtype, e.gpu_memory_utilization, e.max_num_batched_tokens, e.max_num_seqs,
        e.block_size, first.isl if first else None, first.osl if first else None, e.max_model_len,
        e.num_speculative_tokens,
    )  # fmt: skip


def _parallel(par: Any) -> Parallel:
    return Parallel(par.tp, par.pp, par.dp, par.ep, par.label())


def serving_stages(exp: Experiment) -> list[str]:
    """The serving stages this experiment runs: single always; multi with several nodes; dynamo when enabled."""
    out = ["single"]
    if exp.nodes > 1:
        out.append("multi")
    if exp.dynamo.enabled:
        out.append("dynamo")
    return out


@dataclass(frozen=True)
class _Pod:
    name: str
    role: str
    gpus: int


def _serving_pods(exp: Experiment) -> list[_Pod]:
    """The serving pods in rank order (head first), named as in the run: the role, or role-i in a group."""
    return [
        _Pod(pod.role if pod.count == 1 else f"{pod.role}-{i}", pod.role, pod.gpu_count)
        for pod in exp.serving_pods
        for i in range(pod.count)
    ]


def stage_groups(exp: Experiment, stage: str) -> tuple[StageGroup, ...]:
    """The engine groups of one serving stage and where each worker runs (PlacementError when the params' pods
    cannot hold them). single: TP over the head's GPUs (or the params' TP x DP when it fills them); multi: the
    params' parallelism over every serving pod; dynamo: the params' workers on their roles' pods, each worker TP
    over its share of its pod's GPUs."""
    s, pods = exp.serving, _serving_pods(exp)
    head = pods[0]
    if stage == "single":
        n = head.gpus
        fills = s.data_parallel > 1 and s.data_parallel <= n and s.tensor_parallel * s.data_parallel == n
        par = Parallelism(s.tensor_parallel, 1, s.data_parallel, s.expert_parallel) if fills else (
            Parallelism(n, 1, 1, s.expert_parallel))  # fmt: skip
        return (StageGroup("engine", None, _parallel(par), (Worker(head.name, tuple(range(n))),)),)
    if stage == "multi":
        par = Parallelism(s.tensor_parallel, s.pipeline_parallel, s.data_parallel, s.expert_parallel)
        every = tuple(Worker(p.name, tuple(range(p.gpus))) for p in pods)
        return (StageGroup("engine", None, _parallel(par), every),)
    if stage != "dynamo":
        raise PlacementError(f"unknown stage {stage!r}: expected one of single, multi, dynamo")
    d = exp.dynamo
    by_role: dict[str, list[_Pod]] = {}
    for p in pods:
        by_role.setdefault(p.role, []).append(p)

    def place(role: str | None, count: int, default: list[_Pod]) -> list[_Pod]:
        pool = by_role.get(role, []) if role else default
        return [pool[i % len(pool)] for i in range(count)]

    if d.disaggregated:
        placed = [("prefill", w) for w in place(d.prefill_role, d.prefill_workers, pods[:1])]
        placed += [("decode", w) for w in place(d.decode_role, d.decode_workers, pods[-1:])]
    else:
        placed = [("agg", w) for w in place(d.decode_role, d.decode_workers, pods)]
    per_pod: dict[str, int] = {}
    for _, p in placed:
        per_pod[p.name] = per_pod.get(p.name, 0) + 1
    gpus_of = {p.name: p.gpus for p in pods}
    for name, k in per_pod.items():
        if gpus_of[name] % k:
            raise PlacementError(
                f"dynamo: {k} workers on pod {name!r} cannot split its {gpus_of[name]} GPUs evenly: "
                "change dynamo.prefill_workers/decode_workers or the roles"
            )
    local: dict[str, int] = {}
    workers: dict[str, list[Worker]] = {}
    for mode, p in placed:
        j = local.get(p.name, 0)
        local[p.name] = j + 1
        tp = p.gpus // per_pod[p.name]
        workers.setdefault(mode, []).append(Worker(p.name, tuple(range(j * tp, (j + 1) * tp))))
    return tuple(
        StageGroup(mode, None if mode == "agg" else mode, _parallel(Parallelism(len(ws[0].gpus))), tuple(ws))
        for mode, ws in workers.items()
    )


def _points(exp: Experiment) -> tuple[LoadPoint, ...]:
    return tuple(
        LoadPoint(
            p["scenario"],
            p["isl"],
            p["osl"],
            p["isl_r"],
            p["osl_r"],
            p["conc"],
            p["rate"],
            p.get("n"),
            p.get("modelled_as"),
        )  # fmt: skip
        for p in planner._points(exp)
    )


def resolve(exp: Experiment, prices: dict[str, Any] | None = None) -> ResolvedDeployment:
    """The resolved deployment of a validated Experiment. `prices`: live {gpu_type: usd_per_gpu_hour} if known."""
    topo = planner.params_topology(exp)
    engine = engine_spec(exp)
    points = _points(exp)
    first = points[0] if points else None
    d = exp.dynamo
    serving_roles = tuple(p.role for p in exp.serving_pods)
    groups: list[InstanceGroup] = []
    if topo.disagg is not None:
        for role, par, count, pods in (
            ("prefill", topo.disagg.prefill, topo.disagg.prefill_instances, d.prefill_role),
            ("decode", topo.par, topo.disagg.decode_instances, d.decode_role),
        ):
            groups.append(InstanceGroup(role, count, par.gpus, _parallel(par), role,
                                        (pods,) if pods else serving_roles,
                                        instance_memory(topo.gpu_type, par, engine, first).as_dict()))  # fmt: skip
    else:
        groups.append(InstanceGroup("engine", 1, topo.par.gpus, _parallel(topo.par), None, serving_roles,
                                    instance_memory(topo.gpu_type, topo.par, engine, first).as_dict()))  # fmt: skip
    g = gpus.gpu(topo.gpu_type)
    links = {
        "intranode": _link(network.LINKS[g.intranode]),
        "internode": _link(network.internode_link(topo.network)),
    }
    if topo.disagg is not None:
        kv = network.LINKS.get(topo.disagg.network) or network.internode_link(topo.disagg.network)
        links["kv_transfer"] = _link(kv)
    quotes: dict[str, Quote] = {}
    for gpu_type in sorted({topo.gpu_type, *(t.gpu_type for t in planner.STANDARD)}):
        q = planner._price(gpu_type, exp, prices)
        if q:
            quotes[gpu_type] = Quote(gpu_type, float(q["usd_per_gpu_hour"]), str(q["date"]), str(q["source"]))
    placed: dict[str, tuple[StageGroup, ...]] = {}
    unplaced: dict[str, str] = {}
    for stage in serving_stages(exp):
        try:
            placed[stage] = tuple(
                replace(
                    sg,
                    memory=instance_memory(
                        topo.gpu_type, sg.parallelism.parallelism(), engine, first
                    ).as_dict(),
                )
                for sg in stage_groups(exp, stage)
            )
        except PlacementError as exc:
            unplaced[stage] = str(exc)
    pv = exp.provider
    return ResolvedDeployment(
        experiment=exp.name,
        gpu_type=topo.gpu_type,
        gpu=GPURecord(
            g.runpod_id,
            g.short,
            g.memory_bytes,
            g.hbm_tb_s,
            g.fp8_tflops,
            g.bf16_tflops,
            g.nvlink_all_pairs,
            g.instant_cluster,
            g.default_profile,
            g.profile_measured,
        ),  # fmt: skip
        nodes=topo.nodes,
        gpus_per_node=topo.gpus_per_node,
        total_gpus=exp.total_gpus,
        links=links,
        provider=ProviderCaps(
            pv.kind,
            pv.data_center,
            pv.cloud_type,
            topo.network,
            pv.kind == "runpod",
            g.instant_cluster,
            pv.kind == "runpod",
        ),  # fmt: skip
        engine=engine,
        groups=tuple(groups),
        load_points=points,
        prices=quotes,
        stages=placed,
        placement_errors=unplaced,
        kv_network=topo.disagg.network if topo.disagg is not None else None,
        kv_transfer_gb_s=topo.disagg.kv_transfer_gb_s if topo.disagg is not None else None,
    )


def with_stage_memory(r: ResolvedDeployment) -> ResolvedDeployment:
    """`r` with every serving stage group's memory plan: a resolved.json written before stage groups carried
    theirs gets them now, made as resolve() makes them (its engine spec, at its first load point's lengths)."""
    if all(g.memory for groups in r.stages.values() for g in groups):
        return r
    first = r.load_points[0] if r.load_points else None
    stages = {
        stage: tuple(
            g if g.memory else replace(g, memory=instance_memory(r.gpu_type, g.parallelism.parallelism(), r.engine,
                                                                 first).as_dict())
            for g in groups
        )
        for stage, groups in r.stages.items()
    }  # fmt: skip
    return replace(r, stages=stages)


def for_run(run_dir: Path | str | None, exp: Experiment | None) -> ResolvedDeployment:
    """The run's resolved deployment when its directory holds one (runs older than resolved.json: resolved now)."""
    if run_dir is not None and (Path(run_dir) / FILENAME).exists():
        return with_stage_memory(load(run_dir))
    if exp is None:
        raise ResolvedError(f"{run_dir}: no {FILENAME} and no params to resolve it from")
    return resolve(exp)
