"""SSH to emulated pods backed by real sshd processes (LocalSshdBackend): exec, background, files, forwards,
host-key pinning, and the full wait-ready chain RUNNING -> endpoint -> TCP -> `ssh true`."""

from __future__ import annotations

import http.server
import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from r1lab.cloud.emulator import Emulator, LocalSshdBackend, Timings
from r1lab.cloud.pods import (
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    run_ssh_key,
)
from r1lab.cloud.provision import PodPlan, Provisioner
from r1lab.cloud.runpod import RunPodClient

KEY = "rpa_SSHTESTKEY0123456789abcdefghi"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("RUNPOD_API_KEY", KEY)
    mp.setenv("R1LAB_PROGRESS", "plain")
    run_dir = tmp_path_factory.mktemp("run") / "ssh1"
    run_dir.mkdir()
    backend = LocalSshdBackend(tmp_path_factory.mktemp("pods"))
    emu = Emulator(api_key=KEY, backend=backend, timings=Timings(0.1, 0.1, 0.3)).start()
    client = RunPodClient(base_url=emu.url)
    prov = Provisioner(run_dir, "ssh1", client=client, poll_s=0.1)
    prov.ensure_key()
    steps: list[str] = []
    prov.on_step = steps.append
    pods = prov.pods([PodPlan("head", "img", "NVIDIA H100 NVL", 8, ports=["22/tcp", "8000/http"])])
    yield {"emu": emu, "client": client, "prov": prov, "pod": pods[0], "run_dir": run_dir, "steps": steps}
    for p in pods:
        p.ssh.close()
    from r1lab.cloud.ledger import teardown

    assert teardown(run_dir).ok
    assert backend.running() == []
    emu.stop()
    assert emu.spec_violations == []
    mp.undo()


def test_wait_ready_went_through_every_step(env):
    assert env["steps"] == ["create:head", "created:head", "wait:head"]
    pod = env["pod"]
    assert pod.pod["status"] == "RUNNING" and pod.ssh.port == pod.pod["ssh"]["direct"]["port"]


def test_exec_streams_and_returns_exit_codes(env):
    ssh = env["pod"].ssh
    lines: list[tuple[str, str]] = []
    r = ssh.run("echo one; echo two >&2; echo three", stream=lambda s, line: lines.append((s, line)))
    assert r.ok and r.stdout == "one\nthree\n" and r.stderr == "two\n"
    assert ("stdout", "one") in lines and ("stderr", "two") in lines
    assert ssh.run("exit 7", check=False).exit_code == 7
    with pytest.raises(CommandFailed, match="exited 3: boom"):
        ssh.run("echo boom >&2; exit 3")
    assert ssh.run("echo $FOO", env={"FOO": "a b'c"}).stdout == "a b'c\n"
    assert ssh.run("cat", stdin="fed\n").stdout == "fed\n"
    t = time.monotonic()
    with pytest.raises(CommandTimeout):
        ssh.run("sleep 30", timeout_s=1)
    assert time.monotonic() - t < 10


def test_background_process_with_log_and_pid(env, tmp_path):
    ssh = env["pod"].ssh
    bg = ssh.start_background("echo started; sleep 60", "sleeper", log_dir=str(tmp_path / "logs"))
    assert bg.pid > 0 and ssh.is_running(bg.pid)
    deadline = time.monotonic() + 60  # each tail is an SSH round trip: seconds apart when loaded
    while "started" not in ssh.tail(bg.log) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "started" in ssh.tail(bg.log)
    ssh.stop_background(bg, grace_s=2)
    assert not ssh.is_running(bg.pid)


