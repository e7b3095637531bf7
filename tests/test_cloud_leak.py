"""Leak test: abort a two-pod provisioning at each of its steps (exception, SIGINT, SIGKILL of the runner
followed by `r1lab reap`) and show that no pod, volume or sshd is left each time, and that the planted API key
appears in no log or output.

The emulator runs as its own process (real sshd per pod), as the twin runs it; each runner is a separate
Python process that provisions through the same code a notebook uses, inside `guarded()` (the runner's
teardown-in-finally), and is aborted from its `on_step` hook.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from r1lab.cloud.runpod import RunPodClient
from r1lab.teardown import Ledger

KEY = "rpa_LEAKTESTPLANTEDKEY0123456789ab"
STEPS = [
    "ssh-key",
    "volume",
    "create:head",
    "created:head",
    "create:worker",
    "created:worker",
    "wait:head",
    "wait:worker",
    "ready",
]

RUNNER = r"""
import os, signal, sys, time
from pathlib import Path
from r1lab.cloud.ledger import guarded
from r1lab.cloud.provision import PodPlan, Provisioner
from r1lab.cloud.runpod import RunPodClient

run_dir, run_id, abort_at, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
GPU = "NVIDIA H100 NVL"

def on_step(step):
    print(f"step {step} (key {os.environ['RUNPOD_API_KEY']})", flush=True)  # goes through no redaction
    if step != abort_at:
        return
    if mode == "exception":
        raise RuntimeError(f"abort at {step}")
    if mode == "sigint":
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
        return
    (run_dir / "at-step").write_text(step)
    time.sleep(120)  # wait to be SIGKILLed

with guarded(run_dir):
    client = RunPodClient(log=print)
    p = Provisioner(run_dir, run_id, client=client, on_step=on_step, poll_s=0.1, pod_deadline_hours=1)
    p.ensure_key()
    vol = p.volume(10, "EU-RO-1")
    plans = [PodPlan("head", "img", GPU, 8, data_center="EU-RO-1", ports=["22/tcp", "8000/http"]),
             PodPlan("worker", "img", GPU, 8, data_center="EU-RO-1")]
    pods = p.pods(plans, vol)
    for rp in pods:
        rp.ssh.run("true")
    on_step("ready")
    for rp in pods:
        rp.ssh.close()
print("runner finished", flush=True)
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    state = tmp_path_factory.mktemp("emulator")
    env = dict(os.environ, RUNPOD_API_KEY=KEY)
    cmd = [sys.executable, "-m", "r1lab.cloud.emulator", "--port", "0", "--state-dir", str(state)]
    cmd += [
        "--backend",
        "local-sshd",
        "--provision-s",
        "0.2",
        "--start-s",
        "0.2",
        "--ports-delay-s",
        "0.2",
        "--stock",
        "128",
    ]
    out, err = state / "stdout", state / "stderr"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (state / "url").exists():
        assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
        time.sleep(0.05)
    url = (state / "url").read_text().strip()
    yield {"url": url, "state": state, "proc": proc}
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert proc.returncode == 0
    for f in (out, err, state / "state.json"):
        assert KEY not in f.read_text(), f


def emulator_state(url: str) -> dict:
    req = urllib.request.Request(url + "/_emulator/state", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def abort_once(url: str, root: Path, step: str, mode: str) -> dict:
    run_id = f"{mode}-{step.replace(':', '-')}"
    run_dir = root / "leak" / run_id
    run_dir.mkdir(parents=True)
    script = root / "runner.py"
    env = dict(os.environ, RUNPOD_API_KEY=KEY, RUNPOD_API_BASE=url, R1LAB_PROGRESS="plain")
    env.pop("R1LAB_SSH_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), run_id, step, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
    )
    if mode == "sigkill":
        deadline = time.monotonic() + 60
        while not (run_dir / "at-step").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    output = proc.communicate(timeout=120)[0]
    result = {"run_id": run_id, "run_dir": run_dir, "rc": proc.returncode, "output": output, "reap": None}
    if mode == "sigkill":
        reap = subprocess.run(
            [sys.executable, "-m", "r1lab.cloud.ledger", "reap", "--run", run_id, "--outputs", str(root)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        result["reap"] = reap
    return result


def left_over(url: str, run_id: str) -> list[str]:
    c = RunPodClient(api_key=KEY, base_url=url)
    prefix = f"r1lab-{run_id}-"
    names = [p["name"] for p in c.list_pods(include_cluster_pods=True)]
    names += [v["name"] for v in c.list_volumes()] + [x["name"] for x in c.list_clusters()]
    return [n for n in names if n.startswith(prefix)]


@pytest.mark.parametrize("mode", ["exception", "sigint", "sigkill"])
def test_abort_at_every_step_leaves_nothing(emulator, tmp_path, mode):
    url = emulator["url"]
    (tmp_path / "runner.py").write_text(RUNNER)
    # One abort at a time: concurrent runs on one account race on its SSH-key list (PUT replaces it whole, a lost
    # update RunPod's API cannot prevent; teardown and reap re-check for it), which is not what this test is about.
    with ThreadPoolExecutor(max_workers=1) as pool:
        results = list(pool.map(lambda s: abort_once(url, tmp_path, s, mode), STEPS))
    for step, r in zip(STEPS, results, strict=True):
        where = f"{mode} at {step}:\n{r['output'][-3000:]}"
        assert f"step {step}" in r["output"], where
        if mode == "exception":
            assert r["rc"] == 1 and f"RuntimeError: abort at {step}" in r["output"], where
        elif mode == "sigint":
            assert r["rc"] != 0 and "KeyboardInterrupt" in r["output"], where
        else:
            assert r["rc"] == -signal.SIGKILL, where
            assert r["reap"].returncode == 0 and "listed again: 0 left" in r["reap"].stdout, (
                r["reap"].stdout + r["reap"].stderr
            )
            assert KEY not in r["reap"].stdout + r["reap"].stderr
        if mode != "sigkill" and step != "ssh-key":
            assert "teardown:" in r["output"] and "0 failed" in r["output"], where
        assert left_over(url, r["run_id"]) == [], where
        assert Ledger(r["run_dir"]).live() == [], where
        # the planted key is in no file of the run directory; the runner printed it to its own stdout on
        # purpose (not a run file), which proves the scan would see it
        assert KEY in r["output"]
        for f in r["run_dir"].rglob("*"):
            if f.is_file():
                assert KEY.encode() not in f.read_bytes(), f
    state = emulator_state(url)
    assert state["pods"] == [] and state["volumes"] == [] and state["clusters"] == [], state
    assert state["ssh_keys"] == [] and state["backend_running"] == [] and state["spec_violations"] == []
