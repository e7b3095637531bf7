"""The helpers the experiment's stages build on (pods, setup, preflight, load placement, monitoring, calibration);
the stages themselves are modules of r1lab.stages (01 environment, 02-04 serve, 05 load, 06 report).

Each step works the same on RunPod and on the twin: pods come from `r1lab.cloud.provision` (RunPod REST v2, or
the twin's emulator through the same client), commands run over SSH (`SshExecutor`), serving goes through
`r1lab.serve.deploy`. Steps hand over through the run's `state.json` (volume, pods, endpoint); every resource is
in the run's ledger before anything waits on it, so the runner's teardown removes it whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lab.bench.remote import ExecutorShell
from r1lab.calibrate.cli import calibrate_over_ssh
from r1lab.cloud.heartbeat import keep_alive
from r1lab.cloud.provision import PodPlan, Provisioner
from r1lab.cloud.sshexec import SshExecutor
from r1lab.cloud.twin import setuplines
from r1lab.cloud.twin.api import Twin
from r1lab.config import Experiment, Pod
from r1lab.execution import LocalExecutor
from r1lab.perf import hardware
from r1lab.perf.profile import load_profile
from r1lab.preflight import run_preflight
from r1lab.progress import step
from r1lab.rundir import RunContext
from r1lab.teardown import release as _release

UTILITY_ROLE = "utility"


# --- pods -----------------------------------------------------------------------------------------------------


def pod_plan(exp: Experiment, pod: Pod) -> PodPlan:
    """The RunPod create request for one pod group (ports: SSH only; services stay private, reached by SSH)."""
    return PodPlan(
        role=pod.role, image=pod.image, gpu_type=pod.gpu_type, gpu_count=pod.gpu_count,
        cloud=exp.provider.cloud_type, data_center=exp.provider.data_center, ports=["22/tcp"],
        disk_gb=pod.container_disk_gb, volume_mount=pod.volume_mount or exp.volume.mount,
        global_networking=exp.provider.network == "global-networking" and bool(pod.gpu_count),
    )  # fmt: skip


def provisioner(ctx: RunContext) -> Provisioner:
    """The run's provisioner: its SSH key, ledger, pod deadline and fallback prices."""
    exp = ctx.exp
    return Provisioner(
        ctx.run_dir, ctx.run_id, pod_deadline_hours=exp.provider.pod_deadline_hours,
        heartbeat_timeout_s=exp.provider.heartbeat_timeout_s,
        fallback_prices={k: v.model_dump() for k, v in exp.cost.prices.items()},
    )  # fmt: skip


def _pod_group(exp: Experiment, role: str) -> Pod:
    for pod in exp.pods:
        if pod.role == role:
            return pod
    raise KeyError(f"params have no pod with role {role!r}; roles: {[p.role for p in exp.pods]}")


def serving_roles(exp: Experiment) -> list[str]:
    return [p.role for p in exp.serving_pods]


@dataclass
class Pods:
    """Ready pods of this run with their SSH executors, by role."""

    ready: dict[str, Any] = field(default_factory=dict)
    executors: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for role, p in self.ready.items():
            rows.append({"role": role, "id": p.id, "name": p.name, "address": self.executors[role].address,
                         "gpus": p.pod.get("gpuCount") or p.pod.get("gpu", {}).get("count"),
                         "status": p.pod.get("desiredStatus") or p.pod.get("status")})  # fmt: skip
        return rows


