"""`r1lab twin up | status | down`, the root check, crash cleanup, and the twin in a run's ledger."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1lab.cloud.runpod import PodSpec, RunPodClient
from r1lab.cloud.twin import Twin, twin_for_run
from r1lab.cloud.twin.cli import cli_main
from r1lab.config import load_experiment
from r1lab.teardown import Ledger, teardown_run

REPO = Path(__file__).resolve().parent.parent


def r1lab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "r1lab.cli", "twin", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_up_without_root_says_so_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli_main(["--state-dir", str(tmp_path / "twin"), "up"]) == 2
    err = capsys.readouterr().err
    assert "needs root" in err and "sudo -E" in err and "provider.kind: runpod" in err
    assert not (tmp_path / "twin").exists()  # nothing was started or written


def test_status_of_a_twin_that_never_ran(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--state-dir", str(tmp_path / "none"), "status"]) == 0
    assert "twin down" in capsys.readouterr().out
    assert cli_main(["--state-dir", str(tmp_path / "none"), "down"]) == 0


@pytest.mark.integration
def test_cli_up_status_down_leaves_nothing(tmp_path: Path) -> None:
    sd = str(tmp_path / "twin")
    up = r1lab("--state-dir", sd, "up")
    assert up.returncode == 0, up.stderr
    assert "twin up: http://127.0.0.1:" in up.stdout
    try:
        again = r1lab("--state-dir", sd, "up", "--env")  # already up: the same twin, as exports
        exports = dict(line.removeprefix("export ").split("=", 1) for line in again.stdout.splitlines())
        assert exports["RUNPOD_API_BASE"].startswith("http://127.0.0.1:")
        status = json.loads(r1lab("--state-dir", sd, "status", "--json").stdout)
        assert status["running"] and status["url"] == exports["RUNPOD_API_BASE"]
        client = RunPodClient(
            api_key=exports["RUNPOD_API_KEY"].strip("'"), base_url=exports["RUNPOD_API_BASE"]
        )
        assert client.list_pods() == []
        assert {d["id"] for d in client.list_data_centers()} >= {"EU-RO-1"}
    finally:
        down = r1lab("--state-dir", sd, "down")
    assert down.returncode == 0, down.stderr
    assert "nothing" in down.stdout or "no namespace" in down.stdout
    after = json.loads(r1lab("--state-dir", sd, "status", "--json").stdout)
    assert not after["running"] and after["leftovers"] == {}
    left = Twin(Path(sd)).leftovers()
    assert not any(left.values()), left


@pytest.mark.integration
def test_down_cleans_up_after_a_killed_daemon(tmp_path: Path) -> None:
    from r1lab.cloud.pods import start_command, start_script

    twin = Twin.up(tmp_path / "twin")
    client = RunPodClient(api_key=twin.api_key, base_url=twin.url)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    key = (tmp_path / "key.pub").read_text().strip()
    pod = client.create_pod(  # a bare pod (the twin's default): a supported image, r1lab's start command
        PodSpec(
            name="r1lab-crash-head",
            image="runpod/pytorch:1.0.2-cu1281-torch280-ubuntu2404",
            gpu_type="NVIDIA H100 NVL",
            gpu_count=8,
            global_networking=True,
            args=start_command(start_script(key, 0, 0)),
        )
    )
    client.wait_ready(pod["id"], timeout_s=60, poll_s=0.2)
    inst = twin.info["instance"]
    assert any(n.startswith(f"r1lab-{inst}-") for n in os.listdir("/run/netns"))
    os.kill(twin.info["pid"], signal.SIGKILL)  # the daemon dies without cleaning anything
    deadline = time.monotonic() + 10
    while twin.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not twin.running()
    assert any(twin.leftovers().values())  # its pod, namespace, bridge and rules are still there
    left = twin.down()
    assert not any(left.values()), left
    assert not any(n.startswith(f"r1lab-{inst}-") for n in os.listdir("/run/netns"))


@pytest.mark.integration
def test_a_twin_started_for_a_run_is_torn_down_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in ("RUNPOD_API_BASE", "RUNPOD_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    exp = load_experiment(REPO / "params" / "twin.yaml")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    twin = twin_for_run(exp, run_dir, tmp_path / "twin")
    assert twin is not None and twin.running()
    assert os.environ["RUNPOD_API_BASE"] == twin.url  # the RunPod client now talks to the twin
    assert [e["kind"] for e in Ledger(run_dir).live()] == ["twin"]
    # a second call (the next notebook's kernel) finds the same twin and records nothing new
    assert twin_for_run(exp, run_dir, tmp_path / "twin").url == twin.url
    assert len(Ledger(run_dir).live()) == 1
    report = teardown_run(run_dir)
    assert report.ok and not twin.running()
    assert not any(twin.leftovers().values())


@pytest.mark.integration
def test_two_kernels_starting_the_same_twin_get_one_daemon(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        twins = list(pool.map(lambda _: Twin.up(tmp_path / "twin"), range(2)))
    try:
        assert twins[0].info["instance"] == twins[1].info["instance"]
        assert twins[0].url == twins[1].url and twins[0].running()
        assert Twin.find(tmp_path / "twin") is not None
    finally:
        assert not any(twins[0].down().values())
    assert Twin.find(tmp_path / "twin") is None
