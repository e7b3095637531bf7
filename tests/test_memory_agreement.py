"""report/charts and the planner agree on memory: one memory plan for the params' serving instance (#19).

For params/twin.yaml (Dynamo P/D, two 8-GPU pods) the instance is TP8 (one pod), not TP8 x PP2."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from r1lab.config import load_experiment
from r1lab.perf import planner
from r1lab.report import charts

PARAMS = sorted((Path(__file__).resolve().parents[1] / "params").glob("*.yaml"))


@pytest.mark.parametrize("params", PARAMS, ids=[p.stem for p in PARAMS])
def test_charts_and_planner_one_memory_plan(params: Path) -> None:
    exp = load_experiment(params)
    plan = planner.plan_experiment(exp, include_standard=False)
    me = next(t for t in plan.as_dict()["topologies"] if t["is_params"])
    chart_memory = charts._model_memory(SimpleNamespace(exp=exp))  # the chart without a plan.json
    assert chart_memory["parallelism"] == me["memory"]["parallelism"]
    assert chart_memory == me["memory"]


def test_twin_instance_is_tp8() -> None:
    exp = load_experiment(Path(__file__).resolve().parents[1] / "params" / "twin.yaml")
    mem = charts._model_memory(SimpleNamespace(exp=exp))
    assert mem["parallelism"] == "TP8" and mem["weights_gib"] > 70  # 79.3 GiB of R1 per GPU at TP8
