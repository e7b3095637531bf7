"""The plan's checks on a serving deployment: the minimal completion test, a streamed completion, /metrics,
VRAM per GPU (nvidia-smi on real pods; the performance model's memory plan on the twin, labelled modelled) and
the replayable command file in `<run_dir>/commands/`.

Public interface: `minimal_completion(endpoint) -> CompletionCheck`, `streamed_chat(endpoint) -> StreamCheck`,
`read_metrics(url) -> dict[str, float]`, `vram_per_gpu(exp, executor, stage) -> VramReport`,
`write_command_file(run_dir, deployment) -> Path`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from r1lab.config import Experiment
from r1lab.execution import Executor
from r1lab.perf.memory import GIB, MemoryPlan
from r1lab.resolve import ResolvedDeployment, resolve
from r1lab.secrets import redact
from r1lab.serve.commands import Deployment
from r1lab.serve.launch import Endpoint

# --- completions --------------------------------------------------------------------------------------------


@dataclass
class CompletionCheck:
    ok: bool
    status: int
    text: str
    reasoning: str
    completion_tokens: int
    prompt_tokens: int
    latency_s: float
    error: str | None = None


def _post(url: str, body: dict[str, Any], endpoint: Endpoint, timeout: float):  # noqa: ANN202
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=endpoint.headers(), method="POST"
    )
    return urllib.request.urlopen(req, timeout=timeout)


def minimal_completion(
    endpoint: Endpoint, prompt: str = "What is 1 + 1?", max_tokens: int = 16, timeout: float = 120.0
) -> CompletionCheck:
    """One short chat completion: ok when the server answers 200 with a choice and at least one output token."""
    body = {"model": endpoint.model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0}  # fmt: skip
    t0 = time.perf_counter()
    try:
        with _post(endpoint.url + "/chat/completions", body, endpoint, timeout) as resp:
            status, data = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return CompletionCheck(
            False,
            exc.code,
            "",
            "",
            0,
            0,
            time.perf_counter() - t0,
            f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}",
        )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return CompletionCheck(
            False, 0, "", "", 0, 0, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
        )
    latency = time.perf_counter() - t0
    choice = (data.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    usage = data.get("usage") or {}
    text = msg.get("content") or ""
    reasoning = msg.get("reasoning") or msg.get("reasoning_content") or ""
    tokens = int(usage.get("completion_tokens") or 0)
    ok = status == 200 and bool(data.get("choices")) and tokens >= 1 and bool(text or reasoning)
    return CompletionCheck(
        ok,
        status,
        text,
        reasoning,
        tokens,
        int(usage.get("prompt_tokens") or 0),
        latency,
        None if ok else f"unexpected answer: {str(data)[:300]}",
    )


@dataclass
class StreamCheck:
    ok: bool
    chunks: int
    text: str
    ttft_s: float | None
    total_s: float
    finish_reason: str | None
    error: str | None = None


def streamed_chat(
    endpoint: Endpoint, prompt: str = "Say hello.", max_tokens: int = 8, timeout: float = 120.0
) -> StreamCheck:
    """A streamed chat completion (SSE): ok when content chunks arrive, a finish_reason is set and [DONE] ends it."""
    body = {"model": endpoint.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True, "temperature": 0}  # fmt: skip
    t0 = time.perf_counter()
    chunks, parts, first, finish, done = 0, [], None, None, False
    try:
        with _post(endpoint.url + "/chat/completions", body, endpoint, timeout) as resp:
            for raw in resp:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                data = json.loads(payload)
                for ch in data.get("choices") or []:
                    delta = ch.get("delta") or {}
                    piece = (delta.get("content") or "") + (
                        delta.get("reasoning") or delta.get("reasoning_content") or ""
                    )
                    if piece:
                        if first is None:
                            first = time.perf_counter() - t0
                        chunks += 1
                        parts.append(piece)
                    finish = ch.get("finish_reason") or finish
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return StreamCheck(
            False,
            chunks,
            "".join(parts),
            first,
            time.perf_counter() - t0,
            finish,
            f"{type(exc).__name__}: {exc}",
        )
    ok = done and chunks >= 1 and finish is not None
    return StreamCheck(
        ok,
        chunks,
        "".join(parts),
        first,
        time.perf_counter() - t0,
        finish,
        None if ok else f"stream ended without [DONE]/finish_reason (chunks {chunks})",
    )


# --- metrics ------------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def read_metrics(url: str, api_key: str | None = None, timeout: float = 10.0) -> dict[str, float]:
    """Prometheus text from `url` (a /metrics URL) as {metric name: sum over its label sets}."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
        text = resp.read().decode("utf-8", "replace")
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


