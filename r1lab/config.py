"""The Experiment schema: one params file describes one experiment, validated strictly before anything runs.

Every error names the file, the dotted key (and its line), what was expected, what was given, and the fix.
`r1lab validate PARAMS...` prints them and exits 1.
"""

from __future__ import annotations

import difflib
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from r1lab import gpus
from r1lab.loadshapes import shape_of
from r1lab.secrets import looks_like_api_key

# --- errors -----------------------------------------------------------------------------------------------


class ParamsError(Exception):
    """One or more problems in a params file, each naming file, key, expectation and value."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path, self.problems = path, problems
        super().__init__("\n".join(problems))


class _Rule(ValueError):
    """A cross-field rule broken: raised inside validators with the dotted key it is about."""

    def __init__(self, key: str, message: str) -> None:
        self.key, self.message = key, message
        super().__init__(f"{key}: {message}")


# --- building blocks ----------------------------------------------------------------------------------------


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=False)


PositiveInt = Annotated[int, Field(ge=1)]
RUNPOD_DATA_CENTER = re.compile(r"^[A-Z]{2}-[A-Z]{2,4}-\d+$")


class Provider(Strict):
    """Where pods come from: the local twin (default) or RunPod's REST API v2."""

    kind: Literal["twin", "runpod"] = "twin"
    data_center: str = "EU-RO-1"
    cloud_type: Literal["SECURE", "COMMUNITY"] = "SECURE"
    network: Literal["none", "global-networking", "instant-cluster", "infiniband"] = "none"
    budget_usd: float = Field(
        50.0, gt=0, le=100_000, description="Tear everything down when the run's cost reaches this."
    )
    budget_hours: float = Field(4.0, gt=0, le=168, description="Tear everything down after this many hours.")
    pod_deadline_hours: float = Field(
        6.0, gt=0, le=168, description="Pod-side self-stop, if this machine dies (at most a week)."
    )
    heartbeat_timeout_s: int = Field(
        600, ge=0, le=7200,
        description="Pod-side self-stop when this machine sent no heartbeat for this long (0: off).",
    )  # fmt: skip
    ssh_public_key: str | None = Field(
        None, description="Path to a public key; default: a fresh key per run."
    )

    @model_validator(mode="after")
    def _data_center_shape(self) -> Provider:
        if not RUNPOD_DATA_CENTER.match(self.data_center):
            raise _Rule(
                "provider.data_center",
                f"expected a RunPod data-center id like 'EU-RO-1' (upper case), got {self.data_center!r}",
            )
        known = data_centers()
        if self.data_center not in known:
            close = difflib.get_close_matches(self.data_center, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise _Rule(
                "provider.data_center",
                f"RunPod has no data center {self.data_center!r}; {hint}RunPod's ids: {', '.join(known)}",
            )
        if 0 < self.heartbeat_timeout_s < 120:
            raise _Rule(
                "provider.heartbeat_timeout_s",
                f"{self.heartbeat_timeout_s} s is shorter than the pod watchdog can judge (it polls every 30 s, "
                "heartbeats come every 60 s): give at least 120, or 0 to switch the heartbeat check off",
            )
        return self


def data_centers() -> list[str]:
    """RunPod's data-center ids (r1lab/data/runpod/data_centers.txt)."""
    path = Path(__file__).parent / "data" / "runpod" / "data_centers.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


# RunPod's v2 API cannot override an image's ENTRYPOINT, only pass `args`; r1lab's start command (sshd + the
# self-stop watchdog) goes in args, so the image must run its args (RunPod's official images do).
DEFAULT_IMAGE = "runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404"
_ENTRYPOINT_IMAGES = ("vllm/vllm-openai",)


class Pod(Strict):
    """A group of identical pods with one role (head, worker, utility, loadgen...)."""

    role: str = Field(pattern=r"^[a-z][a-z0-9-]{0,20}$")
    gpu_type: str | None = Field(
        None, description="RunPod GPU type id, e.g. 'NVIDIA H100 NVL'; null: CPU pod."
    )
    gpu_count: int = Field(0, ge=0, le=8)
    count: int = Field(1, ge=1, le=64)
    image: str = Field(
        DEFAULT_IMAGE, description="Must run its args as a command (RunPod official images do)."
    )
    setup: list[str] = Field(
        default_factory=list, description="Shell commands run once on each pod, e.g. installs."
    )
    volume_mount: str | None = "/workspace"
    container_disk_gb: int = Field(50, ge=10, le=4096)
    serves: bool = Field(True, description="Whether serving processes run on this pod.")

    @model_validator(mode="after")
    def _gpu_pairs(self) -> Pod:
        if self.gpu_type is None and self.gpu_count:
            raise _Rule("gpu_type", f"gpu_count is {self.gpu_count} but no gpu_type is given")
        if self.gpu_type is not None and not self.gpu_count:
            raise _Rule("gpu_count", f"gpu_type is {self.gpu_type!r} but gpu_count is 0")
        if self.gpu_type is not None:
            _check_gpu_type("gpu_type", self.gpu_type)
        if self.image.split(":")[0] in _ENTRYPOINT_IMAGES:
            raise _Rule(
                "image",
                f"{self.image!r} has a fixed ENTRYPOINT (`vllm serve`) that RunPod's API cannot "
                f"override, so r1lab's start command (sshd, self-stop) would never run: use "
                f'{DEFAULT_IMAGE!r} with `setup: ["pip install vllm==0.33.0 ..."]`',
            )
        from r1lab.pins import setup_conflict

        conflict = setup_conflict(self.setup)
        if conflict:
            raise _Rule("setup", conflict)
        return self


class Volume(Strict):
    """The network volume that holds the weights (lives in one data center)."""

    size_gb: int = Field(1000, ge=10, le=4096, description="RunPod's network volumes: 10 to 4096 GB.")
    mount: str = "/workspace"


class Model(Strict):
    repo_id: str = "deepseek-ai/DeepSeek-R1"
    revision: str = Field("main", description="Pin a commit sha for reproducible runs.")
    path: str = Field("/workspace/models/DeepSeek-R1", description="Where the weights live on the volume.")
    served_name: str = "deepseek-r1"
    include: list[str] = Field(
        default_factory=lambda: [
            "*.safetensors",
            "model.safetensors.index.json",
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "*.py",
            "LICENSE",
            "README.md",
        ]
    )
    exclude: list[str] = Field(default_factory=list)


# Flags r1lab sets from typed params: giving them in extra_args would silently fight the typed value.
_OWNED_FLAGS = {
    "--tensor-parallel-size": "serving.tensor_parallel",
    "-tp": "serving.tensor_parallel",
    "--pipeline-parallel-size": "serving.pipeline_parallel",
    "-pp": "serving.pipeline_parallel",
    "--data-parallel-size": "serving.data_parallel",
    "-dp": "serving.data_parallel",
    "--enable-expert-parallel": "serving.expert_parallel",
    "--kv-cache-dtype": "serving.kv_cache_dtype",
    "--max-model-len": "serving.max_model_len",
    "--gpu-memory-utilization": "serving.gpu_memory_utilization",
    "--max-num-seqs": "serving.max_num_seqs",
    "--max-num-batched-tokens": "serving.max_num_batched_tokens",
    "--served-model-name": "model.served_name",
    "--api-key": "the R1LAB_VLLM_API_KEY environment variable",
    "--distributed-executor-backend": "serving.distributed_backend",
}
# Flags the original plan used that vLLM rejects or that do the wrong thing (facts.md).
_KNOWN_BAD_FLAGS = {
    "--dtype float8_e4m3fn": "vLLM's parser rejects it; FP8 comes from the checkpoint's quantization_config by "
    "itself: remove the flag",
    "--quantization fp8": "redundant for DeepSeek-R1 (natively FP8, detected from config.json): remove it",
}


class Serving(Strict):
    """How the model is served: engine and parallelism."""

    engine: Literal["vllm", "mocker"] = "vllm"
    tensor_parallel: PositiveInt = 8
    pipeline_parallel: PositiveInt = 1
    data_parallel: PositiveInt = 1
    expert_parallel: bool = False
    distributed_backend: Literal["mp", "ray", "nnodes"] = "mp"
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "bfloat16"] = "auto"
    max_model_len: int | None = Field(None, ge=256, le=163840, description="null: the planner's KV capacity.")
    gpu_memory_utilization: float = Field(0.90, gt=0.0, le=0.98)
    max_num_seqs: int = Field(256, ge=1, le=16384)
    max_num_batched_tokens: int = Field(8192, ge=1, le=1_048_576)
    enable_chunked_prefill: bool = True
    num_speculative_tokens: int = Field(0, ge=0, le=4, description="MTP draft tokens (0: off).")
    reasoning_parser: str | None = "deepseek_r1"
    port: int = Field(8000, ge=1024, le=65535)
    extra_args: list[str] = Field(default_factory=list)
    speedup_ratio: float = Field(
        1.0, gt=0, le=1000, description="Twin only: the mocker runs this many times faster."
    )
    mocker_reasoning: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Twin only: the mocker streams a reasoning phase of this fraction of each output "
        "(`<think>` .. `</think>`, Dynamo mocker --reasoning), as R1 reasons before it answers; null: none.",
    )

    @model_validator(mode="after")
    def _extra_args(self) -> Serving:
        joined = " ".join(self.extra_args)
        for bad, why in _KNOWN_BAD_FLAGS.items():
            flag, _, value = bad.partition(" ")
            if re.search(rf"{re.escape(flag)}(=|\s+){re.escape(value)}\b", joined):
                raise _Rule("serving.extra_args", f"{bad!r}: {why}")
        for arg in self.extra_args:
            flag = arg.split("=", 1)[0]
            if flag in _OWNED_FLAGS:
                raise _Rule(
                    "serving.extra_args",
                    f"{flag!r} is set by r1lab from {_OWNED_FLAGS[flag]}: "
                    f"set that key instead and remove it from extra_args",
                )
        return self


