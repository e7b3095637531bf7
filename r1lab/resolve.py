"""`resolve(exp)`: the validated Experiment turned, once per run, into the resolved deployment every later layer reads.

It holds the GPU record from the one catalog (r1lab.gpus) and the links between GPUs and pods (perf.network), the
instance groups the params serve with (role, count, pods, GPUs, parallelism, P/D mode and the memory plan of one
instance), the engine spec, the expanded load points (the planner's), the price quotes with their dates and the
provider with its capabilities. `save(run_dir)` writes it as `resolved.json` (never overwritten); `load(run_dir)`
reads it back, so a later notebook or stage reads the same deployment instead of deriving it again.

Every figure in it is modelled (the memory plans come from r1lab.perf.memory); nothing here is measured.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from r1lab import gpus
from r1lab.config import Experiment
from r1lab.model import Parallelism
from r1lab.perf import network, planner
from r1lab.perf.memory import DEFAULT_BLOCK_SIZE, MemoryPlan, memory_plan

SCHEMA_VERSION = 1
FILENAME = "resolved.json"


class ResolvedError(RuntimeError):
    pass


class PlacementError(ValueError):
    """The params' workers cannot be placed on their pods (r1lab.serve renders it as a ServeConfigError)."""


@dataclass(frozen=True)
class Link:
    """A link between GPUs (inside a node) or pods (between nodes), as the performance model times it."""

    name: str
    gb_s: float  # usable GB/s per GPU per direction
    latency_us: float
    description: str


@dataclass(frozen=True)
class GPURecord:
    """The catalog entry of the params' GPU type (datasheet figures; r1lab.gpus)."""

    runpod_id: str
    short: str
    memory_bytes: int
    hbm_tb_s: float
    fp8_tflops: float
    bf16_tflops: float
    nvlink_all_pairs: bool
    instant_cluster: bool
    default_profile: str
    profile_measured: bool


@dataclass(frozen=True)
class Parallel:
    tp: int
    pp: int = 1
    dp: int = 1
    ep: bool = False
    label: str = ""


@dataclass(frozen=True)
class InstanceGroup:
    """Identical serving instances with one role: "engine" (aggregated) or "prefill" / "decode" (Dynamo P/D)."""

    role: str
    count: int  # instances
    gpus_per_instance: int
    parallelism: Parallel
    pd_mode: str | None  # None (aggregated) | "prefill" | "decode"
    pods: tuple[str, ...]  # the params' pod roles this group runs on
    memory: dict[str, Any]  # r1lab.perf.memory.memory_plan(...).as_dict() of one GPU of one instance


@dataclass(frozen=True)
class Worker:
    """Where one engine process of a stage runs: the pod's name in the run (head, worker, worker-1) and its GPUs."""

    pod: str
    gpus: tuple[int, ...]  # CUDA device indices on that pod


@dataclass(frozen=True)
class StageGroup:
    """The engines of one serving stage with one role: "engine" (single/multi: one instance over `workers`' pods),
    "agg" (Dynamo aggregated workers) or "prefill" / "decode" (Dynamo P/D: one instance per worker, TP = its GPUs)."""

    role: str
    pd_mode: str | None  # None | "prefill" | "decode"
    parallelism: Parallel  # of one instance (of the first worker under Dynamo)
    workers: tuple[Worker, ...]


@dataclass(frozen=True)
class EngineSpec:
    engine: str
    kv_cache_dtype: str
    kv_dtype: str  # the memory model's name for it ("auto" for bf16)
    gpu_memory_utilization: float
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int | None
    num_speculative_tokens: int
    block_size: int


@dataclass(frozen=True)
class LoadPoint:
    """One load point as the planner models it (concurrency or rate; lengths; `modelled_as` when approximated)."""

    scenario: str
    isl: int
    osl: int
    isl_range: tuple[int, int] | None
    osl_range: tuple[int, int] | None
    concurrency: int | None
    rate: float | None
    requests: int | None
    modelled_as: str | None


@dataclass(frozen=True)
class Quote:
    gpu_type: str
    usd_per_gpu_hour: float
    date: str
    source: str


@dataclass(frozen=True)
class ProviderCaps:
    """The provider and what it can do for these params."""

    kind: str  # twin | runpod
    data_center: str
    cloud_type: str
    network: str  # between pods: none | global-networking | instant-cluster | infiniband
    bills: bool  # False on the twin: its costs are what the same pods would cost on RunPod
    instant_cluster: bool  # the GPU type is offered as an Instant Cluster
    gpus: bool  # real GPUs (False on the twin: the mocker stands in, timed by the performance model)


