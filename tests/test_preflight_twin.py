"""Preflight on twin pods (real SSH, real sockets between the pods' namespaces, the twin's shaped link).

The pods are bare (the twin's default: their own root filesystem over the base image standing in for the params'
image) and set up with the params' own setup lines over SSH, as on RunPod. Each fault is made the way it happens on
a real pod, inside one pod only: an iptables rule dropping a plan port, a 64 MB /dev/shm (the container default),
and a head whose setup lacks `apt-get install etcd-server nats-server`: the pod never had them.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from r1lab.cloud.pods import HostKeyStore
from r1lab.cloud.provision import PodPlan, Provisioner
from r1lab.cloud.runpod import RunPodClient
from r1lab.cloud.twin import Twin
from r1lab.cloud.twin.setuplines import plan_line
from r1lab.cloud.twin.sshexec import SshExecutor
from r1lab.config import load_experiment, parse_experiment
from r1lab.preflight import PreflightError, run_preflight
from r1lab.steps import SHM_COMMAND
from r1lab.teardown import teardown_run
from r1lab.tinymodel import write_tiny_model

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parent.parent


def _without_etcd(setup: list[str]) -> list[str]:
    return [line for line in setup if "etcd" not in line and "nats" not in line]


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    if os.geteuid() != 0:
        pytest.fail("the twin needs root (network namespaces); CI runs as root")
    tmp = tmp_path_factory.mktemp("preflight")
    exp = load_experiment(REPO / "params" / "twin.yaml")
    run_dir = tmp / "run"
    run_dir.mkdir()
    twin = Twin.up(tmp / "twin", exp.provider.network, pods="bare")
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
        setup = {
            p.role: [plan_line(line, exp.serving.engine).ran for line in p.setup] for p in exp.serving_pods
        }
        assert len(_without_etcd(setup["head"])) == len(setup["head"]) - 1  # twin.yaml's head installs both

        # as `steps.ensure_pods` does: /dev/shm as RunPod's guide asks, then the setup lines (GPU-only reqs out)
        def run_setup(role: str, lines: list[str]) -> None:
            ex[role].run(SHM_COMMAND, timeout=60, check=False)
            ex[role].run("set -e; " + "; ".join(lines), timeout=600)

        # (i) first, on pods that never had etcd: the params' setup without the apt line, then a preflight of
        # a params file whose head setup lacks it; then the missing line, and the pods are as twin.yaml makes them
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(run_setup, ["head", "worker"], [_without_etcd(setup["head"]), setup["worker"]]))
        data = yaml.safe_load((REPO / "params" / "twin.yaml").read_text())
        data["pods"][0]["setup"] = _without_etcd(data["pods"][0]["setup"])
        no_etcd = parse_experiment(yaml.safe_dump(data), "no-etcd.yaml")
        try:
            run_preflight(no_etcd, "dynamo", ex, show=None)
            no_etcd_error = None
        except PreflightError as exc:
            no_etcd_error = exc
        run_setup("head", [line for line in setup["head"] if line not in _without_etcd(setup["head"])])
        ex["head"].put(write_tiny_model(tmp / "tiny"), exp.model.path)
        yield exp, ex, twin, run_dir, no_etcd_error
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
    exp, ex, _, run_dir, _ = pods
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


def _netns_of(twin: Twin, address: str) -> str:
    """The network namespace of the twin's pod that holds `address`."""
    for ns in twin.status()["netns"]:
        out = subprocess.run(["ip", "-n", ns, "-o", "-4", "addr"], capture_output=True, text=True).stdout
        if f" {address}/" in out:
            return ns
    raise AssertionError(f"no namespace of the twin holds {address}")


def test_a_plan_port_blocked_in_one_pod_fails_naming_the_port(pods) -> None:
    """(iii) an iptables rule in the head pod drops Ray's GCS port: the worker cannot join."""
    exp, ex, twin, _, _ = pods
    rule = "INPUT -p tcp --dport 6379 -j DROP"
    # in the head pod's own network namespace; by the host's iptables, as the image has none (nor, on RunPod,
    # the NET_ADMIN capability: there a provider firewall or a security group drops it)
    ns = _netns_of(twin, ex["head"].address)
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "-I", *rule.split()], check=True)
    try:
        t0 = time.monotonic()
        with pytest.raises(PreflightError) as exc:
            run_preflight(exp, "multi", ex, show=None)
        assert time.monotonic() - t0 < 60
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "-D", *rule.split()], check=True)
    msg = str(exc.value)
    assert exc.value.check.pod == "worker"
    assert "worker -> head:6379 (Ray GCS)" in msg and "timed out" in msg and "open TCP 6379" in msg


def test_a_64mb_dev_shm_fails_naming_it(pods) -> None:
    """(iv) the container default /dev/shm (64 MB) on the worker pod."""
    exp, ex, _, _, _ = pods
    ex["worker"].run("mount -o remount,size=64m /dev/shm")
    try:
        with pytest.raises(PreflightError) as exc:
            run_preflight(exp, "multi", ex, show=None)
    finally:
        ex["worker"].run("mount -o remount,size=16g /dev/shm")
    assert exc.value.check.pod == "worker" and exc.value.check.check == "/dev/shm"
    assert "found 0.1 GiB" in str(exc.value) and ">= 8 GB" in str(exc.value)


def test_a_head_without_etcd_and_nats_fails_naming_the_binary(pods) -> None:
    """(i) a params file whose head setup lacks etcd and nats-server: on a bare pod set up by it, Dynamo's stage
    fails in preflight, naming the binary, before anything is launched (the fixture ran it before the apt line)."""
    _, ex, _, _, exc = pods
    assert exc is not None, "preflight passed on a head pod that was never given etcd"
    assert exc.check.pod == "head" and exc.check.check == "binary etcd"
    assert "not found on PATH" in str(exc) and "apt-get install -y etcd-server nats-server" in str(exc)
    assert ex["head"].run("command -v etcd nats-server").output.split()  # installed since by the missing line