class Dynamo(Strict):
    """NVIDIA Dynamo in front: router, and prefill/decode disaggregation."""

    enabled: bool = False
    router_mode: Literal["round-robin", "random", "kv", "least-loaded", "power-of-two"] = "kv"
    disaggregated: bool = False
    prefill_workers: int = Field(1, ge=0, le=64)
    decode_workers: int = Field(1, ge=1, le=64)
    prefill_role: str | None = None
    decode_role: str | None = None
    kv_transfer_gbps: float | None = Field(
        None, gt=0, description="null: the modelled link between the pods."
    )
    port: int = Field(8080, ge=1024, le=65535)
    real_engine_requests: int = Field(
        0,
        ge=0,
        le=16,
        description="Twin only: before the mocker serves the load, 04 sends this many requests through real "
        "dynamo.vllm prefill/decode workers (vLLM's CPU build, the tiny model) and proves the NIXL KV transfer "
        "(0: off).",
    )


class Distribution(Strict):
    """A token-length distribution: fixed, uniform between min and max, or normal around mean."""

    kind: Literal["fixed", "uniform", "normal"] = "fixed"
    value: PositiveInt | None = None
    min: PositiveInt | None = None
    max: PositiveInt | None = None
    mean: PositiveInt | None = None
    std: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _shape(self) -> Distribution:
        need = {"fixed": ("value",), "uniform": ("min", "max"), "normal": ("mean", "std")}[self.kind]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise _Rule(missing[0], f"a {self.kind} distribution needs {', '.join(need)}")
        if self.kind == "uniform" and self.min is not None and self.max is not None and self.min > self.max:
            raise _Rule("min", f"min {self.min} is above max {self.max}")
        return self


