"""Stage 01 (environment): SSH key, network volume and utility pod; the weights downloaded onto the volume and
verified; the utility pod terminated.

`run(ctx)` returns a typed `EnvironmentResult`, also written as environment.json;
notebook 01 calls it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1lab.cloud.twin.api import Twin
from r1lab.hub.download import download_to_volume, ssh_exec
from r1lab.hub.fake import FakeHub, build_r1_like_repo
from r1lab.model import ModelSpec
from r1lab.progress import step
from r1lab.rundir import RunContext
from r1lab.steps import UTILITY_ROLE, ensure_pods, preflight, provisioner, release


@dataclass
class EnvironmentResult:
    volume: dict[str, Any]
    utility_pod: str
    files: int
    bytes: int
    downloaded_files: int
    complete: bool
    commit: str
    hub: str
    manifest_path: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hub_for(ctx: RunContext) -> tuple[str | None, Any]:
    """Where weights come from: the Hugging Face Hub, or on the twin a local fake Hub on the twin's bridge
    serving a generated repo laid out like DeepSeek-R1 (nothing can be downloaded here)."""
    if ctx.exp.provider.kind != "twin":
        return None, None
    twin = Twin.find(os.environ.get("R1LAB_TWIN_DIR"))
    if twin is None:
        raise RuntimeError(
            "no twin is running: `r1lab twin up` (or run through `r1lab run`, which starts it)"
        )
    repo = build_r1_like_repo(Path(tempfile.mkdtemp(prefix="r1lab-fakehub-", dir=ctx.run_dir / "logs")))
    hub = FakeHub({ctx.exp.model.repo_id: repo}, host=twin.host_ip)
    hub.start()
    return hub.url, hub


def _weights_bytes(ctx: RunContext, hub: Any) -> float | None:
    """What the download puts on the volume: the twin's fake repo, or DeepSeek-R1's checkpoint (~689 GB)."""
    if hub is not None:
        return float(sum(e.size for e in hub.repos[ctx.exp.model.repo_id].entries.values()))
    if ctx.exp.model.repo_id == "deepseek-ai/DeepSeek-R1":
        return ModelSpec.deepseek_r1().checkpoint_bytes()
    return None


def run(ctx: RunContext) -> EnvironmentResult:
    """SSH key, network volume, utility pod; download + verify the weights onto the volume; terminate the pod."""
    exp = ctx.exp
    prov = provisioner(ctx)
    with step("registering the run's SSH key"):
        prov.ensure_key()
    with step(f"network volume of {exp.volume.size_gb} GB in {exp.provider.data_center}"):
        volume = prov.volume(exp.volume.size_gb, exp.provider.data_center)
    ctx.state.set("volume", volume)
    pods = ensure_pods(ctx, [UTILITY_ROLE])
    utility = pods.ready[UTILITY_ROLE]
    endpoint, hub = _hub_for(ctx)
    try:
        preflight(ctx, "environment", pods, weights_bytes=_weights_bytes(ctx, hub))
        with step(f"downloading {exp.model.repo_id}@{exp.model.revision} to {exp.model.path}"):
            manifest = download_to_volume(
                ssh_exec(utility.ssh), exp.model.repo_id, exp.model.revision, exp.model.path,
                list(exp.model.include), exclude=list(exp.model.exclude), endpoint=endpoint,
                volume_size_gb=exp.volume.size_gb, log_path=ctx.run_dir / "logs" / "download.jsonl",
            )  # fmt: skip
    finally:
        if hub is not None:
            hub.stop()
    with step("terminating the utility pod"):
        release(ctx, "runpod-pod", utility.id)
    result = EnvironmentResult(
        volume={k: volume.get(k) for k in ("id", "name", "size", "dataCenterId", "dataCenter") if k in volume},
        utility_pod=utility.name, files=len(manifest.files), bytes=sum(f.get("size", 0) for f in manifest.files),
        downloaded_files=manifest.downloaded_files, complete=manifest.complete, commit=manifest.commit,
        hub=endpoint or "https://huggingface.co", manifest_path=f"{exp.model.path}/.r1lab/manifest.json",
    )  # fmt: skip
    ctx.write_json("environment.json", result.as_dict())
    ctx.state.set(
        "weights", {"path": exp.model.path, "commit": manifest.commit, "complete": manifest.complete}
    )
    return result
