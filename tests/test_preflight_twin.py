"""Preflight on twin pods (real SSH, real sockets between the pods' namespaces, the twin's shaped link).

Each fault is made the way it happens on a real pod, inside one pod only: an iptables rule dropping a plan port,
a 64 MB /dev/shm (the container default), etcd and nats-server absent. Absent binaries: today's twin pods still
see the host's /usr/bin, so the test masks them inside the head pod's own mount namespace (an empty,
non-executable file bound over each) - to `command -v` and to the preflight that is a pod without them, as a bare
pod whose head setup lacks `apt-get install etcd-server nats-server` will be (issue #16 items 1-2).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from r1lab.cloud.pods import HostKeyStore
from r1lab.cloud.provision import PodPlan, Provisioner
from r1lab.cloud.runpod import RunPodClient
from r1lab.cloud.twin import Twin
from r1lab.cloud.twin.sshexec import SshExecutor
from r1lab.config import load_experiment
from r1lab.preflight import PreflightError, run_preflight
from r1lab.teardown import teardown_run
from r1lab.tinymodel import write_tiny_model

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    if os.geteuid() != 0:
        pytest.fail("the twin needs root (network namespaces); CI runs as root")
    tmp = tmp_path_factory.mktemp("preflight")
    exp = load_experiment(REPO / "params" / "twin.yaml")
    run_dir = tmp / "run"
    run_dir.mkdir()
    twin = Twin.up(tmp / "twin", exp.provider.network)
    old = {k: os.environ.get(k) for k in twin.client_env()}
    os.environ.update(twin.client_env())
    try:
        prov = Provisioner(run_dir, "pf", client=RunPodClient(), poll_s=0.3, ready_timeout_s=120)
        prov.ensure_key()
        vol = prov.volume(exp.volume.size_gb, exp.provider.data_center)
        plans = [
            PodPlan(p.role, p.image, p.gpu_type, p.gpu_count, data_center=exp.provider.data_center,
                    ports=["22/tcp"], volume_mount=exp.volume.mount, global_networking=True)
            for p in exp.serving_pods
        ]  # fmt: skip
        ready = {r.role: r for r in prov.pods(plans, vol)}
        known = HostKeyStore(run_dir / "ssh" / "known_hosts.json")
        ex = {role: SshExecutor.for_pod(r.pod, prov.key, known, role) for role, r in ready.items()}
        ex["head"].put(write_tiny_model(tmp / "tiny"), exp.model.path)
        yield exp, ex, twin, run_dir
    finally:
        try:
            teardown_run(run_dir)
        finally:
            twin.down()
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def test_clean_pods_pass_every_check_of_the_dynamo_stage(pods) -> None:
    exp, ex, _, run_dir = pods
    t0 = time.monotonic()
    pf = run_preflight(exp, "dynamo", ex, run_dir=run_dir)
    took = time.monotonic() - t0
    assert not pf.failures, pf.failures
    checks = {(c.pod, c.check): c for c in pf.checks}
    assert (
        checks[("head", "binary etcd")].status == "ok"
        and checks[("head", "binary nats-server")].status == "ok"
    )
    assert checks[("head", "GPUs")].source == "declared (twin)"
    assert checks[("worker", "private interface")].found == "eth0"
    ports = {c.check for c in pf.checks if c.check.startswith("TCP worker -> head:")}
    assert any(":2379 (etcd" in p for p in ports) and any(":4222 (NATS" in p for p in ports)
    bw = checks[("worker", "bandwidth worker -> head")]
    mbit = float(bw.found.split()[0].replace(",", ""))
    # measured through the twin's link, shaped to RunPod's documented 100 Mbit/s (a busy 2-core host may reach
    # less: then the row warns, it does not fail)
    assert 5 < mbit < 130 and bw.status in ("ok", "warn"), bw
    assert (run_dir / "preflight-dynamo.json").exists()
    assert took < 60, took
    for pod in ("head", "worker"):  # its listeners are gone: the stage can bind the plan's ports
        assert (
            ex[pod]
            .run("ss -Hltn | grep -E ':(2379|4222|5600|5601|7600|9090|9091|40123|39123) ' || true")
            .output.strip()
            == ""
        )
    from r1lab.preflight import table

    assert set(table(run_dir, "dynamo")["status"]) <= {"ok", "warn"}
    # 01's checks (the utility pod's role is played by the head here): Python and pip, the volume against the weights
    env = run_preflight(
        exp, "environment", {"head": ex["head"]}, weights_bytes=1e6, run_dir=run_dir, show=None
    )
    rows = {c.check: c for c in env.checks}
    assert (
        rows["huggingface_hub or pip"].status == "ok"
        and rows["volume free space (/workspace)"].status == "ok"
    )
    assert rows["binary python3"].status == "ok"
    with pytest.raises(PreflightError, match="volume free space"):
        run_preflight(exp, "environment", {"head": ex["head"]}, weights_bytes=1e18, show=None)


def test_a_plan_port_blocked_in_one_pod_fails_naming_the_port(pods) -> None:
    """(iii) an iptables rule in the head pod drops Ray's GCS port: the worker cannot join."""
    exp, ex, _, _ = pods
    rule = "INPUT -p tcp --dport 6379 -j DROP"
    ex["head"].run(f"iptables -I {rule}")  # inside the head pod's own network namespace, over SSH
    try:
        t0 = time.monotonic()
        with pytest.raises(PreflightError) as exc:
            run_preflight(exp, "multi", ex, show=None)
        assert time.monotonic() - t0 < 60
    finally:
        ex["head"].run(f"iptables -D {rule}")
    msg = str(exc.value)
    assert exc.value.check.pod == "worker"
    assert "worker -> head:6379 (Ray GCS)" in msg and "timed out" in msg and "open TCP 6379" in msg