Length = int | Distribution


class SharedPrefix(Strict):
    """`workload: shared-prefix`: requests in `groups` groups, each group behind one common prefix."""

    groups: int = Field(ge=1, le=10_000)
    prefix_tokens: int = Field(ge=1, le=1_000_000, description="Tokens of each group's shared prefix.")
    suffix_tokens: int = Field(ge=1, le=1_000_000, description="Tokens of each request's own suffix.")


class MultiTurn(Strict):
    """`workload: multi-turn`: conversations whose turns carry the answers the server streamed (closed loop)."""

    conversations: int = Field(ge=1, le=100_000, description="Conversations per load point.")
    turns: int = Field(ge=1, le=1000)
    user_tokens: int = Field(ge=1, le=1_000_000, description="Tokens of each user message.")


class Trace(Strict):
    """`shape: trace`: replay a Mooncake-style JSONL trace (timestamp ms, input_length, output_length,
    hash_ids) open-loop at its own times."""

    file: str = Field(
        min_length=1, description="The trace's path (relative: to the working directory, else the repo)."
    )
    block_size: int = Field(512, ge=1, le=1_000_000, description="Prompt tokens per hash id (Mooncake: 512).")
    time_scale: float = Field(
        1.0, gt=0, le=1000, description="Multiplies the trace's times (0.5: twice as fast)."
    )
    max_requests: int | None = Field(None, ge=1, le=10_000_000, description="Replay only the first N.")
    max_total_tokens: int | None = Field(
        None,
        ge=2,
        le=10_000_000,
        description="Skip requests whose input + output exceed this (max_model_len).",
    )

    def path(self) -> Path:
        """The trace file: absolute, or relative to the working directory, else to the repository root."""
        p = Path(self.file).expanduser()
        if p.is_absolute() or p.exists():
            return p
        root = Path(__file__).resolve().parent.parent / p
        return root if root.exists() else p