def test_upload_download(env, tmp_path):
    ssh = env["pod"].ssh
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    remote = tmp_path / "remote"
    ssh.upload(src, str(remote))
    assert ssh.run(f"cat {remote}/a.txt").stdout == "alpha"
    back = tmp_path / "back"
    ssh.download(str(remote), back)
    assert (back / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()


def test_port_forward_reaches_a_private_port(env):
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"private")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with env["pod"].ssh.forward(srv.server_address[1]) as fwd:
            assert fwd.local_port != srv.server_address[1]
            with urllib.request.urlopen(fwd.url, timeout=10) as r:
                assert r.read() == b"private"
    finally:
        srv.shutdown()
        srv.server_close()


def test_heartbeats_reach_the_pod_while_it_is_live(env):  # before the host-key test replaces the pod's key
    from r1lab.cloud import heartbeat
    from r1lab.teardown import Ledger

    pod = env["pod"]
    marker = Path(
        "/tmp/r1lab-pod/heartbeat"
    )  # what the pod's watchdog reads (the local sshd pod is this host)
    before = marker.stat().st_mtime if marker.exists() else 0.0
    time.sleep(0.05)
    heartbeat.keep_alive(env["run_dir"], pod.id, pod.ssh)
    assert heartbeat.beat_once()[pod.id] == "ok"
    assert marker.stat().st_mtime > before
    # a pod the ledger no longer holds gets no more heartbeats (a released utility pod, a torn-down run)
    other = env["run_dir"].parent / "hb-other"
    other.mkdir(exist_ok=True)
    heartbeat.keep_alive(other, "not-in-any-ledger", pod.ssh)
    assert heartbeat.beat_once() == {pod.id: "ok", "not-in-any-ledger": "gone"}
    assert Ledger(other).entries() == []
    with heartbeat._LOCK:
        heartbeat._PODS.pop(pod.id, None)


def test_host_key_is_pinned_and_a_changed_key_refused(env):
    pod = env["pod"]
    pins = env["run_dir"] / "ssh" / "known_hosts.json"
    assert pod.id in pins.read_text()
    # the pod comes back with another host key on the same address: refuse
    backend = env["emu"].backend
    host_key = Path(backend.work_dir) / pod.id / "ssh_host_ed25519_key"
    pod.ssh.close()
    with env["emu"].lock:
        rec = env["emu"].pods[pod.id]
        backend.stop(pod.id)
        host_key.unlink()
        Path(str(host_key) + ".pub").unlink()
        new = backend.start(env["emu"].render_pod(rec), rec["public_keys"])
        rec["host"]["ports"] = new.ports
    fresh = env["prov"].ssh(env["client"].get_pod(pod.id))
    with pytest.raises(HostKeyMismatch, match="pinned"):
        fresh.run("true")
    fresh.close()


def test_run_key_is_generated_per_run_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("R1LAB_SSH_KEY", raising=False)
    k1 = run_ssh_key(tmp_path)
    assert (tmp_path / "ssh" / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert run_ssh_key(tmp_path).public_line == k1.public_line
    other = tmp_path / "other"
    k2 = run_ssh_key(other)
    assert k2.public_line != k1.public_line
    assert run_ssh_key(tmp_path / "x", str(other / "ssh" / "id_ed25519.pub")).public_line == k2.public_line
    monkeypatch.setenv("R1LAB_SSH_KEY", str(tmp_path / "missing"))
    with pytest.raises(Exception, match="R1LAB_SSH_KEY"):
        run_ssh_key(tmp_path / "y")


def test_instant_cluster_members_are_ready_over_ssh(env):
    prov = env["prov"]
    members = prov.cluster(PodPlan("node", "img", "NVIDIA H100 80GB HBM3", 8, ports=["22/tcp"]), nodes=2)
    assert [m.role for m in members] == ["node-0", "node-1"]
    assert {m.pod["cluster"]["rank"] for m in members} == {0, 1}
    for m in members:
        assert m.ssh.run("echo up").stdout == "up\n"
        m.ssh.close()
    live = [e for e in prov.ledger.live() if e["kind"] == "runpod-cluster"]
    assert len(live) == 1 and live[0]["meta"]["usd_per_hour"] > 0  # torn down with the run (fixture)