def test_a_64mb_dev_shm_fails_naming_it(pods) -> None:
    """(iv) the container default /dev/shm (64 MB) on the worker pod."""
    exp, ex, _, _ = pods
    ex["worker"].run("mount -o remount,size=64m /dev/shm")
    try:
        with pytest.raises(PreflightError) as exc:
            run_preflight(exp, "multi", ex, show=None)
    finally:
        ex["worker"].run("mount -o remount,size=16g /dev/shm")
    assert exc.value.check.pod == "worker" and exc.value.check.check == "/dev/shm"
    assert "found 0.1 GiB" in str(exc.value) and ">= 8 GB" in str(exc.value)


def test_a_head_without_etcd_and_nats_fails_naming_the_binary(pods) -> None:
    """(i) a params file whose head setup lacks etcd and nats-server: on a pod without them, Dynamo's stage fails
    in preflight, naming the binary, before anything is launched."""
    import yaml

    from r1lab.config import parse_experiment

    _, ex, _, _ = pods
    data = yaml.safe_load((REPO / "params" / "twin.yaml").read_text())
    head_setup = data["pods"][0]["setup"]
    data["pods"][0]["setup"] = [line for line in head_setup if "etcd" not in line and "nats" not in line]
    assert (
        len(data["pods"][0]["setup"]) == len(head_setup) - 1
    )  # twin.yaml's head installs both; this one not
    exp = parse_experiment(yaml.safe_dump(data), "no-etcd.yaml")
    head = ex["head"]
    masked = [head.run(f"command -v {b}").output.strip() for b in ("etcd", "nats-server")]
    head.run(
        "touch /run/r1lab-absent && " + " && ".join(f"mount --bind /run/r1lab-absent {p}" for p in masked)
    )
    try:
        assert head.run("etcd --version", check=False).code != 0  # cannot run: as good as not installed
        with pytest.raises(PreflightError) as exc:
            run_preflight(exp, "dynamo", ex, show=None)
    finally:
        head.run(" ; ".join(f"umount {p}" for p in masked), check=False)
    assert exc.value.check.pod == "head" and exc.value.check.check == "binary etcd"
    assert "not found on PATH" in str(exc.value) and "apt-get install -y etcd-server nats-server" in str(
        exc.value
    )