@dataclass(frozen=True)
class ResolvedDeployment:
    experiment: str
    gpu_type: str
    gpu: GPURecord
    nodes: int
    gpus_per_node: int
    total_gpus: int
    links: dict[str, Link]  # "intranode", "internode", and "kv_transfer" under P/D
    provider: ProviderCaps
    engine: EngineSpec
    groups: tuple[InstanceGroup, ...]
    load_points: tuple[LoadPoint, ...]
    prices: dict[str, Quote]
    # per serving stage ("single", "multi", "dynamo") its engine groups and where each worker runs; a stage the
    # params' pods cannot hold is in placement_errors instead (the reason)
    stages: dict[str, tuple[StageGroup, ...]] = field(default_factory=dict)
    placement_errors: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    source: str = "modelled"

    def group(self, role: str) -> InstanceGroup:
        for g in self.groups:
            if g.role == role:
                return g
        raise KeyError(
            f"{self.experiment}: no instance group {role!r} (groups: {[g.role for g in self.groups]})"
        )

    @property
    def serving_group(self) -> InstanceGroup:
        """The group that decodes (the "decode" group under P/D, else the one "engine" group)."""
        return next((g for g in self.groups if g.role == "decode"), self.groups[0])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ResolvedDeployment:
        if d.get("schema_version") != SCHEMA_VERSION:
            raise ResolvedError(
                f"resolved deployment schema_version {d.get('schema_version')!r}, this r1lab reads {SCHEMA_VERSION}"
            )

        def rng(v: Any) -> tuple[int, int] | None:
            return (int(v[0]), int(v[1])) if v is not None else None

        return cls(
            experiment=d["experiment"],
            gpu_type=d["gpu_type"],
            gpu=GPURecord(**d["gpu"]),
            nodes=d["nodes"],
            gpus_per_node=d["gpus_per_node"],
            total_gpus=d["total_gpus"],
            links={k: Link(**v) for k, v in d["links"].items()},
            provider=ProviderCaps(**d["provider"]),
            engine=EngineSpec(**d["engine"]),
            groups=tuple(
                InstanceGroup(**{**g, "parallelism": Parallel(**g["parallelism"]), "pods": tuple(g["pods"])})
                for g in d["groups"]
            ),
            load_points=tuple(
                LoadPoint(**{**p, "isl_range": rng(p["isl_range"]), "osl_range": rng(p["osl_range"])})
                for p in d["load_points"]
            ),
            prices={k: Quote(**v) for k, v in d["prices"].items()},
            stages={
                stage: tuple(
                    StageGroup(
                        g["role"],
                        g["pd_mode"],
                        Parallel(**g["parallelism"]),
                        tuple(Worker(w["pod"], tuple(w["gpus"])) for w in g["workers"]),
                    )
                    for g in groups
                )
                for stage, groups in d.get("stages", {}).items()
            },  # fmt: skip
            placement_errors=dict(d.get("placement_errors", {})),
            schema_version=d["schema_version"],
            source=d.get("source", "modelled"),
        )


def _link(link: network.Link) -> Link:
    return Link(link.name, link.gb_s, link.latency_us, link.description)


def engine_spec(exp: Experiment) -> EngineSpec:
    s = exp.serving
    return EngineSpec(
        engine=s.engine,
        kv_cache_dtype=s.kv_cache_dtype,
        kv_dtype=planner._kv_dtype(s),
        gpu_memory_utilization=s.gpu_memory_utilization,
        max_num_seqs=s.max_num_seqs,
        max_num_batched_tokens=s.max_num_batched_tokens,
        max_model_len=s.max_model_len,
        num_speculative_tokens=s.num_speculative_tokens,
        block_size=DEFAULT_BLOCK_SIZE,
    )


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
            placed[stage] = stage_groups(exp, stage)
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
    )


def save(resolved: ResolvedDeployment, run_dir: Path | str) -> Path:
    """Write `resolved.json` into the run directory; one exists already: refused (results are never overwritten)."""
    p = Path(run_dir) / FILENAME
    if p.exists():
        raise ResolvedError(f"{p} exists already: a run is resolved once (start a new run)")
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(resolved.to_json(), encoding="utf-8")
    tmp.replace(p)
    return p


def load(run_dir: Path | str) -> ResolvedDeployment:
    """The resolved deployment a run directory holds (written when the run was created)."""
    p = Path(run_dir) / FILENAME
    if not p.exists():
        raise ResolvedError(f"{p} missing: runs created by this r1lab write it in new_run (r1lab.rundir)")
    return ResolvedDeployment.from_dict(json.loads(p.read_text(encoding="utf-8")))


def for_run(run_dir: Path | str | None, exp: Experiment | None) -> ResolvedDeployment:
    """The run's resolved deployment when its directory holds one (runs older than resolved.json: resolved now)."""
    if run_dir is not None and (Path(run_dir) / FILENAME).exists():
        return load(run_dir)
    if exp is None:
        raise ResolvedError(f"{run_dir}: no {FILENAME} and no params to resolve it from")
    return resolve(exp)
