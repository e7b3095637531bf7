"""The launcher over real SSH (emulated RunPod pods backed by real sshd): SshExecutor starts the twin's single
stage (Dynamo frontend + mocker) on a pod, readiness goes through an SSH port forward, logs come back into the
run dir, and stop leaves nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from r1lab.cloud.emulator import Emulator, LocalSshdBackend, Timings
from r1lab.cloud.provision import PodPlan, Provisioner
from r1lab.cloud.runpod import RunPodClient
from r1lab.cloud.sshexec import SshExecutor
from r1lab.config import parse_experiment
from r1lab.serve.checks import minimal_completion
from r1lab.serve.deploy import deploy
from r1lab.teardown import Ledger
from r1lab.tinymodel import write_tiny_model

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import loopback_ports  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PYTHON = str(REPO / ".venv" / "bin" / "python")
KEY = "rpa_SERVETESTKEY0123456789abcdefgh"
pytestmark = pytest.mark.integration


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    run_dir = tmp_path / "cloud"
    run_dir.mkdir()
    backend = LocalSshdBackend(tmp_path / "pods")
    emu = Emulator(api_key=KEY, backend=backend, timings=Timings(0.1, 0.1, 0.3)).start()
    prov = Provisioner(run_dir, "serve1", client=RunPodClient(base_url=emu.url), poll_s=0.1)
    prov.ensure_key()
    pods = prov.pods([PodPlan("head", "img", "NVIDIA H100 NVL", 8, ports=["22/tcp"])])
    try:
        yield pods[0]
    finally:
        for p in pods:
            p.ssh.close()
        from r1lab.cloud.ledger import teardown

        assert teardown(run_dir).ok
        emu.stop()


def test_twin_single_stage_over_ssh(pod, tmp_path: Path) -> None:  # noqa: ANN001
    data = yaml.safe_load((REPO / "params" / "twin.yaml").read_text())
    data["model"]["path"] = str(write_tiny_model(tmp_path / "model"))
    exp = parse_experiment(yaml.safe_dump(data), "twin-ssh")
    ex = SshExecutor(pod.ssh, name="head", address="127.0.0.1", provider="twin")
    run = tmp_path / "run"
    launched = deploy(exp, run, "single", {"head": ex, "worker": ex}, ports=loopback_ports(), deadline_s=90,
                      remote_dir=str(tmp_path / "on-pod"), programs={"python": PYTHON}, audit=False)  # fmt: skip
    try:
        assert launched.endpoint.url.startswith("http://127.0.0.1:")  # through the SSH forward
        check = minimal_completion(launched.endpoint)
        assert check.ok, check.error
        live = Ledger(run).live()
        assert {e["kind"] for e in live} == {"pod-process"} and all(e["provider"] == "twin" for e in live)
        pids = [e["meta"]["pid"] for e in live]
        assert all(ex.alive(p) for p in pids)
    finally:
        launched.launcher.stop()
    assert not any(ex.alive(p) for p in pids) and Ledger(run).live() == []
    log = (run / "logs" / "serve" / "single" / "mocker-engine.log").read_text()
    assert "dynamo" in log.lower()  # the pod's log was copied back into the run dir
