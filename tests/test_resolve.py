"""resolve(exp): one resolved deployment per run, saved in the run dir and read back (#19)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from r1lab import resolve
from r1lab.config import load_experiment, parse_experiment
from r1lab.perf import planner
from r1lab.report import charts
from r1lab.rundir import new_run
from r1lab.serve.commands import ServeConfigError, render

REPO = Path(__file__).resolve().parents[1]
PARAMS = sorted((Path(__file__).resolve().parents[1] / "params").glob("*.yaml"))


@pytest.mark.parametrize("params", PARAMS, ids=[p.stem for p in PARAMS])
def test_round_trip_and_agreement_with_the_plan(params: Path) -> None:
    exp = load_experiment(params)
    r = resolve.resolve(exp)
    assert resolve.ResolvedDeployment.from_dict(json.loads(r.to_json())) == r
    assert planner.resolved_topology(r) == planner.params_topology(exp)  # what the planner reads of it
    plan = planner.plan_experiment(exp, include_standard=False).as_dict()
    me = next(t for t in plan["topologies"] if t["is_params"])
    # the serving group's memory plan is the one the planner reports for the params topology
    assert r.serving_group.memory == me["memory"]
    assert (r.gpu_type, r.nodes, r.gpus_per_node) == (me["gpu_type"], me["nodes"], me["gpus_per_node"])
    assert [p.scenario for p in r.load_points] == [p["scenario"] for p in me["points"]]
    assert {k: v.usd_per_gpu_hour for k, v in r.prices.items()}[me["gpu_type"]] == me["price"][
        "usd_per_gpu_hour"
    ]
    assert all(q.date for q in r.prices.values())
    roles = [g.role for g in r.groups]
    assert roles == (["prefill", "decode"] if exp.dynamo.enabled and exp.dynamo.disaggregated else ["engine"])
    for g in r.groups:
        assert g.memory["gpu_memory_utilization"] == exp.serving.gpu_memory_utilization
        assert g.memory["parallelism"] == g.parallelism.label


def test_twin_groups() -> None:
    r = resolve.resolve(load_experiment(PARAMS[0].parent / "twin.yaml"))
    assert [(g.role, g.pd_mode, g.parallelism.label, g.pods) for g in r.groups] == [
        ("prefill", "prefill", "TP8", ("head",)),
        ("decode", "decode", "TP8", ("worker",)),
    ]
    assert r.provider.kind == "twin" and not r.provider.bills and not r.provider.gpus
    assert "kv_transfer" in r.links


def test_saved_once_in_the_run_dir_and_read_back(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("R1LAB_OUTPUTS", str(tmp_path))
    ctx = new_run(PARAMS[0].parent / "twin.yaml")
    saved = json.loads((ctx.run_dir / "resolved.json").read_text())
    assert saved["schema_version"] == resolve.SCHEMA_VERSION and saved["source"] == "modelled"
    assert ctx.resolved == resolve.resolve(ctx.exp) == resolve.load(ctx.run_dir)
    with pytest.raises(resolve.ResolvedError, match="exists already"):
        resolve.save(ctx.resolved, ctx.run_dir)
    # a later reader reads the file, not the params: what the run was resolved to is what it gets
    edited = json.loads(json.dumps(saved))
    edited["groups"][-1]["memory"]["kv_tokens"] = 12345
    (ctx.run_dir / "resolved.json").write_text(json.dumps(edited))
    assert charts._model_memory(SimpleNamespace(exp=ctx.exp, run_dir=ctx.run_dir))["kv_tokens"] == 12345
    bad = {**saved, "schema_version": 99}
    (ctx.run_dir / "resolved.json").write_text(json.dumps(bad))
    with pytest.raises(resolve.ResolvedError, match="schema_version 99"):
        resolve.load(ctx.run_dir)


@pytest.mark.parametrize("params", PARAMS, ids=[p.stem for p in PARAMS])
def test_rendered_workers_are_the_resolved_stage_groups(params: Path) -> None:
    """r1lab.serve renders each stage's engines where resolve placed them: a Dynamo worker per resolved worker,
    on its pod, on its GPUs, at its TP; single/multi at the resolved parallelism."""
    from r1lab.serve.commands import render

    exp = load_experiment(params)
    r = resolve.resolve(exp)
    assert list(r.stages) + list(r.placement_errors) == resolve.serving_stages(exp)
    for stage, groups in r.stages.items():
        dep = render(exp, stage)  # type: ignore[arg-type]  # (the twin: the vLLM commands its mocker stands for)
        if stage == "dynamo":
            want = sorted((g.role, w.pod, ",".join(map(str, w.gpus))) for g in groups for w in g.workers)
            workers = [c for c in dep.commands if "dynamo.vllm" in c.argv]
            got = sorted((c.name.split("-")[2], c.node, c.env["CUDA_VISIBLE_DEVICES"]) for c in workers)
            assert got == want
            for c in workers:
                assert c.argv[c.argv.index("--tensor-parallel-size") + 1] == str(
                    len(c.env["CUDA_VISIBLE_DEVICES"].split(","))
                )
        else:
            (g,) = groups
            serve = next(c for c in dep.commands if c.argv[:2] == ["vllm", "serve"])
            assert serve.argv[serve.argv.index("--tensor-parallel-size") + 1] == str(g.parallelism.tp)
            assert dep.notes[0].startswith(g.parallelism.label)


def test_an_unplaceable_stage_is_named_in_resolve_and_refused_by_serve() -> None:
    import yaml

    from r1lab.config import parse_experiment
    from r1lab.serve.commands import ServeConfigError, render

    data = yaml.safe_load((PARAMS[0].parent / "runpod-1x8-h200.yaml").read_text())
    data["dynamo"] = {"enabled": True, "router_mode": "round-robin", "decode_workers": 3}
    exp = parse_experiment(yaml.safe_dump(data), "agg3")
    r = resolve.resolve(exp)
    assert "dynamo" not in r.stages and "cannot split its 8 GPUs" in r.placement_errors["dynamo"]
    assert resolve.ResolvedDeployment.from_dict(json.loads(r.to_json())) == r
    with pytest.raises(ServeConfigError, match="cannot split its 8 GPUs"):
        render(exp, "dynamo")


@pytest.mark.parametrize("params", PARAMS, ids=[p.stem for p in PARAMS])
def test_serve_renders_the_placement_the_run_resolved(params: Path) -> None:
    """r1lab.serve renders each stage as the resolved deployment places it (deploy passes resolved.json's)."""
    exp = load_experiment(params)
    r = resolve.resolve(exp)
    for stage in r.stages:
        given = render(exp, stage, resolved=r)  # type: ignore[arg-type]
        assert [c.shell() for c in given.commands] == [c.shell() for c in render(exp, stage).commands]  # type: ignore[arg-type]


def test_serve_follows_the_resolved_deployment_not_the_params() -> None:
    exp = load_experiment(REPO / "params" / "twin.yaml")
    r = resolve.resolve(exp)
    g = r.stage_group("single")
    half = dataclasses.replace(g, parallelism=resolve.Parallel(4, label="TP4"),
                               workers=(resolve.Worker(g.workers[0].pod, (0, 1, 2, 3)),))  # fmt: skip
    moved = dataclasses.replace(r, stages={**r.stages, "single": (half,)})
    assert "--tensor-parallel-size 4" in render(exp, "single", resolved=moved).script()
    unplaced = dataclasses.replace(
        r, stages={}, placement_errors={"dynamo": "dynamo: no room on pod 'worker'"}
    )
    with pytest.raises(ServeConfigError, match="no room on pod 'worker'"):
        render(exp, "dynamo", resolved=unplaced)


def test_the_kv_link_override_is_resolved_once_for_planner_and_mocker() -> None:
    """dynamo.kv_transfer_gbps: the resolved deployment carries it; the planner's P/D model and the mocker's
    --kv-transfer-bandwidth both read it from there."""
    data = yaml.safe_load((REPO / "params" / "twin.yaml").read_text())
    data["dynamo"]["kv_transfer_gbps"] = 2.5
    exp = parse_experiment(yaml.safe_dump(data), "twin+kv")
    r = resolve.resolve(exp)
    assert r.kv_transfer_gb_s == 2.5 and r.kv_network == "global-networking"
    topo = planner.resolved_topology(r)
    assert topo.disagg is not None and topo.disagg.kv_transfer_gb_s == 2.5
    assert topo == planner.params_topology(exp)
    text = render(exp, "dynamo", resolved=r).script()
    assert text.count("--kv-transfer-bandwidth 2.5") == 2  # the prefill and the decode mocker
