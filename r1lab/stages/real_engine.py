"""Stage 04a (real engine): the twin's real P/D path, checked before the mocker serves the load.

With `dynamo.real_engine_requests` > 0: Dynamo's frontend, a real `dynamo.vllm` prefill worker and a real decode
worker (vLLM's CPU build, the tiny DeepSeek-V3-shaped model) on the run's pods, the same commands as on GPUs; a few
requests, each with its NIXL transfer, link bytes and predicted bytes; then stopped (the load runs on the mocker).
`run(ctx)` returns a `RealEngineResult` (None when the params ask for no requests), also written as
`real-engine.json`; its commands and logs go under `real-engine/`. Notebook 04 calls it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from r1lab.cloud.twin.netns import POD_ENGINE_VENV
from r1lab.model import ModelSpec
from r1lab.progress import step
from r1lab.rundir import RunContext
from r1lab.serve.cpu_engine import cpu_engine_python, warm_model_info_cache
from r1lab.serve.deploy import deploy
from r1lab.serve.kv_transfer import ENGINE_LABEL, SOURCES, TOLERANCE, check_prompt_words, prove_transfer
from r1lab.serve.startup import startup_phases
from r1lab.steps import ensure_pods, serving_roles
from r1lab.tinymodel import write_tiny_model

FILENAME = "real-engine.json"


@dataclass(frozen=True)
class RealEngineResult:
    """What 04's real-engine check measured (on the twin's CPU engine, labelled `engine`), as in real-engine.json."""

    engine: str
    topology: str
    start_s: float  # launch to every worker ready
    startup_phases_s: dict[str, Any]  # per worker: seconds after the launch of each start-up phase (its log)
    requests: list[dict[str, Any]]  # per request: r1lab.serve.kv_transfer's proof, its chunks and request_s
    sources: dict[str, str]  # where each byte count comes from
    tolerance: str  # when the byte counts agree
    commands: list[str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(ctx: RunContext) -> RealEngineResult | None:
    """Run the real-engine check on the run's pods (None when dynamo.real_engine_requests is 0)."""
    exp = ctx.exp
    n = exp.dynamo.real_engine_requests
    if not n:
        return None
    py = cpu_engine_python()
    if not py.exists():
        raise RuntimeError(
            f"dynamo.real_engine_requests: {n} needs the CPU engine's venv {py.parent.parent}: run "
            "`scripts/bootstrap.sh --dynamo-vllm` (or set dynamo.real_engine_requests: 0)"
        )
    warm_model_info_cache()  # once per engine venv (bootstrap does it): the workers get a copy (cpu_engine.py)
    roles = serving_roles(exp)
    pods = ensure_pods(ctx, roles)
    # a bare pod sees the CPU engine where the twin binds it (its own root has none of the host's files)
    in_pod = f"{POD_ENGINE_VENV}/bin/python"
    if all(pods.executors[r].run(f"test -x {in_pod}", check=False).code == 0 for r in roles):
        py = Path(in_pod)
    local = write_tiny_model(ctx.run_dir / "real-engine" / "tiny-model", weights=True, shards=1,
                             max_position_embeddings=4096)  # fmt: skip
    remote = f"{exp.volume.mount.rstrip('/')}/models/tiny-r1-cpu"
    pods.executors[roles[0]].put(local, remote)  # the network volume: every pod sees it
    tiny = exp.model_copy(
        update={"model": exp.model.model_copy(update={"path": remote, "served_name": "tiny-r1"})}
    )
    t0, launched_at = time.monotonic(), datetime.now(UTC)
    with step("real engine: frontend + dynamo.vllm prefill and decode workers (vLLM CPU build, tiny model)"):
        launched = deploy(tiny, ctx.run_dir / "real-engine", "dynamo", pods.executors, engine="vllm",
                          programs={"python": str(py)}, deadline_s=600, audit=False)  # fmt: skip
    start_s = time.monotonic() - t0
    try:
        dec = next(c for c in launched.deployment.to_run if "decode" in c.name)
        metrics = f"http://{pods.executors[dec.node].address}:{dec.env['DYN_SYSTEM_PORT']}/metrics"
        spec = ModelSpec.from_config_json(local / "config.json")
        rows = []
        for i in range(n):
            t1 = time.monotonic()
            try:  # ~170, ~340, ... prompt tokens (whole KV blocks of 16 and more), 8 out: CPU time is the cost
                proof, chunks = prove_transfer(launched.endpoint.url, "tiny-r1", metrics, pods.executors[dec.node],
                                               spec, prompt_words=check_prompt_words(i), max_tokens=8,
                                               alive=launched.launcher.check)  # fmt: skip
            except OSError:  # a refused or failed request: name the worker that died, with its log tail
                launched.launcher.check()
                raise
            print(proof.summary())
            rows.append({**proof.as_dict(), "chunks": chunks, "request_s": round(time.monotonic() - t1, 1)})
    finally:
        with step("stopping the real engine (the load runs on the mocker)"):
            launched.launcher.stop()
    logs = ctx.run_dir / "real-engine" / "logs" / "serve" / "dynamo"
    phases = {c.name: startup_phases((logs / f"{c.name}.log").read_text(errors="replace"), launched_at)
              for c in launched.deployment.to_run if c.name.startswith("dynamo-vllm-")
              and (logs / f"{c.name}.log").exists()}  # fmt: skip
    result = RealEngineResult(
        engine=ENGINE_LABEL, topology=launched.deployment.topology, start_s=round(start_s, 1),
        startup_phases_s=phases, requests=rows, sources=dict(SOURCES), tolerance=TOLERANCE,
        commands=[c.shell() for c in launched.deployment.to_run],
    )  # fmt: skip
    ctx.write_json(FILENAME, result.as_dict())
    return result
