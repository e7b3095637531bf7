"""Remote mode: the generator shipped as a bundle, run on the far side of a shell, records brought back.
LocalShell always; a real sshd on loopback (root) as the integration case."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from r1lab.bench import gtserver
from r1lab.bench.client import completion_body
from r1lab.bench.records import read_jsonl
from r1lab.bench.remote import LocalShell, SSHShell, run_remote
from r1lab.bench.shapes import Shape


def points():
    b = [(completion_body("gt", "completions", f"p{i}", 5), 2) for i in range(4)]
    return [
        {"scenario": "near", "shape": Shape("concurrency", concurrency=4, requests=20), "bodies": b},
        {"scenario": "near", "shape": Shape("poisson", rate=50.0, requests=15), "bodies": b, "seed": 1},
        {"scenario": "near", "shape": Shape("trace", offsets=(0.0, 0.05, 0.1)), "bodies": b},
    ]


def check(run_dir, got):
    assert got == [run_dir / "load" / "near" / "requests.jsonl"]
    recs = read_jsonl(got[0])
    assert len(recs) == 38 and all(r["error"] is None for r in recs)
    assert {(r["point"], r["loop"]) for r in recs} == {("c4", "closed"), ("r50", "open"), ("trace3", "open")}


def test_run_remote_over_a_local_shell(tmp_path):
    with gtserver.running(ttft_ms=10, itl_ms=2, log=tmp_path / "t") as url:
        got = run_remote(LocalShell(tmp_path / "pod"), url=url, points=points(), run_dir=tmp_path / "run",
                         python=sys.executable)  # fmt: skip
    check(tmp_path / "run", got)
    assert (tmp_path / "pod" / "r1lab-load" / "bundle.zip").exists()


@pytest.mark.integration
def test_run_remote_over_real_ssh(tmp_path):
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if os.geteuid() != 0 or not os.path.exists(sshd):
        pytest.fail("needs root and openssh-server (scripts/bootstrap.sh installs it)")
    for name in ("host", "user"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True
        )
    (tmp_path / "authorized_keys").write_text((tmp_path / "user.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "sshd_config"
    cfg.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path / 'host'}\nPidFile {tmp_path / 'pid'}\n"
                   f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\nStrictModes no\nUsePAM no\n"
                   "PermitRootLogin prohibit-password\nPasswordAuthentication no\n")  # fmt: skip
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(
        [sshd, "-D", "-e", "-f", str(cfg)], stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        shell = SSHShell("127.0.0.1", port=port, key=str(tmp_path / "user"),
                         options=["-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}"])  # fmt: skip
        deadline = time.monotonic() + 60  # sshd is up within a second when quiet; a loaded machine is slower
        while shell.run("true")[0] != 0:
            assert proc.poll() is None and time.monotonic() < deadline, "sshd did not come up"
            time.sleep(0.1)
        with gtserver.running(ttft_ms=10, itl_ms=2, log=tmp_path / "t") as url:
            got = run_remote(shell, url=url, points=points(), run_dir=tmp_path / "run",
                             remote_dir=str(tmp_path / "pod"), python=sys.executable)  # fmt: skip
        check(tmp_path / "run", got)
    finally:
        proc.terminate()
        proc.wait(10)


def test_run_load_from_a_pod_shell(tmp_path):
    from r1lab.bench.scenarios import run_load
    from r1lab.config import Load, Scenario
    from r1lab.tinymodel import write_tiny_model

    load = Load(scenarios=[Scenario(name="near", concurrency=[2, 4], input_tokens=40, output_tokens=4,
                                    requests_per_point=10)])  # fmt: skip
    with gtserver.running(ttft_ms=5, itl_ms=2, log=tmp_path / "t") as url:
        got = run_load(load, url=url, model_dir=write_tiny_model(tmp_path / "tiny"), model="gt",
                       run_dir=tmp_path / "run", shell=LocalShell(tmp_path / "pod"))  # fmt: skip
    recs = got["near"]
    assert len(recs) == 20 and {r["point"] for r in recs} == {"c2", "c4"}
    assert all(r["error"] is None and r["output_tokens"] == 4 for r in recs)
    assert (tmp_path / "run" / "logs" / "loadgen-remote.log").read_text().count("done in") == 2


def test_run_remote_through_an_r1lab_executor(tmp_path):
    """The same path the pods' SSH executors take (r1lab.execution's interface), here on this machine."""
    from r1lab.bench.remote import ExecutorShell
    from r1lab.execution import LocalExecutor

    with gtserver.running(ttft_ms=10, itl_ms=2, log=tmp_path / "t") as url:
        got = run_remote(ExecutorShell(LocalExecutor()), url=url + "/v1", points=points(), run_dir=tmp_path / "run",
                         remote_dir=str(tmp_path / "pod"), python=sys.executable)  # fmt: skip
    check(tmp_path / "run", got)  # an OpenAI base URL ending in /v1 works as well
