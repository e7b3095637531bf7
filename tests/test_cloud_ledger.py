"""Ledger handlers, reap, prices and cost, the budget guard, and the pod-side watchdog."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from r1lab import teardown as core
from r1lab.cloud import ledger as cl
from r1lab.cloud.budget import BudgetGuard
from r1lab.cloud.emulator import Emulator, Timings
from r1lab.cloud.pods import WATCHDOG, start_command, start_script
from r1lab.cloud.pricing import gpu_price
from r1lab.cloud.runpod import PodSpec, RunPodClient
from r1lab.config import load_experiment
from r1lab.cost import run_total

KEY = "rpa_LEDGERTESTKEY0123456789abcdef"
GPU = "NVIDIA H100 NVL"


@pytest.fixture
def emu(monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    e = Emulator(api_key=KEY, timings=Timings(0.1, 0.1, 0.1)).start()
    yield e
    e.stop()
    assert e.spec_violations == []


@pytest.fixture
def client(emu):
    return RunPodClient(base_url=emu.url)


def make(client, run_id, role, ledger=None, record=True):
    pod = client.create_pod(
        PodSpec(name=cl.resource_name(run_id, role), image="img", gpu_type=GPU, gpu_count=8)
    )
    if ledger is not None and record:
        cl.record(ledger, client, cl.KIND_POD, pod["id"], pod["name"], usd_per_hour=pod["cost"])
    return pod


def test_names_and_provider():
    assert cl.resource_name("20261127-1", "head") == "r1lab-20261127-1-head"
    assert cl.provider_of("http://127.0.0.1:5000") == "twin"
    assert cl.provider_of("https://api.runpod.io") == "runpod"


def test_teardown_run_uses_the_registered_handlers(client, emu, tmp_path):
    # r1lab.cloud.ledger registers the runpod kinds with r1lab.teardown when imported; each entry names its handler
    assert core._HANDLERS["runpod-pod"] == "r1lab.cloud.ledger:delete_pod"
    ledger = core.Ledger(tmp_path)
    vol = client.create_volume(cl.resource_name("t1", "volume"), 50, "EU-RO-1")
    cl.record(ledger, client, cl.KIND_VOLUME, vol["id"], vol["name"], size_gb=50)
    pod = client.create_pod(
        PodSpec(name="r1lab-t1-head", image="i", gpu_type=GPU, gpu_count=8, volume_id=vol["id"])
    )
    cl.record(ledger, client, cl.KIND_POD, pod["id"], pod["name"])
    # a create whose answer was lost: only the pending entry exists
    lost = make(client, "t1", "worker")
    cl.record(ledger, client, cl.KIND_POD, "pending:" + lost["name"], lost["name"])
    # a pod deleted behind our back: not found counts as done
    gone = make(client, "t1", "gone", ledger)
    client.terminate_pod(gone["id"])
    assert {e.get("handler") for e in core.Ledger(tmp_path).live()} == {
        "r1lab.cloud.ledger:delete_pod",
        "r1lab.cloud.ledger:delete_volume",
    }
    report = core.teardown_run(tmp_path)
    assert report.ok and len(report.deleted) == 4
    assert emu.pods == {} and emu.volumes == {}
    assert core.Ledger(tmp_path).live() == []
    assert KEY not in (tmp_path / "ledger.jsonl").read_text()


def test_reap_by_run_all_and_dry_run(client, emu, tmp_path, capsys):
    make(client, "runa", "head")
    make(client, "runa", "worker")
    make(client, "runb", "head")
    make(client, "runab", "head")  # another run whose id starts like runa's
    client.create_pod(PodSpec(name="someone-else", image="i", gpu_type=GPU, gpu_count=1))
    client.create_volume("r1lab-runa-volume", 10, "EU-RO-1")
    run_dir = tmp_path / "exp" / "runa"
    run_dir.mkdir(parents=True)
    led = core.Ledger(run_dir)
    for p in client.find_pods("r1lab-runa-head"):
        cl.record(led, client, cl.KIND_POD, p["id"], p["name"])
    args = ["--api-base", emu.url, "--outputs", str(tmp_path)]
    assert cl.cli_main(["reap", "--run", "runa", "--dry-run", *args]) == 0
    assert "would delete 3" in capsys.readouterr().out and len(emu.pods) == 5
    assert cl.cli_main(["--run", "runa", *args]) == 0
    out = capsys.readouterr().out
    assert "deleted 3" in out and "listed again: 0 left" in out
    names = sorted(r["name"] for r in emu.pods.values())
    assert names == ["r1lab-runab-head", "r1lab-runb-head", "someone-else"] and emu.volumes == {}
    assert led.live() == []  # the run's ledger learns what reap removed
    assert cl.cli_main(["--all", *args]) == 0
    assert [r["name"] for r in emu.pods.values()] == ["someone-else"]
    with pytest.raises(SystemExit):
        cl.cli_main(["--run", "x", "--all"])


def test_reap_reconciles_the_ledger_and_stops_local_processes(client, emu, tmp_path, capsys):
    run_dir = tmp_path / "exp" / "rund"
    run_dir.mkdir(parents=True)
    led = core.Ledger(run_dir)
    live = make(client, "rund", "head", led)
    gone = make(client, "rund", "worker", led)
    client.terminate_pod(gone["id"])  # deleted by the API already (a kill during teardown)
    led.record("pod-process", "head:123", "rund-frontend", "twin", host="head", pid=123)
    led.record("serve-daemons", "head:ray", "rund-ray", "twin", host="head", stop="ray stop")
    prom = subprocess.Popen(
        ["sleep", "300"], start_new_session=True
    )  # stands for Prometheus: a local program
    led.record("local-process", str(prom.pid), "rund-prometheus", "local", pid=prom.pid, pgid=prom.pid,
               command="sleep 300")  # fmt: skip
    reused = subprocess.Popen(
        ["cat"], stdin=subprocess.PIPE, start_new_session=True
    )  # a pid now someone else's
    led.record("local-process", str(reused.pid), "rund-exporter", "local", pid=reused.pid, pgid=reused.pid,
               command="/usr/bin/prometheus-node-exporter --web.listen-address=:9100")  # fmt: skip
    try:
        assert cl.cli_main(["--all", "--api-base", emu.url, "--outputs", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "listed again: 0 left" in out and live["id"] not in emu.pods
        assert f"stopped local rund-prometheus (pid {prom.pid})" in out
        assert f"local rund-exporter (pid {reused.pid}) already gone" in out
        prom.wait(timeout=10)  # reap's kill_group reaped it already (so its status reads 0 here): it is gone
        with pytest.raises(ProcessLookupError):
            os.kill(prom.pid, 0)
        assert reused.poll() is None  # not ours any more: left alone
        assert led.live() == []  # the pod the API had deleted, the pods' processes, the local processes
        closed = {e["id"]: e["meta"].get("by") for e in led.entries() if e["event"] == "deleted"}
        assert closed[gone["id"]] == "reap" and closed["head:123"] == "reap: its pod is gone"
    finally:
        for p in (prom, reused):
            p.kill()
            p.wait()


def test_teardown_of_a_twin_run_whose_twin_is_gone(tmp_path):
    """Resources on a twin that is down went with it: teardown says so and closes them, needing no key."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    led = core.Ledger(tmp_path)
    led.record(cl.KIND_POD, "p1", "r1lab-x-head", "twin", api_base=dead)
    led.record(cl.KIND_VOLUME, "v1", "r1lab-x-volume", "twin", api_base=dead)
    report = core.teardown_run(tmp_path)
    assert report.ok and len(report.deleted) == 2 and led.live() == []


