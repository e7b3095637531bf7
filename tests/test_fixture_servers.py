"""Servers that tests start die with the test process: a pytest killed mid-run (SIGTERM, as a CI timeout sends)
leaves no emulator, no sshd and no sshd state directory behind (tests/procguard.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import procguard

REPO = Path(__file__).resolve().parent.parent

INNER = r"""
import json, os, subprocess, sys, time, urllib.request
from r1lab.cloud.emulator import Emulator, LocalSshdBackend, Timings

KEY = "rpa_GUARDTESTKEY0123456789abcdefgh"
PUB = open(os.environ["GUARD_PUB"]).read().strip()


def call(url, method, path, body=None):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode() if body else None, method=method)
    req.add_header("Authorization", f"Bearer {KEY}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def running_pod(url):
    call(url, "PUT", "/v2/account/ssh-keys", {"keys": [PUB]})
    pod = call(url, "POST", "/v2/pods", {"name": "r1lab-guard", "image": "i", "gpu": {"id": "NVIDIA H200", "count": 1},
                                         "ports": ["22/tcp"], "startSsh": True})
    deadline = time.monotonic() + 20
    while (call(url, "GET", f"/v2/pods/{pod['id']}")["ssh"]["direct"] is None):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_hold(tmp_path):
    backend = LocalSshdBackend()
    emu = Emulator(api_key=KEY, backend=backend, timings=Timings(0.05, 0.05, 0.05)).start()
    running_pod(emu.url)
    state = tmp_path / "emu"
    env = dict(os.environ, RUNPOD_API_KEY=KEY)
    cmd = [sys.executable, "-m", "r1lab.cloud.emulator", "--state-dir", str(state), "--backend", "local-sshd",
           "--provision-s", "0.05", "--start-s", "0.05", "--ports-delay-s", "0.05"]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (state / "url").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    running_pod((state / "url").read_text().strip())
    sshd = [int(p.read_text()) for p in backend.work_dir.glob("*/sshd.pid")]
    info = {"token": os.environ["R1LAB_TEST_SESSION"], "emulator": proc.pid, "sshd": sshd,
            "dirs": [str(backend.work_dir), *map(str, (state / "pods").glob("*"))]}
    ready = tmp_path.parent.parent / "ready.json"
    ready.with_suffix(".tmp").write_text(json.dumps(info))
    ready.with_suffix(".tmp").replace(ready)  # whole once it exists: the outer test reads it at once
    time.sleep(300)
"""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_to_pytest_leaves_no_emulator_and_no_sshd(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    (tmp_path / "test_inner.py").write_text(INNER)
    base = tmp_path / "base"
    env = dict(os.environ, GUARD_PUB=str(tmp_path / "k.pub"), PYTHONPATH=str(REPO / "tests"))
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "procguard", "-p", "no:cacheprovider", "--basetemp", str(base),
         "-o", "timeout=120", str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    info = None
    try:
        deadline = time.monotonic() + 90
        while not (tmp_path / "ready.json").exists():
            assert inner.poll() is None, inner.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the inner test session did not come up"
            time.sleep(0.1)
        info = json.loads((tmp_path / "ready.json").read_text())
        # the inner watchdog records parentage once a second: wait for two scans begun after its sshd was up
        first = procguard.scans(info["token"])
        while procguard.scans(info["token"]) < first + 2:
            assert time.monotonic() < deadline, "the inner session's watchdog did not scan"
            time.sleep(0.1)
        pids = [info["emulator"], *info["sshd"]]
        assert len(info["sshd"]) == 1 and all(alive(p) for p in pids)
        assert info["emulator"] in procguard.tagged(info["token"])
        inner.send_signal(signal.SIGTERM)  # as a CI timeout does: no finalizer runs
        inner.wait(timeout=10)
        assert inner.returncode == -signal.SIGTERM
        deadline = time.monotonic() + procguard.GRACE_S + 10
        while (
            procguard.tagged(info["token"]) or any(alive(p) for p in pids) or Path(info["dirs"][0]).exists()
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(p) for p in pids), [p for p in pids if alive(p)]
        assert procguard.tagged(info["token"]) == []
        assert not Path(info["dirs"][0]).exists()  # the in-process backend's sshd state directory
    finally:
        if inner.poll() is None:
            inner.kill()
        if info:
            procguard.reap(info["token"], grace_s=1)
