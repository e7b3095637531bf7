"""Pure parts of the notebook steps: what fits on one pod, a profile against its datasheet, 04's real-engine
stage when it is off."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from r1lab.config import load_experiment
from r1lab.perf.profile import load_profile, reference_profiles
from r1lab.stages import real_engine
from r1lab.stages.serve import single_node_misfit
from r1lab.steps import pod_plan, profile_vs_datasheet

PARAMS = Path(__file__).resolve().parent.parent / "params"


def test_single_node_fit_follows_the_memory_plan() -> None:
    assert single_node_misfit(load_experiment(PARAMS / "runpod-1x8-h200.yaml")) is None
    assert single_node_misfit(load_experiment(PARAMS / "runpod-1x8-h100nvl.yaml")) is None
    why = single_node_misfit(load_experiment(PARAMS / "runpod-cluster-2x8-h100sxm.yaml"))
    assert why is not None and "cannot hold R1" in why and "79.3 GiB" in why


def test_reference_profiles_sit_below_their_datasheets() -> None:
    for slug in reference_profiles():
        prof = load_profile(slug)
        rows = profile_vs_datasheet(prof, prof.gpu)
        assert rows, slug
        for row in rows:
            assert 0.3 < row["fraction"] <= 1.0, (slug, row)


def test_pod_plan_keeps_services_private_and_uses_global_networking_only_when_asked() -> None:
    twin = load_experiment(PARAMS / "twin.yaml")
    head = pod_plan(twin, twin.pods[0])
    assert head.ports == ["22/tcp"] and head.global_networking and head.gpu_count == 8
    utility = pod_plan(twin, twin.pods[2])
    assert not utility.global_networking and utility.gpu_type is None
    single = load_experiment(PARAMS / "runpod-1x8-h200.yaml")
    assert not pod_plan(single, single.pods[0]).global_networking


def test_real_engine_stage_runs_nothing_without_requests(tmp_path: Path) -> None:
    """Stage 04's real-engine check (r1lab.stages.real_engine) is off with dynamo.real_engine_requests 0: no pods,
    no real-engine.json."""
    twin = load_experiment(PARAMS / "twin.yaml")
    off = twin.model_copy(update={"dynamo": twin.dynamo.model_copy(update={"real_engine_requests": 0})})
    assert real_engine.run(SimpleNamespace(exp=off, run_dir=tmp_path)) is None  # type: ignore[arg-type]
    assert not (tmp_path / "real-engine.json").exists()
