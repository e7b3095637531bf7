"""The resolved deployment's types, and reading and writing it (`resolved.json` in a run directory).

What `r1lab.resolve.resolve(exp)` builds from the validated Experiment, once per run: the GPU record and links, the
instance groups (with the memory plan of one GPU of one instance), each serving stage's engine groups (with theirs),
the engine spec, the expanded load points, the dated price quotes and the provider. It stands low in the flow (it
imports nothing of r1lab), so every layer reads it, perf included; the function that builds it stands above perf.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from r1lab.model import Parallelism

SCHEMA_VERSION = 1
FILENAME = "resolved.json"


class ResolvedError(RuntimeError):
    pass


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

    def parallelism(self) -> Parallelism:
        return Parallelism(self.tp, self.pp, self.dp, self.ep)


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
    # r1lab.perf.memory.memory_plan(...).as_dict() of one GPU of one instance (filled by resolve(): every reader
    # of the stage's memory reads this one)
    memory: dict[str, Any] = field(default_factory=dict)


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
    enable_chunked_prefill: bool = True


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
    # under P/D: the link the KV caches cross, as the performance model names it (a key of r1lab.perf.network's
    # LINKS or a provider network), and the params' override of its bandwidth (GB/s; None: the link's own)
    kv_network: str | None = None
    kv_transfer_gb_s: float | None = None
    schema_version: int = SCHEMA_VERSION
    source: str = "modelled"

    def group(self, role: str) -> InstanceGroup:
        for g in self.groups:
            if g.role == role:
                return g
        raise KeyError(
            f"{self.experiment}: no instance group {role!r} (groups: {[g.role for g in self.groups]})"
        )

    def stage_group(self, stage: str, role: str | None = None) -> StageGroup:
        """One engine group of a serving stage (`role` None: its first group), memory plan included."""
        if stage not in self.stages:
            why = self.placement_errors.get(stage, f"stages resolved: {sorted(self.stages)}")
            raise KeyError(f"{self.experiment}: serving stage {stage!r} not resolved: {why}")
        for g in self.stages[stage]:
            if role is None or g.role == role:
                return g
        raise KeyError(
            f"{self.experiment}: stage {stage!r} has no group {role!r} (groups: {[g.role for g in self.stages[stage]]})"
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
                        dict(g.get("memory", {})),
                    )
                    for g in groups
                )
                for stage, groups in d.get("stages", {}).items()
            },  # fmt: skip
            placement_errors=dict(d.get("placement_errors", {})),
            kv_network=d.get("kv_network"),
            kv_transfer_gb_s=d.get("kv_transfer_gb_s"),
            schema_version=d["schema_version"],
            source=d.get("source", "modelled"),
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