# --- VRAM ---------------------------------------------------------------------------------------------------


@dataclass
class VramReport:
    source: str  # "nvidia-smi" (measured) | "modelled" (the performance model's memory plan)
    gpus: list[dict[str, Any]] = field(default_factory=list)  # index, name, used_mib, total_mib
    plan: dict[str, Any] | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


NVIDIA_SMI = "nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader,nounits"


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    rows = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[0].isdigit():
            continue
        rows.append({"index": int(parts[0]), "name": parts[1], "used_mib": float(parts[2]),
                     "total_mib": float(parts[3])})  # fmt: skip
    return rows


def vram_per_gpu(
    exp: Experiment,
    executor: Executor | None,
    stage: str,
    resolved: ResolvedDeployment | None = None,
) -> VramReport:
    """Real pods: nvidia-smi on the pod. The twin (no GPUs): the memory plan the run's resolved deployment holds
    for the stage's (first) engine group (`resolved`, default resolve(exp)), labelled modelled, never presented
    as measured."""
    if exp.provider.kind == "runpod":
        if executor is None:
            raise ValueError("vram_per_gpu on RunPod needs the pod's executor")
        res = executor.run(NVIDIA_SMI, timeout=60)
        return VramReport("nvidia-smi", parse_nvidia_smi(res.output), note=f"measured on {executor.name}")
    r = resolved or resolve(exp)
    plan = MemoryPlan.from_dict(r.stage_group(stage).memory)
    used = (plan.weights_bytes + plan.activation_bytes + plan.cudagraph_bytes + plan.non_torch_bytes
            + plan.kv_bytes) / 2**20  # fmt: skip
    gpus = [{"index": i, "name": plan.gpu, "used_mib": round(used, 1), "total_mib": round(plan.total_bytes / 2**20, 1)}
            for i in range(r.gpus_per_node)]  # fmt: skip
    return VramReport(
        "modelled",
        gpus,
        plan.as_dict(),
        f"modelled by r1lab.perf.memory for {plan.parallelism} on {plan.gpu} "
        f"(weights {plan.weights_bytes / GIB:.1f} GiB, KV {plan.kv_bytes / GIB:.1f} GiB per GPU); "
        "the twin has no GPUs",
    )


# --- command files ------------------------------------------------------------------------------------------


def write_command_file(run_dir: Path | str, dep: Deployment) -> Path:
    """`<run_dir>/commands/NN-<stage>.sh` (next free NN, never overwritten) + the same as JSON; secrets are
    `$NAME` references, never values; commands the twin does not run are commented and marked NOT RUN."""
    d = Path(run_dir) / "commands"
    d.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for p in d.iterdir() if (m := re.match(r"^(\d+)-", p.name))]
    n = max(taken, default=-1) + 1
    path = d / f"{n:02d}-serve-{dep.stage}.sh"
    with open(path, "x", encoding="utf-8") as f:
        f.write(redact(dep.script()))
    path.chmod(0o755)
    meta = {"stage": dep.stage, "experiment": dep.experiment, "engine": dep.engine, "topology": dep.topology,
            "endpoint": {"node": dep.endpoint_node, "port": dep.endpoint_port}, "notes": dep.notes,
            "commands": [{**c.as_dict(), "pre": c.pre, "uploads": c.uploads} for c in dep.commands]}  # fmt: skip
    with open(path.with_suffix(".json"), "x", encoding="utf-8") as f:
        f.write(redact(json.dumps(meta, indent=2)) + "\n")
    return path