def ensure_pods(ctx: RunContext, roles: list[str]) -> Pods:
    """Create (or find, by name) the run's pods for these roles, on the run's volume, and wait until SSH works."""
    prov = provisioner(ctx)
    volume = ctx.state.require("volume", "01_environment")
    plans = [pod_plan(ctx.exp, _pod_group(ctx.exp, role)) for role in roles]
    if ctx.exp.provider.network == "instant-cluster" and len(roles) > 1:
        # an Instant Cluster: identical nodes on the fast fabric, created together; members take the roles in order
        ready = prov.cluster(plans[0], nodes=len(roles), volume=volume)
        for role, rp in zip(roles, ready, strict=True):
            rp.role = role
    else:
        ready = prov.pods(plans, volume=volume)
    if ctx.exp.provider.heartbeat_timeout_s:
        for rp in ready:  # while this kernel lives, the pods' watchdogs hear from it (setup may take long)
            keep_alive(ctx.run_dir, rp.id, rp.ssh)
    pods = Pods()
    for rp in ready:
        ex = SshExecutor.for_pod(rp.pod, prov.key, prov.known_hosts, rp.role,
                                 log_path=ctx.run_dir / "logs" / "ssh.log", provider=ctx.exp.provider.kind)  # fmt: skip
        pods.ready[rp.role], pods.executors[rp.role] = rp, ex
    known = ctx.state.get("pods", {})
    known.update({row["role"]: row for row in pods.summary()})
    ctx.state.set("pods", known)
    for role, ex in pods.executors.items():
        if _pod_group(ctx.exp, role).gpu_count:
            ex.run(SHM_COMMAND, timeout=60, check=False)
    _run_setup(ctx, pods)
    return pods


# RunPod's Ray/vLLM guide: /dev/shm >= 8 GB (a container's default is 64 MB). Where the pod may remount it, do;
# where it may not, the preflight's /dev/shm check fails naming it.
SHM_COMMAND = (
    'test "$(df -B1 --output=size /dev/shm 2>/dev/null | tail -n1)" -ge 8000000000 2>/dev/null || '
    "mount -o remount,size=16g /dev/shm 2>/dev/null || true"
)


def _run_setup(ctx: RunContext, pods: Pods) -> None:
    """Each pod group's `setup` commands, once per pod (a marker on the pod makes reruns free), pods in parallel.

    On the twin's bare pods, what needs a GPU is taken out of the lines and resolved for the real pod instead
    (`r1lab.cloud.twin.setuplines`); both are recorded in `setup/<role>.json` and printed."""
    jobs = []
    for role, ex in pods.executors.items():
        commands = _pod_group(ctx.exp, role).setup
        commands = _setup_commands(ctx, role, commands) if commands else []
        if commands:
            jobs.append((role, ex, commands))
    if not jobs:
        return

    def run(job: tuple[str, Any, list[str]]) -> None:
        role, ex, commands = job
        digest = hashlib.sha256("\n".join(commands).encode()).hexdigest()[:16]
        marker = f"/tmp/r1lab-setup-{digest}"
        script = f"test -f {marker} && exit 0; set -e; " + "; ".join(commands) + f"; touch {marker}"
        t0 = time.monotonic()
        ex.run(script, timeout=3600, on_line=lambda line, r=role: print(f"[{r}] {line}"))
        print(f"[{role}] setup done in {time.monotonic() - t0:.1f} s", flush=True)

    with step(f"setting up {', '.join(r for r, _, _ in jobs)} (each pod's setup lines, over SSH)"):
        with ThreadPoolExecutor(len(jobs)) as pool:
            list(pool.map(run, jobs))


