"""Stage 00 (plan): the capacity plan of the run's params with the exact commands of every stage, saved as plan.json.

`make_plan(exp)` is the plan `r1lab plan` prints; `run(ctx)` is what notebook 00 calls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.config import Experiment
from r1lab.perf.planner import Plan, plan_experiment, render_text
from r1lab.resolve import ResolvedDeployment, resolve
from r1lab.rundir import RunContext
from r1lab.serve.plan_commands import plan_commands


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    path: Path  # plan.json in the run directory
    text: str  # the plan for a person (r1lab.perf.plan_text)


def make_plan(
    exp: Experiment,
    prices: dict[str, Any] | None = None,
    include_standard: bool = True,
    method: str = "simulate",
    resolved: ResolvedDeployment | None = None,
) -> Plan:
    """The plan (modelled by r1lab.perf; `method` as plan_experiment's) of the resolved deployment (`resolved`,
    default resolve(exp, prices): live `prices` where given, else the params' dated fallbacks), carrying the
    commands r1lab.serve renders for every stage."""
    r = resolved or resolve(exp, prices)
    return plan_experiment(exp, None, include_standard, method, commands=plan_commands(exp), resolved=r)


def run(ctx: RunContext) -> PlanResult:
    """Plan the run's experiment, write plan.json (never overwritten) and return it with its text form."""
    plan = make_plan(ctx.exp, resolved=ctx.resolved)
    path = ctx.write_json("plan.json", plan.as_dict())
    return PlanResult(plan, path, render_text(plan, ctx.exp))
