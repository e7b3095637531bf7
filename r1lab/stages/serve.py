"""Stages 02-04 (serve): one serving stage ("single", "multi" or "dynamo") on the run's pods, checked and recorded.

`run(ctx, stage)` (alias `serve_stage`) takes the run (its resolved deployment and directory) and returns a typed
`StageResult`, also written as `stage-<stage>.json`; notebooks 02, 03 and 04 call it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from r1lab.config import Experiment
from r1lab.monitor import targets as mon_targets
from r1lab.progress import step
from r1lab.resolve import ResolvedDeployment, resolve
from r1lab.rundir import RunContext
from r1lab.serve.checks import minimal_completion, vram_per_gpu
from r1lab.serve.deploy import deploy, launch_deadline_s
from r1lab.steps import _commands_file, ensure_pods, fetch_tokenizer, preflight, serving_roles


@dataclass
class StageResult:
    stage: str
    endpoint: str
    model: str
    engine: str
    completion: dict[str, Any]
    vram: dict[str, Any]
    commands_file: str
    not_run: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def serve_stage(ctx: RunContext, stage: str, keep_running: bool = False) -> StageResult:
    """Bring up one serving stage on the run's pods ("single", "multi" or "dynamo"), check it answers, record it.

    keep_running: leave it serving for the next notebook (the load test uses the last stage); otherwise it is
    stopped here so the next stage has the GPUs.
    """
    exp = ctx.exp
    roles = serving_roles(exp)[:1] if stage == "single" else serving_roles(exp)
    if stage == "single":
        reason = single_node_misfit(exp, ctx.resolved)
        if reason:
            print(f"stage 'single' skipped: {reason}")
            result = StageResult(stage, "", exp.model.served_name, exp.serving.engine, {"ok": False,
                                 "skipped": reason}, {}, "", [])  # fmt: skip
            ctx.write_json(f"stage-{stage}.json", result.as_dict())
            return result
    pods = ensure_pods(ctx, roles)
    pf = preflight(ctx, stage, pods)
    deadline, how = launch_deadline_s(exp, stage, pf.volume_read_bps)  # type: ignore[arg-type]
    print(f"launch deadline {deadline / 60:.0f} min: {how}")
    with step(f"serving stage {stage!r} on {', '.join(roles)}"):
        launched = deploy(exp, ctx.run_dir, stage, pods.executors, deadline_s=deadline)  # type: ignore[arg-type]
    try:
        check = minimal_completion(launched.endpoint)
        if not check.ok:
            raise RuntimeError(f"stage {stage}: the minimal completion failed: {check.error}")
        head = pods.executors[roles[0]]
        vram = vram_per_gpu(exp, head, stage, ctx.resolved)
        result = StageResult(
            stage=stage, endpoint=launched.endpoint.url, model=launched.endpoint.model,
            engine=launched.endpoint.engine or exp.serving.engine, completion=asdict(check),
            vram=vram.as_dict(), commands_file=str(_commands_file(ctx, stage)),
            not_run=[c.shell() for c in launched.deployment.not_run],
            extra={"topology": launched.deployment.topology, "notes": launched.deployment.notes,
                   **launched.extra},
        )  # fmt: skip
        ctx.write_json(f"stage-{stage}.json", result.as_dict())
        if keep_running:
            dep = launched.deployment
            node = pods.executors[dep.endpoint_node]
            # the forwarded URL lives only as long as this kernel: hand over where the server really listens
            ctx.state.set("endpoint", {"private_url": f"http://{node.address}:{dep.endpoint_port}/v1",
                                       "node": dep.endpoint_node, "port": dep.endpoint_port,
                                       "model": launched.endpoint.model, "stage": stage,
                                       "engine": result.engine, "gpus": exp.total_gpus,
                                       "topology": dep.topology, "roles": roles})  # fmt: skip
            ctx.state.set("model_dir", str(fetch_tokenizer(ctx, node)))
            addresses = {role: ex.address for role, ex in pods.executors.items()}
            ctx.state.set(
                "monitor_targets", mon_targets.to_state(mon_targets.from_deployment(dep, addresses))
            )
    except BaseException:
        launched.launcher.stop()
        raise
    if not keep_running:
        with step(f"stopping stage {stage!r} (the next stage needs the GPUs)"):
            launched.launcher.stop()
    return result


def single_node_misfit(exp: Experiment, resolved: ResolvedDeployment | None = None) -> str | None:
    """Why R1 cannot be served by one pod of this experiment (None when it fits), from the memory plan the run's
    resolved deployment holds for stage single (`resolved`, default resolve(exp))."""
    r = resolved or resolve(exp)
    plan = r.stage_group("single").memory
    return (
        None
        if plan["fits"]
        else f"one pod of {exp.gpus_per_node} x {exp.gpu_type} cannot hold R1: {plan['reason']}"
    )


run = serve_stage