class Scenario(Strict):
    """One load scenario: a shape (concurrency sweep, Poisson rate, ramp, stress, trace replay) over a workload
    (synthetic, shared-prefix, multi-turn)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,40}$")
    shape: Literal["concurrency", "poisson", "ramp", "stress", "trace"] = "concurrency"
    workload: Literal["synthetic", "shared-prefix", "multi-turn"] = "synthetic"
    shared_prefix: SharedPrefix | None = None
    multi_turn: MultiTurn | None = None
    trace: Trace | None = None
    concurrency: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default_factory=lambda: [1], max_length=100
    )
    rate: list[Annotated[float, Field(gt=0, le=100_000)]] = Field(
        default_factory=list, max_length=100, description="Requests/s, for poisson."
    )
    input_tokens: Length = 1024
    output_tokens: Length = 1024
    requests_per_point: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Requests per load point (default 64 when no duration_s is given).",
    )
    duration_s: float | None = Field(
        None, gt=0, le=86_400, description="Seconds per load point (ramp: per step; stress: the whole phase)."
    )
    warmup_requests: int = Field(0, ge=0, le=1_000_000)
    warmup_s: float = Field(
        0.0, ge=0, le=86_400, description="Requests sent this early in a point are left out."
    )
    max_concurrency: int | None = Field(
        None, ge=1, le=100_000, description="poisson: at most this many in flight."
    )
    burstiness: float = Field(
        1.0, gt=0, le=1000, description="poisson: gamma shape of inter-arrivals (1: Poisson)."
    )
    timeout_s: float = Field(
        600.0, gt=0, le=86_400, description="Per request; slower ones are recorded as timeouts."
    )
    trend_window_s: float = Field(30.0, gt=0, le=86_400, description="stress: window of the trend checks.")
    endpoint: Literal["chat", "completions"] = "completions"
    ignore_eos: bool = True
    until_knee: int | None = Field(
        None,
        ge=2,
        le=100_000,
        description="concurrency sweep: after the listed points, keep doubling the last concurrency while the "
        "sweep has found no knee, up to this concurrency (each added point measured like the listed ones).",
    )
    at_knee_of: str | None = Field(
        None,
        description="stress: hold the knee concurrency that this earlier concurrency sweep of the same run found "
        "(`concurrency` is used, and the planner's estimate, when that sweep found no knee).",
    )

    @model_validator(mode="after")
    def _shape_params(self) -> Scenario:
        shape = shape_of(self)
        if self.until_knee is not None and (not shape.extends_to_knee or self.workload == "multi-turn"):
            raise _Rule("until_knee", "only a concurrency sweep extends until its knee: set shape: concurrency "
                        "(synthetic or shared-prefix workload) or drop until_knee")  # fmt: skip
        if self.until_knee is not None and self.until_knee <= max(self.concurrency):
            raise _Rule("until_knee", f"the cap {self.until_knee} must exceed the sweep's largest listed "
                        f"concurrency {max(self.concurrency)}: raise it or drop until_knee")  # fmt: skip
        if self.at_knee_of is not None and not shape.holds_knee:
            raise _Rule(
                "at_knee_of", "only a stress phase runs at a sweep's knee: set shape: stress or drop it"
            )
        for key, wl in (("shared_prefix", "shared-prefix"), ("multi_turn", "multi-turn")):
            given = getattr(self, key) is not None
            if self.workload == wl and not given:
                fields = "groups, prefix_tokens, suffix_tokens" if wl == "shared-prefix" else (
                    "conversations, turns, user_tokens")  # fmt: skip
                raise _Rule(key, f"workload {wl} needs its parameters: set {key}: {{{fields}}}")
            if given and self.workload != wl:
                raise _Rule(key, f"only workload: {wl} uses {key}: set workload: {wl} or drop it")
        if (self.shape == "trace") != (self.trace is not None):
            raise _Rule(
                "trace", "shape: trace needs trace: {file, block_size, time_scale}; other shapes take none"
            )
        if self.shape == "trace" and self.workload != "synthetic":
            raise _Rule(
                "workload",
                "a trace brings its own prompts (hash_ids): leave workload out of a trace scenario",
            )
        if self.workload == "multi-turn" and not shape.can_close:
            raise _Rule(
                "shape", "multi-turn conversations run closed-loop: use shape concurrency (users in flight)"
            )
        if self.workload == "multi-turn" and self.rate:
            raise _Rule("rate", "multi-turn conversations run closed-loop: give concurrency, not rate")
        for key, message in shape.problems(self):  # the shape's own rules (r1lab.loadshapes)
            raise _Rule(key, message)
        if self.requests_per_point is None and self.duration_s is None:
            self.requests_per_point = 64
        return self


class SLO(Strict):
    ttft_ms: float | None = Field(2000.0, gt=0)
    tpot_ms: float | None = Field(100.0, gt=0)
    e2el_ms: float | None = Field(None, gt=0)


class Load(Strict):
    scenarios: list[Scenario] = Field(default_factory=list)
    slo: SLO = Field(default_factory=SLO)
    run_on: Literal["local", "pod"] = Field("local", description="Run the generator here or on the head pod.")
    processes: int = Field(0, ge=0, le=256, description="Client worker processes; 0: automatic.")
    seed: int = 0

    @model_validator(mode="after")
    def _knee_refs(self) -> Load:
        seen: dict[str, Scenario] = {}
        for sc in self.scenarios:
            ref = sc.at_knee_of
            if ref is not None:
                src = seen.get(ref)
                if src is None or src.shape != "concurrency" or len(src.concurrency) < 2:
                    raise _Rule("scenarios", f"{sc.name}: at_knee_of {ref!r} must name a concurrency sweep (two or "
                                "more concurrencies) listed before it")  # fmt: skip
            seen[sc.name] = sc
        return self


class Price(Strict):
    usd_per_gpu_hour: float = Field(gt=0, le=1000)
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    source: str = ""


class Cost(Strict):
    """Fallback prices (live catalog prices win when reachable), with the date they were seen."""

    prices: dict[str, Price] = Field(
        default_factory=lambda: {
            gpu_id: Price(usd_per_gpu_hour=p.secure, date=p.date, source=p.source)
            for gpu_id, p in gpus.fallback_prices().items()
        }
    )
    volume_usd_per_gb_month: float = Field(0.07, ge=0, le=100)


class Outputs(Strict):
    root: str = "outputs"


class Experiment(Strict):
    """One experiment: where, what, how it is served, how it is loaded, what it may cost."""

    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    description: str = ""
    provider: Provider = Field(default_factory=Provider)
    pods: list[Pod] = Field(min_length=1)
    volume: Volume = Field(default_factory=Volume)
    model: Model = Field(default_factory=Model)
    serving: Serving = Field(default_factory=Serving)
    dynamo: Dynamo = Field(default_factory=Dynamo)
    load: Load = Field(default_factory=Load)
    cost: Cost = Field(default_factory=Cost)
    outputs: Outputs = Field(default_factory=Outputs)
    seed: int = 0

    # -- derived views -----------------------------------------------------------------------------------
    @property
    def serving_pods(self) -> list[Pod]:
        return [p for p in self.pods if p.serves and p.gpu_count]

    @property
    def nodes(self) -> int:
        return sum(p.count for p in self.serving_pods)

    @property
    def gpus_per_node(self) -> int:
        pods = self.serving_pods
        return pods[0].gpu_count if pods else 0

    @property
    def total_gpus(self) -> int:
        return sum(p.gpu_count * p.count for p in self.serving_pods)

    @property
    def gpu_type(self) -> str | None:
        pods = self.serving_pods
        return pods[0].gpu_type if pods else None

    # -- cross-field rules --------------------------------------------------------------------------------
    @model_validator(mode="after")
    def _rules(self) -> Experiment:
        roles = [p.role for p in self.pods]
        dupes = sorted({r for r in roles if roles.count(r) > 1})
        if dupes:
            raise _Rule("pods", f"each pod group needs its own role; {dupes[0]!r} is used twice")
        serving = self.serving_pods
        if not serving:
            raise _Rule("pods", "no pod serves the model: give at least one pod a gpu_type and gpu_count")
        if len({(p.gpu_type, p.gpu_count) for p in serving}) > 1:
            raise _Rule("pods", "all serving pods must have the same gpu_type and gpu_count")
        s = self.serving
        used = s.tensor_parallel * s.pipeline_parallel * s.data_parallel
        if used != self.total_gpus:
            raise _Rule(
                "serving.tensor_parallel",
                f"tensor_parallel x pipeline_parallel x data_parallel = {s.tensor_parallel} x "
                f"{s.pipeline_parallel} x {s.data_parallel} = {used} GPUs, but the serving pods have "
                f"{self.total_gpus}: make the product equal the GPUs you pay for",
            )
        if s.tensor_parallel > self.gpus_per_node and self.nodes > 1 and self.provider.kind == "runpod":
            pass  # allowed (TP across nodes works) but the planner flags it as slow
        if self.nodes > 1 and self.provider.network == "none":
            raise _Rule(
                "provider.network",
                f"{self.nodes} serving pods must reach each other: set network to "
                "'global-networking' (ordinary pods) or 'instant-cluster'",
            )
        if self.provider.network == "instant-cluster":
            refusal = gpus.cluster_refusal(self.gpu_type, self.nodes)
            if refusal:
                i = next(i for i, p in enumerate(self.pods) if p in serving)
                raise _Rule(f"pods[{i}].gpu_type", refusal)
        if (
            self.nodes > 1
            and s.distributed_backend == "mp"
            and s.engine == "vllm"
            and not self.dynamo.disaggregated
        ):
            raise _Rule(
                "serving.distributed_backend",
                "vLLM across several pods needs 'ray' or 'nnodes' (the 'mp' backend is single-node)",
            )
        if s.expert_parallel and s.data_parallel == 1 and s.tensor_parallel == 1:
            raise _Rule(
                "serving.expert_parallel", "expert parallelism needs tensor_parallel or data_parallel > 1"
            )
        if self.provider.kind == "twin" and s.engine == "vllm":
            raise _Rule(
                "serving.engine",
                "the twin has no GPUs: use 'mocker' (timed by the performance model); "
                "the vLLM command is still rendered and recorded",
            )
        d = self.dynamo
        if d.real_engine_requests and (self.provider.kind != "twin" or not d.disaggregated):
            raise _Rule(
                "dynamo.real_engine_requests",
                "the real CPU engine check runs on the twin with prefill/decode disaggregation: set "
                "provider.kind: twin and dynamo.disaggregated: true, or set it to 0",
            )
        if d.disaggregated and not d.enabled:
            raise _Rule(
                "dynamo.disaggregated",
                "prefill/decode disaggregation runs through Dynamo: set dynamo.enabled: true",
            )
        if d.disaggregated and d.prefill_workers < 1:
            raise _Rule("dynamo.prefill_workers", "disaggregated serving needs at least one prefill worker")
        for key in ("prefill_role", "decode_role"):
            role = getattr(d, key)
            if role is not None and role not in roles:
                raise _Rule(f"dynamo.{key}", f"no pod has role {role!r}; roles are {roles}")
            if role is not None and role not in {p.role for p in serving}:
                raise _Rule(
                    f"dynamo.{key}",
                    f"pod {role!r} serves nothing (no GPUs, or serves: false): Dynamo workers run on serving "
                    f"pods; use one of {[p.role for p in serving]}",
                )
        if self.provider.kind == "runpod" and s.engine == "mocker":
            raise _Rule("serving.engine", "'mocker' simulates GPUs on the twin; on RunPod use 'vllm'")
        if self.model.repo_id == "deepseek-ai/DeepSeek-R1":
            for i, pattern in enumerate(self.model.include):
                if pattern.endswith(".fp8") or pattern == "*.fp8":
                    raise _Rule(
                        f"model.include[{i}]",
                        f"{pattern!r} matches no file of deepseek-ai/DeepSeek-R1 "
                        "(its FP8 weights are 163 model-*.safetensors shards): "
                        "use '*.safetensors'",
                    )
            if any(p in ("*.safetensors", "model-*.safetensors") for p in self.model.exclude):
                raise _Rule(
                    "model.exclude", "excluding *.safetensors excludes every weight shard of DeepSeek-R1"
                )
            need_gb = _r1_volume_gb()
            if "*.safetensors" in self.model.include and self.volume.size_gb < need_gb:
                raise _Rule(
                    "volume.size_gb",
                    f"{self.volume.size_gb} GB cannot hold DeepSeek-R1's weights (688.6 GB of safetensors plus "
                    f"download headroom): set volume.size_gb to at least {need_gb}",
                )
        for i, sc in enumerate(self.load.scenarios):
            for length_key in ("input_tokens", "output_tokens"):
                top = _length_max(getattr(sc, length_key))
                if s.max_model_len is not None and top > s.max_model_len:
                    raise _Rule(
                        f"load.scenarios[{i}].{length_key}",
                        f"up to {top} tokens exceeds serving.max_model_len {s.max_model_len}",
                    )
        names = [sc.name for sc in self.load.scenarios]
        if len(set(names)) != len(names):
            raise _Rule("load.scenarios", "scenario names must be unique")
        return self


def _r1_volume_gb() -> int:
    """The smallest volume (GB, rounded up to 10) that holds R1's checkpoint with the download's headroom (2%,
    at least 5 GB: the rule r1lab.hub.plan applies to the real file list)."""
    import math

    from r1lab.model import ModelSpec  # lazy: model stands above config

    total = ModelSpec.deepseek_r1().checkpoint_bytes()
    return 10 * math.ceil((total + max(5e9, total * 0.02)) / 1e9 / 10)


def _length_max(length: Length) -> int:
    if isinstance(length, int):
        return length
    return length.value or length.max or int((length.mean or 0) + 4 * (length.std or 0))


def known_gpu_types() -> dict[str, str]:
    """GPU type ids r1lab knows, from the one GPU catalog (id -> short name)."""
    return gpus.known_gpu_types()


def _check_gpu_type(key: str, gpu_type: str) -> None:
    known = known_gpu_types()
    if gpu_type not in known:
        close = difflib.get_close_matches(gpu_type, list(known) + list(known.values()), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise _Rule(
            key, f"unknown GPU type {gpu_type!r}: expected a RunPod GPU type id, one of {sorted(known)}{hint}"
        )


# --- loading ------------------------------------------------------------------------------------------------

_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password)$", re.IGNORECASE)


def _line_index(text: str) -> dict[str, int]:
    """Map dotted keys (`serving.tensor_parallel`, `pods[0].role`) to 1-based line numbers."""
    index: dict[str, int] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                index[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                key = f"{prefix}[{i}]"
                index[key] = item.start_mark.line + 1
                walk(item, key)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index
    if root is not None:
        walk(root, "")
    return index


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "Distribution", "function-after[_shape(), Distribution]") or "[" in str(part):
            continue  # union-branch labels pydantic adds to the location
        else:
            out += f".{part}" if out else str(part)
    return out


def _expected_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at the parent of `loc`, for did-you-mean hints on unknown keys."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        for arg in list(candidates):
            candidates += list(getattr(arg, "__args__", ()))
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _find_secrets(data: Any, prefix: str = "") -> list[str]:
    found = []
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if _SECRET_KEY.search(str(k)) and isinstance(v, str) and v:
                found.append(key)
            found += _find_secrets(v, key)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            found += _find_secrets(v, f"{prefix}[{i}]")
    elif isinstance(data, str) and looks_like_api_key(data):
        found.append(prefix)
    return found


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: str, line: int, first: int) -> None:
        self.key, self.line, self.first = key, line, first
        super().__init__(f"duplicate key {key!r} (first given on line {first})")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML lets the last one win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # the base class reports unhashable keys
            if key in seen:
                raise DuplicateKeyError(str(key), key_node.start_mark.line + 1, seen[key])
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def parse_experiment(text: str, source: str = "<params>") -> Experiment:
    """Validate params text; raise ParamsError with one line per problem."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except DuplicateKeyError as exc:
        raise ParamsError(
            source,
            [f"{source}:{exc.line}: {exc.key}: given twice (first on line {exc.first}); keep one of them"],
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ParamsError(
            source, [f"{source}{where}: not valid YAML: {getattr(exc, 'problem', exc)}"]
        ) from None
    if not isinstance(data, dict):
        raise ParamsError(
            source,
            [f"{source}: expected a mapping of keys (name, pods, serving, ...), got {type(data).__name__}"],
        )
    lines = _line_index(text)
    secret_keys = _find_secrets(data)
    if secret_keys:
        raise ParamsError(
            source,
            [
                f"{source}:{lines.get(k, '?')}: {k}: looks like a secret; secrets never go in params files: set "
                "RUNPOD_API_KEY / HF_TOKEN in the environment and remove this key"
                for k in secret_keys
            ],
        )
    try:
        return Experiment.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(source, _format_errors(exc, source, lines)) from None


def _format_errors(exc: ValidationError, source: str, lines: dict[str, int]) -> list[str]:
    problems: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        key = _dotted(loc)
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _Rule):
            # A rule raised in a nested model names its key relative to that model.
            rel = ctx_err.key
            key = (
                rel
                if rel.split(".")[0].split("[")[0] in Experiment.model_fields or not key
                else f"{key}.{rel}"
            )
            msg = ctx_err.message
        elif err["type"] == "extra_forbidden":
            options = _expected_fields(Experiment, loc)
            close = difflib.get_close_matches(str(loc[-1]), options, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            msg = f"unknown key; {hint}allowed here: {', '.join(options)}"
        elif err["type"] == "missing":
            msg = "required key is missing"
        else:
            given = err.get("input")
            shown = repr(given) if not isinstance(given, dict | list) else type(given).__name__
            msg = f"expected {err['msg'].lower().removeprefix('input should be ')}; got {shown}"
        line = lines.get(key) or lines.get(key.rsplit(".", 1)[0]) or "?"
        text = f"{source}:{line}: {key or '(top level)'}: {msg}"
        if text not in problems:
            problems.append(text)
    return problems


def load_experiment(path: str | Path) -> Experiment:
    """Load and validate a params file."""
    p = Path(path)
    if not p.exists():
        raise ParamsError(str(p), [f"{p}: no such params file (the files in params/ are the examples)"])
    return parse_experiment(p.read_text(encoding="utf-8"), str(p))


def cli_main(argv: list[str]) -> int:
    """`r1lab validate PARAMS...`: 0 when every file is valid, 1 otherwise."""
    import argparse

    parser = argparse.ArgumentParser(prog="r1lab validate", description="Validate params files.")
    parser.add_argument("params", nargs="+")
    args = parser.parse_args(argv)
    bad = 0
    for path in args.params:
        try:
            exp = load_experiment(path)
        except ParamsError as exc:
            bad += 1
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            continue
        print(
            f"{path}: ok ({exp.name}: {exp.nodes} pod(s) x {exp.gpus_per_node} {exp.gpu_type}, "
            f"{exp.serving.engine} TP{exp.serving.tensor_parallel} PP{exp.serving.pipeline_parallel} "
            f"DP{exp.serving.data_parallel}{' EP' if exp.serving.expert_parallel else ''}"
            f"{', Dynamo' if exp.dynamo.enabled else ''}{' P/D' if exp.dynamo.disaggregated else ''})"
        )
    return 1 if bad else 0
