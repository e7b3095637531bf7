"""Load shapes as registered classes: one list of points for the planner and the bench (#19)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from r1lab import loadshapes
from r1lab.bench.scenarios import shapes_for
from r1lab.config import ParamsError, Scenario, load_experiment, parse_experiment
from r1lab.perf import planner
from r1lab.resolve import resolve

PARAMS = sorted((Path(__file__).resolve().parents[1] / "params").glob("*.yaml"))


def test_every_shape_config_accepts_is_registered() -> None:
    literal = typing.get_args(Scenario.model_fields["shape"].annotation)
    assert set(literal) == set(loadshapes.SHAPES)
    with pytest.raises(ValueError, match="name 'poisson' empty or taken"):
        loadshapes.register(type("Again", (loadshapes.LoadShape,), {"name": "poisson"}))


@pytest.mark.parametrize("params", PARAMS, ids=[p.stem for p in PARAMS])
def test_planner_and_bench_run_the_same_points(params: Path) -> None:
    exp = load_experiment(params)
    modelled = planner._points(exp)
    for sc in exp.load.scenarios:
        if sc.shape == "trace":
            continue  # its points come from the trace file (bench.traces; the planner models its mean rate)
        bench = [(s.concurrency if s.kind == "concurrency" else None, s.rate) for s in shapes_for(sc)]
        plan = [(p["conc"], p["rate"]) for p in modelled if p["scenario"] == sc.name]
        assert plan == bench, sc.name


@pytest.mark.parametrize("params", PARAMS, ids=[p.stem for p in PARAMS])
def test_bench_runs_the_resolved_points(params: Path) -> None:
    """Given the run's resolved load points (stage 05 passes resolved.json's), the bench runs those: the same
    shapes as expanded from the params, and a resolved point list that says otherwise wins."""
    exp = load_experiment(params)
    points = resolve(exp).load_points
    for sc in exp.load.scenarios:
        if sc.shape == "trace":
            continue
        assert shapes_for(sc, points) == shapes_for(sc), sc.name
    sc = next(sc for sc in exp.load.scenarios if sc.shape != "trace")
    mine = [p for p in points if p.scenario == sc.name]
    other = [dataclasses.replace(mine[0], concurrency=3, rate=None)]
    assert [s.concurrency for s in shapes_for(sc, other)] == [3]
    with pytest.raises(ValueError, match=f"scenario {sc.name}: the run's resolved deployment"):
        shapes_for(sc, [p for p in points if p.scenario != sc.name])


STRESS_AT_A_RATE = """
name: t
serving: {engine: mocker}
pods: [{role: head, gpu_type: NVIDIA H100 NVL, gpu_count: 8}]
load:
  scenarios:
    - {name: hold, shape: stress, rate: [2.5], max_concurrency: 16, duration_s: 60, input_tokens: 64, output_tokens: 64}
"""


def test_a_stress_at_a_rate_is_open_loop_in_the_plan_and_the_bench() -> None:
    # before: the planner modelled it at concurrency 1 (the default) while the bench ran Poisson at 2.5/s
    exp = parse_experiment(STRESS_AT_A_RATE)
    sc = exp.load.scenarios[0]
    assert [(p["conc"], p["rate"]) for p in planner._points(exp)] == [(None, 2.5)]
    assert [(s.kind, s.rate, s.concurrency) for s in shapes_for(sc)] == [("poisson", 2.5, 16)]
    assert loadshapes.shape_of(sc).loop(sc) == "open"


@pytest.mark.parametrize(
    "scenario, key, message",
    [
        ("{name: p, shape: poisson}", "rate", "a poisson scenario needs a list of request rates"),
        ("{name: r, shape: ramp, concurrency: [1, 2]}", "duration_s", "a ramp scenario is timed"),
        ("{name: s, shape: stress, concurrency: [1, 2], duration_s: 5}", "concurrency", "holds one load"),
        (
            "{name: s, shape: concurrency, at_knee_of: x}",
            "at_knee_of",
            "only a stress phase runs at a sweep's knee",
        ),
        (
            "{name: m, shape: poisson, rate: [1], workload: multi-turn, multi_turn: {conversations: 1, turns: 2, "
            "user_tokens: 8}}",
            "shape",
            "multi-turn conversations run closed-loop",
        ),
    ],
)
def test_each_shape_validates_its_own_rules(scenario: str, key: str, message: str) -> None:
    text = STRESS_AT_A_RATE.replace(STRESS_AT_A_RATE.splitlines()[-1], f"    - {scenario}")
    with pytest.raises(ParamsError) as err:
        parse_experiment(text)
    assert any(key in p and message in p for p in err.value.problems), err.value.problems