def test_reap_reports_what_is_left(client, emu, monkeypatch):
    make(client, "runc", "head")
    monkeypatch.setattr(RunPodClient, "terminate_pod", lambda self, pid: True)  # a delete that does nothing
    report = cl.reap(client, "runc", settle_s=0.2)
    assert not report.ok and len(report.remaining) == 1 and "LEFT runpod-pod r1lab-runc-head" in str(report)


def test_prices_live_then_fallback(client, monkeypatch):
    assert gpu_price(GPU, "SECURE", client).source == "catalog"
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = RunPodClient(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    dead.retry.attempts = 1
    p = gpu_price(GPU, "SECURE", dead)
    assert (p.usd_per_gpu_hour, p.source) == (3.19, "fallback 2026-11-09")
    p = gpu_price(GPU, "SECURE", dead, {GPU: {"usd_per_gpu_hour": 2.5, "date": "2026-12-01"}})
    assert (p.usd_per_gpu_hour, p.source) == (2.5, "fallback 2026-12-01")
    with pytest.raises(Exception, match="cost.prices"):
        gpu_price("NVIDIA B300", "SECURE", dead)


def _at(h: float) -> str:
    base = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    return (base + dt.timedelta(hours=h)).isoformat()


TWIN = load_experiment(Path(__file__).resolve().parent.parent / "params" / "twin.yaml")


def test_run_cost_from_ledger():
    """The one pricing function (the budget guard's and the report's): each pod at the rate recorded at
    creation, from created to deleted (or now), the volume at its $/GB-month."""
    entries = [
        {"event": "created", "kind": "runpod-volume", "id": "v", "name": "r1lab-x-volume", "time": _at(0),
         "meta": {"size_gb": 1000}},
        {"event": "created", "kind": "runpod-pod", "id": "a", "name": "r1lab-x-head", "time": _at(1),
         "meta": {"usd_per_hour": 25.52}},
        {"event": "deleted", "kind": "runpod-pod", "id": "a", "time": _at(3), "meta": {}},
        {"event": "created", "kind": "runpod-pod", "id": "b", "name": "r1lab-x-worker", "time": _at(2),
         "meta": {"usd_per_hour": 10.0}},
    ]  # fmt: skip
    now = dt.datetime.fromisoformat(_at(4)).timestamp()
    cost = run_total(TWIN, entries, now=now)
    expected = 2 * 25.52 + 2 * 10.0 + 1000 * 0.07 * 4 / 730
    assert cost.usd == pytest.approx(expected) and cost.hours == pytest.approx(4.0)


def test_budget_guard_tears_down_at_the_cap(client, emu, tmp_path):
    led = core.Ledger(tmp_path)
    pod = make(client, "bud", "head", led)  # $25.52/h
    now = [time.time()]
    tripped = []
    guard = BudgetGuard(
        tmp_path, TWIN, max_usd=5.0, max_hours=10, clock=lambda: now[0], on_trip=tripped.append
    )
    assert guard.check().tripped is None and emu.pods
    now[0] += 3600 * 0.25  # $6.38 spent
    st = guard.check()
    assert st.tripped and "cost $6.38" in st.tripped
    assert pod["id"] not in emu.pods and led.live() == []
    budget = json.loads((tmp_path / "budget.json").read_text())
    assert budget["tripped"] == st.tripped and budget["priced_by"] == "r1lab.cost.run_total"
    assert [t.tripped for t in tripped] == [st.tripped]
    with pytest.raises(Exception, match="budget guard tore the run down"):
        guard.raise_if_tripped()


def test_budget_guard_time_cap_on_its_thread(client, emu, tmp_path):
    make(client, "bud2", "head", core.Ledger(tmp_path))
    beats = []
    with BudgetGuard(
        tmp_path, TWIN, max_usd=1e9, max_hours=0.3 / 3600, poll_s=0.1, heartbeats=[lambda: beats.append(1)]
    ) as g:
        deadline = time.monotonic() + 5
        while not g.tripped and time.monotonic() < deadline:
            time.sleep(0.05)
    assert g.tripped and "run time" in g.tripped and emu.pods == {} and beats


def test_start_command_roundtrip_and_syntax(tmp_path):
    key = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILXGDN/SclOozk1xsDztpmhGiKkkrfQB9SKoO8dSIQQZ it\'s "quoted"'
    script = start_script(key, deadline_epoch=123, heartbeat_timeout_s=600)
    args = start_command(script)
    assert args.startswith("bash -c 'echo ") and args.endswith(" | base64 -d | bash'")
    b64 = args.split()[3]
    assert set(b64) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    assert base64.b64decode(b64).decode() == script
    assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0
    # the key line survives quoting: run just the authorized_keys part in a scratch HOME
    part = "\n".join(line for line in script.splitlines() if "ssh" in line and "sshd" not in line)
    subprocess.run(["bash", "-c", part], env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]}, check=True)
    assert (tmp_path / ".ssh" / "authorized_keys").read_text() == key + "\n"