def _setup_commands(ctx: RunContext, role: str, commands: list[str]) -> list[str]:
    """The lines to run on the pod: as written, except on the twin's bare pods (see `_run_setup`)."""
    if ctx.exp.provider.kind != "twin":
        return list(commands)
    if not _twin_bare():
        print(f"[{role}] twin pods of kind 'host' (asked for with R1LAB_TWIN_PODS=host) share this machine's "
              "files: setup lines not run (the default, bare pods, run them)", flush=True)  # fmt: skip
        return []
    plans = [setuplines.plan_line(c, ctx.exp.serving.engine) for c in commands]
    reqs = [r for p in plans for r in p.requirements]
    python = setuplines.image_python(_pod_group(ctx.exp, role).image)
    resolution = setuplines.resolve(reqs, python) if reqs else None
    rec = {"role": role, "lines": [p.as_dict() for p in plans], "resolution_for_real_pod": resolution}
    out = ctx.run_dir / "setup" / f"{role}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():  # the same params give the same record: written once per run, never overwritten
        out.write_text(json.dumps(rec, indent=1) + "\n", encoding="utf-8")
    for p in plans:
        for sub in p.substituted:
            print(f"[{role}] TWIN SUBSTITUTION: {sub}", flush=True)
    if resolution is not None:
        where = f"CPython {python}, {resolution['platform']}, PyPI"
        if not resolution["ok"]:
            raise RuntimeError(
                f"pods[role={role}].setup does not resolve on the real pod ({where}): {resolution['error']}\n"
                f"Fix: change the pins in pods[].setup of the params file ({out})"
            )
        print(f"[{role}] setup requirements resolve for the real pod ({where}): {len(resolution['pins'])} "
              f"pinned distributions, recorded in {out}", flush=True)  # fmt: skip
    return [p.ran for p in plans]


def _twin_bare() -> bool:
    twin = Twin.find(os.environ.get("R1LAB_TWIN_DIR"))
    return bool(twin is not None and twin.info.get("pods") == "bare")


def preflight(ctx: RunContext, stage: str, pods: Pods, **kw: Any) -> Any:
    """The preflight of one stage on its pods (`r1lab.preflight`): one table in `preflight-<stage>.json`,
    `PreflightError` naming pod, check and fix on the first failure."""
    with step(f"preflight {stage} on {', '.join(pods.executors)}"):
        return run_preflight(ctx.exp, stage, pods.executors, run_dir=ctx.run_dir, **kw)


def release(ctx: RunContext, kind: str, resource_id: str) -> None:
    """Delete one resource now, through its ledger handler (so the ledger stays the single truth)."""
    _release(ctx.run_dir, kind, resource_id)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json")


def fetch_tokenizer(ctx: RunContext, executor: Any) -> Path:
    """Copy the served model's tokenizer files from the pod's volume into the run dir (the load generator builds
    prompts with the model's own tokenizer, so input lengths are exact)."""
    dest = ctx.run_dir / "model"
    dest.mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        if not (dest / name).exists():
            executor.get(f"{ctx.exp.model.path}/{name}", dest / name)
    return dest


def load_shell(ctx: RunContext) -> ExecutorShell | None:
    """Where the load generator runs: None for here, or the serving pod's shell when `load.run_on: pod` (so TTFT
    does not include the round trip from this machine to the data center)."""
    if ctx.exp.load.run_on != "pod":
        return None
    node = ctx.state.require("endpoint", "04_dynamo")["node"]
    return ExecutorShell(ensure_pods(ctx, [node]).executors[node])


@contextmanager
def monitoring(ctx: RunContext) -> Iterator[Any]:
    """A real Prometheus scraping the serving processes (and a node exporter) while the block runs; the series
    land in `metrics.parquet`. On the twin it runs here (the host reaches the pods' private addresses); on
    RunPod it runs on the head pod, installed there, and is reached through an SSH forward."""
    from r1lab import monitor  # here, not on top: pandas (~1.7 s) only for the stages that monitor (05)

    targets = monitor.targets.from_state(ctx.state.get("monitor_targets"))
    workdir = ctx.run_dir / "prometheus"
    if ctx.exp.provider.kind == "twin":
        _, port = monitor.start_node_exporter(LocalExecutor(), str(workdir), ledger=ctx.ledger)
        targets.append(monitor.targets.node_exporter("127.0.0.1", port))
        with monitor.recording(targets, ctx.run_dir, ledger=ctx.ledger) as prom:
            yield prom
        return
    endpoint = ctx.state.require("endpoint", "04_dynamo")
    head = ensure_pods(ctx, [endpoint["node"]]).executors[endpoint["node"]]
    remote = "/tmp/r1lab/prometheus"
    # exporters on the head's loopback: Prometheus runs there too
    _, port = monitor.start_node_exporter(head, remote, ledger=ctx.ledger)
    targets.append(monitor.targets.node_exporter("127.0.0.1", port))
    _, gport = monitor.start_gpu_exporter(head, remote, ledger=ctx.ledger)
    targets.append(monitor.targets.gpu_exporter("127.0.0.1", gport))
    with monitor.recording(targets, ctx.run_dir, workdir=remote, executor=head, install=True,
                           ledger=ctx.ledger) as prom:  # fmt: skip
        yield prom


