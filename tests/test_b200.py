"""B200 is one entry of the GPU catalog (r1lab.gpus) and works through validate, plan, the emulator and pricing."""

from __future__ import annotations

from pathlib import Path

import pytest

from r1lab import config, cost, gpus
from r1lab.cli import main as r1lab_main
from r1lab.cloud import pricing
from r1lab.cloud.emulator import Emulator
from r1lab.cloud.provision import PodPlan, Provisioner
from r1lab.cloud.runpod import RunPodClient
from r1lab.perf import planner

B200 = "NVIDIA B200"
KEY = "rpa_EMULATORTESTKEY0123456789abcd"


@pytest.fixture
def b200_params(repo: Path, tmp_path: Path) -> Path:
    text = (repo / "params" / "runpod-1x8-h200.yaml").read_text()
    assert "gpu_type: NVIDIA H200" in text
    p = tmp_path / "runpod-1x8-b200.yaml"
    p.write_text(text.replace("gpu_type: NVIDIA H200", f"gpu_type: {B200}"))
    return p


def test_validate_accepts_b200(b200_params: Path, capsys) -> None:
    assert r1lab_main(["validate", str(b200_params)]) == 0
    exp = config.load_experiment(b200_params)
    assert exp.gpu_type == B200


def test_plan_b200_is_datasheet_derived_and_priced(b200_params: Path) -> None:
    plan = planner.plan_experiment(config.load_experiment(b200_params), include_standard=False)
    me = next(t for t in plan.topologies if t["is_params"])
    assert me["gpu_type"] == B200 and me["fits"]
    # no B200 was measured: the H200 profile, scaled by the B200 datasheet, and said so
    assert me["points"] and me["profile"] == {
        "name": gpus.gpu(B200).default_profile,
        "scaled_from": "H200",
        "datasheet_derived": True,
    }
    assert not gpus.gpu(B200).profile_measured
    assert me["price"]["usd_per_gpu_hour"] == 4.99 and me["price"]["date"] == "2026-12-02"
    assert me["usd_per_hour"] == pytest.approx(8 * 4.99)


def test_b200_fallback_prices() -> None:
    p = pricing.gpu_price(B200)
    assert (p.usd_per_gpu_hour, p.source) == (4.99, "fallback 2026-12-02")
    q = cost.quote(B200, config.Cost())
    assert (q.usd_per_gpu_hour, q.date, q.live) == (4.99, "2026-12-02", False)


def test_emulator_rents_b200_pods_and_clusters(tmp_path: Path) -> None:
    emu = Emulator(api_key=KEY).start()
    try:
        client = RunPodClient(api_key=KEY, base_url=emu.url)
        assert pricing.gpu_price(B200, client=client).source == "catalog"
        prov = Provisioner(tmp_path / "run", run_id="t19b200", client=client)
        pod = prov.create_pod(PodPlan("head", "img", B200, 8))
        assert pod["cost"] == pytest.approx(8 * 4.99)
        created = [e for e in prov.ledger.entries() if e.get("id") == pod["id"]]
        assert created and created[0]["meta"]["usd_per_hour"] == pytest.approx(8 * 4.99)
        cluster = client.create_cluster(
            {"name": "r1lab-t19b200-cl", "type": "APPLICATION", "image": "img", "ports": ["22/tcp"],
             "compute": {"gpuTypeId": B200, "gpuCountPerPod": 8, "podCount": 2}}
        )  # fmt: skip
        assert cluster["pods"]["total"] == 2
        assert client.terminate_pod(pod["id"]) and client.delete_cluster(cluster["id"])
    finally:
        emu.stop()
    assert emu.spec_violations == []