def _watchdog(tmp_path: Path, **env: str) -> subprocess.Popen:
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "runpodctl").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/runpodctl.calls\n')
    (fake / "runpodctl").chmod(0o755)
    full = {
        "PATH": f"{fake}:{os.environ['PATH']}",
        "RUNPOD_POD_ID": "pod123",
        "R1LAB_DIR": str(tmp_path / "state"),
        "R1LAB_WATCHDOG_POLL_S": "0.2",
        "R1LAB_WATCHDOG_RETRY_S": "30",
    } | env
    return subprocess.Popen(["bash", "-c", WATCHDOG + "\nr1lab_watchdog"], env=full, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 9)
    proc.wait()


@pytest.mark.parametrize("trigger", ["heartbeat", "deadline"])
def test_pod_side_watchdog_removes_the_pod(tmp_path, trigger):
    env = {"R1LAB_HEARTBEAT_TIMEOUT_S": "2"} if trigger == "heartbeat" else {
        "R1LAB_DEADLINE_EPOCH": str(int(time.time()) + 2)}  # fmt: skip
    proc = _watchdog(tmp_path, **env)
    try:
        calls = tmp_path / "runpodctl.calls"
        deadline = time.monotonic() + 8
        # the fake's `>>` creates the file before its echo writes: wait for the whole line, not the file
        while not (calls.exists() and calls.read_text().endswith("\n")) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        _stop(proc)
    assert (tmp_path / "runpodctl.calls").read_text() == "remove pod pod123\n"
    assert "removing pod pod123" in (tmp_path / "state" / "watchdog.log").read_text()


def test_watchdog_spares_a_pod_with_heartbeats(tmp_path):
    proc = _watchdog(tmp_path, R1LAB_HEARTBEAT_TIMEOUT_S="2")
    try:
        for _ in range(15):  # 3 s of heartbeats every 0.2 s
            (tmp_path / "state").mkdir(exist_ok=True)
            (tmp_path / "state" / "heartbeat").touch()
            time.sleep(0.2)
    finally:
        _stop(proc)
    assert not (tmp_path / "runpodctl.calls").exists()