def _commands_file(ctx: RunContext, stage: str) -> Path:
    matches = sorted((ctx.run_dir / "commands").glob(f"*{stage}*"))
    return matches[-1] if matches else ctx.run_dir / "commands"


def shell_join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# --- calibration (02) -----------------------------------------------------------------------------------------


def profile_vs_datasheet(profile: Any, gpu_type: str) -> list[dict[str, Any]]:
    """A hardware profile's ceilings against the GPU's datasheet (dense rates)."""
    g = hardware.gpu(gpu_type)

    def best(dtype: str) -> float | None:
        rates = [r["tflops"] for r in profile.gemm if r.get("dtype") == dtype and r.get("tflops")]
        return max(rates) if rates else None

    rows = [("HBM copy (TB/s, read+write)", profile.copy_tb_s, g.hbm_tb_s),
            ("MLA KV read bf16 (TB/s)", profile.kv_read_tb_s, g.hbm_tb_s),
            ("FP8 GEMM, best (TFLOPS)", best("fp8"), g.fp8_tflops),
            ("FP8 block-scaled GEMM, best (TFLOPS)", best("fp8_block"), g.fp8_tflops),
            ("BF16 GEMM, best (TFLOPS)", best("bf16"), g.bf16_tflops)]  # fmt: skip
    out = []
    for what, measured, sheet in rows:
        if measured is None:
            continue
        out.append({"ceiling": what, "measured": round(measured, 2), "datasheet": sheet,
                    "fraction": round(measured / sheet, 3)})  # fmt: skip
    return out


def calibration(ctx: RunContext) -> dict[str, Any]:
    """On GPU pods: measure the head pod's ceilings (`r1lab calibrate`, a few minutes) into
    `<run_dir>/calibration/`, the profile the performance model can use in place of datasheet efficiencies.
    On the twin there is no GPU: shows the reference profile the model times the mocker with (measured on lent
    GPUs, labelled as such)."""
    exp = ctx.exp
    if exp.provider.kind == "twin":
        slug = hardware.gpu(exp.gpu_type or "").default_profile
        profile = load_profile(slug)
        source = f"reference profile {slug} ({profile.device_name} x{profile.gpus}, {profile.measured}); the twin has no GPUs"
    else:
        role = serving_roles(exp)[0]
        pods = ensure_pods(ctx, [role])
        out = ctx.run_dir / "calibration"
        with step(f"calibrating {role} ({exp.gpus_per_node} x {exp.gpu_type})"):
            code = calibrate_over_ssh(pods.ready[role].ssh, out)
        if code != 0:
            raise RuntimeError(f"calibration on {role} exited {code}: see {out}")
        found = [p for p in out.glob("*.json") if p.name != "summary.json"]
        path = found[0] if found else None
        if path is None:
            raise RuntimeError(f"calibration on {role} wrote no profile into {out}")
        profile = load_profile(path)
        source = f"measured on {role} now ({profile.device_name} x{profile.gpus})"
    # against the datasheet of the card that was measured (the twin's H100 NVL borrows the H100 SXM profile)
    result = {
        "source": source,
        "gpu": profile.gpu,
        "vs_datasheet": profile_vs_datasheet(profile, profile.gpu),
    }
    ctx.write_json("calibration.json", result)
    return result
