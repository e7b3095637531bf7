"""One memory plan per instance group, stored in the resolved deployment, read by every layer (#19).

The planner, report/charts, serve/checks (the twin's modelled VRAM), serve/deploy (the mocker's KV capacity), the
mocker's tables and stage 02's single-pod check read the plan resolve() stored for their group, and all agree.
For params/twin.yaml (Dynamo P/D, two 8-GPU pods) the serving instance is TP8 (one pod), not TP8 x PP2."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from r1lab.config import load_experiment
from r1lab.perf import mocker, planner
from r1lab.report import charts
from r1lab.resolve import for_run, load, resolve, save
from r1lab.serve.checks import vram_per_gpu
from r1lab.serve.commands import render
from r1lab.serve.deploy import mocker_timings
from r1lab.stages.plan import make_plan
from r1lab.stages.serve import single_node_misfit

PARAMS = sorted((Path(__file__).resolve().parents[1] / "params").glob("*.yaml"))


def _on_twin(exp: Any) -> Any:
    """The same params on the twin (vram_per_gpu models memory there; on RunPod it asks nvidia-smi)."""
    return exp.model_copy(update={"provider": exp.provider.model_copy(update={"kind": "twin"})})


@pytest.mark.parametrize("params", PARAMS, ids=[p.stem for p in PARAMS])
def test_every_reader_reads_the_stored_plan(params: Path, tmp_path: Path) -> None:
    exp = load_experiment(params)
    r = resolve(exp)
    save(r, tmp_path)
    assert load(tmp_path) == r  # the plans survive resolved.json
    serving = r.serving_group.memory
    # the planner, given the resolved deployment (as `r1lab plan` and stage 00 call it), and without it
    for plan in (
        make_plan(exp, include_standard=False, resolved=r),
        planner.plan_experiment(exp, include_standard=False),
    ):
        me = next(t for t in plan.as_dict()["topologies"] if t["is_params"])
        assert me["memory"] == serving, plan.experiment
    # report/charts: the run's resolved.json, and without a run dir (resolved from the params)
    assert charts._model_memory(SimpleNamespace(exp=exp, run_dir=tmp_path)) == serving
    assert charts._model_memory(SimpleNamespace(exp=exp)) == serving
    # every serving stage: its groups' plans; the twin's modelled VRAM reads the stage's first group's
    for stage, groups in r.stages.items():
        for g in groups:
            assert g.memory and g.memory["parallelism"] == g.parallelism.label, (stage, g.role)
        assert vram_per_gpu(_on_twin(exp), None, stage, r).plan == groups[0].memory, stage
    # Dynamo's prefill/decode workers are the instance groups the planner models: one plan each
    if "dynamo" in r.stages and exp.dynamo.disaggregated:
        for g in r.groups:
            sg = r.stage_group("dynamo", g.role)
            if sg.parallelism == g.parallelism:
                assert sg.memory == g.memory, g.role
    # stage 02's "does one pod hold R1" reads stage single's plan
    single = r.stage_group("single").memory
    assert (single_node_misfit(exp, r) is None) == single["fits"]
    if not single["fits"]:
        assert single["reason"] in (single_node_misfit(exp, r) or "")


@pytest.mark.parametrize("name", ["twin.yaml", "runpod-2x8-h100nvl.yaml"])
def test_the_mocker_reads_the_stored_plan(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve/deploy hands the mocker the group's stored plan (not one it rebuilt): its KV blocks come from it."""
    exp = load_experiment(Path(__file__).resolve().parents[1] / "params" / name)
    r = resolve(exp)
    seen: list[tuple[str | None, dict[str, Any]]] = []
    real = mocker.mocker_setup

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append((kw.get("disaggregation_mode"), kw["memory"].as_dict()))
        return real(*args, **kw)

    monkeypatch.setattr(mocker, "mocker_setup", spy)
    for stage, groups in r.stages.items():
        seen.clear()
        timings = mocker_timings(exp, render(exp, stage, engine="mocker"), tmp_path / stage, r)
        assert timings and len(seen) == len(timings), stage
        for mode, memory in seen:
            want = r.stage_group(stage, mode).memory if mode else groups[0].memory
            assert memory == want, (stage, mode)
        for group, t in timings.items():
            want = r.stage_group(stage, group if group in ("prefill", "decode") else None).memory
            assert t.num_gpu_blocks == want["num_blocks"], (stage, group)


def test_a_resolved_json_without_stage_plans_gets_them(tmp_path: Path) -> None:
    """A run resolved before stage groups carried their memory plans (resumed with --resume) reads the same ones."""
    exp = load_experiment(Path(__file__).resolve().parents[1] / "params" / "twin.yaml")
    r = resolve(exp)
    d = r.as_dict()
    for groups in d["stages"].values():
        for g in groups:
            del g["memory"]
    (tmp_path / "resolved.json").write_text(json.dumps(d))
    assert not load(tmp_path).stage_group("single").memory
    assert for_run(tmp_path, None) == r


def test_twin_instance_is_tp8() -> None:
    exp = load_experiment(Path(__file__).resolve().parents[1] / "params" / "twin.yaml")
    mem = charts._model_memory(SimpleNamespace(exp=exp))
    assert mem["parallelism"] == "TP8" and mem["weights_gib"] > 70  # 79.3 GiB of R1 per GPU at TP8
    assert (
        resolve(exp).stage_group("multi").memory["parallelism"] == "TP8xPP2"
    )  # stage 03's own, stored apart


def test_a_null_max_model_len_is_the_stored_plans_kv_capacity() -> None:
    """serving.max_model_len: null renders the KV capacity of the stage group's stored plan (serve reads it)."""
    exp = load_experiment(Path(__file__).resolve().parents[1] / "params" / "runpod-1x8-h200.yaml")
    exp = exp.model_copy(update={"serving": exp.serving.model_copy(update={"max_model_len": None})})
    r = resolve(exp)
    g = r.stage_group("single")
    assert (
        f"--max-model-len {min(g.memory['kv_tokens'], 163840)}" in render(exp, "single", resolved=r).script()
    )
    small = dataclasses.replace(g, memory={**g.memory, "kv_tokens": 4096})
    moved = dataclasses.replace(r, stages={**r.stages, "single": (small,)})
    assert "--max-model-len 4096" in render(exp, "single", resolved=moved).script()
