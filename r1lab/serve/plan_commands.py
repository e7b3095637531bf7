"""The serving commands of every stage as the capacity plan carries them (`Plan.commands`, `r1lab plan`).

serve stands above perf: the planner does not render commands; r1lab.stages.plan.make_plan renders them here and
passes them into `perf.planner.plan_experiment(..., commands=...)`."""

from __future__ import annotations

from typing import Any

from r1lab.config import Experiment
from r1lab.serve.commands import render, stages


def plan_commands(exp: Experiment) -> dict[str, Any]:
    """Per stage its topology, engine, shell lines (those a mocker stands in for marked not run) and notes; a
    stage serve cannot render says why."""
    out: dict[str, Any] = {"source": "r1lab.serve.commands", "stages": {}, "lines": []}
    for stage in stages(exp):
        try:
            dep = render(exp, stage)
        # ServeConfigError (or a model error under it): serve cannot render these params
        except ValueError as exc:
            out["stages"][stage] = {"error": str(exc)}
            out["lines"].append(f"# {stage}: cannot render: {exc}")
            continue
        lines = [
            ("" if c.run else "# not run (stood in for by the mocker): ") + c.shell() for c in dep.commands
        ]
        out["stages"][stage] = {
            "topology": dep.topology,
            "engine": dep.engine,
            "lines": lines,
            "notes": list(dep.notes),
        }
        out["lines"] += [f"# --- stage {stage}: {dep.topology} ({dep.engine})", *lines]
    return out
