"""The REST v2 client against the emulator: every operation, every retry rule, every fault, clear errors."""

from __future__ import annotations

import socket
import time

import pytest

from r1lab.cloud.emulator import Emulator, Timings
from r1lab.cloud.errors import (
    AuthError,
    NoCapacityError,
    PodFailedError,
    RateLimitedError,
    ReadyTimeoutError,
    RequestInvalidError,
    TransientError,
    VolumeDataCenterError,
)
from r1lab.cloud.runpod import PodSpec, RetryPolicy, RunPodClient, public_port, ssh_endpoint

KEY = "rpa_CLIENTTESTKEY0123456789abcdef"
GPU = "NVIDIA H100 NVL"
PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILXGDN/SclOozk1xsDztpmhGiKkkrfQB9SKoO8dSIQQZ other@example.com"


@pytest.fixture
def emu(monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    e = Emulator(api_key=KEY, timings=Timings(provision_s=0.1, start_s=0.1, ports_delay_s=0.1)).start()
    yield e
    e.stop()
    assert e.spec_violations == []


@pytest.fixture
def client(emu):
    c = RunPodClient(base_url=emu.url, retry=RetryPolicy(attempts=4, base_s=0.01, max_s=0.05), log=LOG.append)
    c.slept = []
    real_sleep = time.sleep

    def sleep(s):
        c.slept.append(s)
        real_sleep(min(s, 0.05))

    c._sleep = sleep
    LOG.clear()
    yield c
    assert KEY not in "\n".join(LOG)


LOG: list[str] = []


def spec(**kw) -> PodSpec:
    return PodSpec(**({"name": "r1lab-c-head", "image": "img", "gpu_type": GPU, "gpu_count": 8} | kw))


def posts(emu, path="/v2/pods"):
    return [r for r in emu.requests if r[0] == "POST" and r[1] == path]


def test_key_comes_from_env_and_401_is_clear(emu, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_WRONGWRONGWRONGWRONGWRONG0")
    with pytest.raises(AuthError) as exc:
        RunPodClient(base_url=emu.url).list_pods()
    msg = str(exc.value)
    assert "RUNPOD_API_KEY" in msg and "WRONG" not in msg
    monkeypatch.delenv("RUNPOD_API_KEY")
    with pytest.raises(Exception, match="RUNPOD_API_KEY is not set"):
        RunPodClient(base_url=emu.url).list_pods()


def test_every_pod_operation(client, emu):
    pod = client.create_pod(spec(ports=["22/tcp", "8000/http"], env={"A": "1"}, data_centers=["EU-RO-1"]))
    assert pod["status"] == "PROVISIONING" and pod["env"] == {"A": "1"}
    assert client.get_pod(pod["id"])["name"] == "r1lab-c-head"
    assert [p["id"] for p in client.find_pods("r1lab-c-head")] == [pod["id"]]
    # record-only pods live at TEST-NET addresses (nothing answers): watch the states, not TCP
    deadline = time.monotonic() + 10
    while (got := client.get_pod(pod["id"]))["status"] != "RUNNING" or ssh_endpoint(got) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert ssh_endpoint(got).host.startswith("192.0.2.") and public_port(got, 8000)[1] > 0
    assert client.pod_action(pod["id"], "stop")["status"] == "EXITED"
    assert client.pod_action(pod["id"], "start")["status"] == "STARTING"
    assert client.terminate_pod(pod["id"]) is True
    assert client.terminate_pod(pod["id"]) is False  # not found counts as done
    assert client.list_pods() == []


def test_wait_ready_fails_fast_on_error_and_times_out_when_stuck(client, emu):
    emu.add_fault("pod_error", "createPod")
    bad = client.create_pod(spec(name="r1lab-c-bad"))
    t = time.monotonic()
    with pytest.raises(PodFailedError, match="ERROR"):
        client.wait_ready(bad["id"], timeout_s=30, poll_s=0.05)
    assert time.monotonic() - t < 5
    emu.add_fault("stuck_provisioning", "createPod")
    stuck = client.create_pod(spec(name="r1lab-c-stuck"))
    with pytest.raises(ReadyTimeoutError, match="stuck at 'RUNNING'.*PROVISIONING"):
        client.wait_ready(stuck["id"], timeout_s=0.5, poll_s=0.05)
    # ports that never answer: the deadline names the TCP step
    emu.timings.ports_delay_s = 0
    slow = client.create_pod(spec(name="r1lab-c-tcp"))
    with pytest.raises(ReadyTimeoutError, match="TCP connect"):
        client.wait_ready(slow["id"], timeout_s=1.0, poll_s=0.05)


def test_get_and_delete_retry_on_5xx_and_429(client, emu):
    emu.add_fault("server_error", "listPods", times=2)
    assert client.list_pods() == []
    assert len(client.slept) == 2
    client.slept.clear()
    emu.add_fault("rate_limit", "getSshKeys", retry_after=2)
    assert client.get_ssh_keys() == []
    assert client.slept == [2.0]  # Retry-After honoured
    emu.add_fault("server_error", "listPods", times=10)
    with pytest.raises(TransientError):
        client.list_pods()
    emu.faults.clear()


def test_post_is_not_retried_on_5xx_except_create_pod_after_lookup(client, emu):
    emu.add_fault("server_error", "createNetworkVolume")
    with pytest.raises(TransientError):
        client.request("POST", "/v2/network-volumes", {"name": "x", "size": 10, "dataCenter": "EU-RO-1"})
    assert len(posts(emu, "/v2/network-volumes")) == 1
    emu.add_fault("rate_limit", "createNetworkVolume", retry_after=1)
    vol = client.create_volume("r1lab-c-vol", 10, "EU-RO-1")
    assert client.slept == [1.0] and len(posts(emu, "/v2/network-volumes")) == 3
    assert client.delete_volume(vol["id"]) and not client.delete_volume(vol["id"])


@pytest.mark.parametrize("kind", ["server_error_after_create", "disconnect_after_create"])
def test_create_after_lost_answer_finds_the_pod_by_name(client, emu, kind):
    emu.add_fault(kind, "createPod")
    pod = client.create_pod(spec())
    assert len(emu.pods) == 1 and pod["id"] in emu.pods  # one pod, not two
    assert len(posts(emu)) <= 1
    gets = [r for r in emu.requests if r[0] == "GET" and r[1] == "/v2/pods"]
    assert gets, "looked up by name"


def test_create_5xx_before_creation_retries_after_lookup(client, emu):
    emu.add_fault("server_error", "createPod", times=1)
    pod = client.create_pod(spec())
    assert list(emu.pods) == [pod["id"]] and len(posts(emu)) == 2


def test_no_capacity_names_gpu_dc_and_alternatives(client, emu):
    emu.stock[(GPU, "EU-RO-1")] = 0
    with pytest.raises(NoCapacityError) as exc:
        client.create_pod(spec(data_centers=["EU-RO-1"]))
    msg = str(exc.value)
    assert "8 x NVIDIA H100 NVL" in msg and "EU-RO-1" in msg
    assert f"{GPU} in US-KS-2" in msg and "NVIDIA H200 in EU-RO-1" in msg
    assert f"{GPU} in EU-RO-1" not in msg
    emu.add_fault("no_capacity", "createPod")
    with pytest.raises(NoCapacityError):
        client.create_pod(spec(data_centers=["US-KS-2"]))


def test_volume_in_another_data_center(client, emu):
    vol = client.create_volume("r1lab-c-vol", 100, "EU-RO-1")
    with pytest.raises(VolumeDataCenterError, match="provider.data_center: EU-RO-1"):
        client.create_pod(spec(volume_id=vol["id"], data_centers=["US-KS-2"]))
    assert posts(emu) == []  # refused before asking RunPod
    with pytest.raises(VolumeDataCenterError, match="EU-RO-1"):
        client.create_pod(spec(volume_id=vol["id"], data_centers=["US-KS-2"]), check_volume=False)
    pod = client.create_pod(spec(volume_id=vol["id"]))  # no DC given: placed with its volume
    assert pod["dataCenterId"] == "EU-RO-1" and pod["mounts"]["network"][0]["volumeId"] == vol["id"]


def test_ssh_keys_are_merged_not_replaced(client):
    client.set_ssh_keys([PUB])
    mine = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFTgbzSZe8gdcMsGzIfXncqMShEIg98uUqCFacJE3hmG r1lab-x"
    client.ensure_ssh_key(mine)
    client.ensure_ssh_key(mine)
    assert client.get_ssh_keys() == [PUB, mine]
    client.remove_ssh_key(mine)
    assert client.get_ssh_keys() == [PUB]


def test_invalid_request_is_not_retried(client, emu):
    with pytest.raises(RequestInvalidError, match="bogus"):
        client.request("POST", "/v2/pods", spec().to_request() | {"bogus": 1})
    assert len(posts(emu)) == 1


def test_rate_limit_gives_up_past_its_budget(emu):
    c = RunPodClient(
        base_url=emu.url, retry=RetryPolicy(attempts=10, max_retry_after_s=3), sleep=lambda s: None
    )
    emu.add_fault("rate_limit", "listPods", times=5, retry_after=2)
    with pytest.raises(RateLimitedError):
        c.list_pods()


def test_clusters(client, emu):
    body = {
        "name": "r1lab-c-cl",
        "type": "APPLICATION",
        "compute": {"gpuTypeId": "NVIDIA H200", "gpuCountPerPod": 8, "podCount": 2},
        "image": "img",
        "ports": ["22/tcp"],
        "startSsh": True,
    }
    emu.add_fault("server_error_after_create", "createCluster")
    cl = client.create_cluster(body)
    assert len(emu.clusters) == 1 and client.get_cluster(cl["id"])["name"] == "r1lab-c-cl"
    assert [c["id"] for c in client.find_clusters("r1lab-c-cl")] == [cl["id"]]
    assert len(client.cluster_pods(cl["id"])) == 2
    assert client.delete_cluster(cl["id"]) and not client.delete_cluster(cl["id"])
    assert client.list_clusters() == [] and client.list_pods(include_cluster_pods=True) == []


def test_network_errors(monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    slept = []
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = RunPodClient(base_url=f"http://127.0.0.1:{port}", retry=RetryPolicy(attempts=3), sleep=slept.append)
    with pytest.raises(Exception, match="cannot reach"):
        c.list_pods()
    assert len(slept) == 2  # GET retried on network errors
