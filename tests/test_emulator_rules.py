"""Every rule the spec states, in its schemas and in its prose, answered by the emulator as RunPod does: RFC 9457
problems with RunPod's status (422 for the contract, 400 for a rule, 404 for a missing reference, 429 for a spent
quota), query parameters included; and the client reads them by status and structure."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from r1lab.cloud.emulator import Emulator, PodHost, Timings
from r1lab.cloud.errors import NoCapacityError, RequestRejectedError, VolumeDataCenterError
from r1lab.cloud.runpod import PodSpec, RetryPolicy, RunPodClient

KEY = "rpa_RULESTESTKEY0123456789abcdefgh"
GPU = "NVIDIA H100 NVL"


@pytest.fixture
def emu():
    e = Emulator(api_key=KEY, timings=Timings(provision_s=60, start_s=30, ports_delay_s=20)).start()
    yield e
    e.stop()
    assert e.spec_violations == []


def call(emu, method, path, body=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(emu.url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {KEY}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None), dict(r.headers)
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, (json.loads(text) if text else None), dict(exc.headers)


def gpu_pod(**kw):
    return {"name": "r1lab-r-head", "image": "img", "gpu": {"id": GPU, "count": 8}, "ports": ["22/tcp"]} | kw


def cpu_pod(**kw):
    return {"name": "r1lab-r-util", "image": "img", "cpu": {"id": "cpu3c", "vcpuCount": 4}} | kw


def refused(emu, path, body, status=400, method="POST"):
    got, problem, headers = call(emu, method, path, body)
    assert got == status, (got, problem)
    assert headers["Content-Type"] == "application/problem+json"
    assert problem["status"] == status and problem["title"] and problem["detail"]
    return problem


# --- the 500s schemathesis found ----------------------------------------------------------------------------


def test_malformed_port_is_refused_and_never_poisons_the_pod_list(emu):
    for port in ("", "22", "22/udp", "0/tcp", "70000/tcp", "ssh/tcp"):
        assert "port/protocol" in refused(emu, "/v2/pods", gpu_pod(ports=[port]))["detail"]
    assert call(emu, "GET", "/v2/pods")[0] == 200 and emu.pods == {}


def test_integral_numbers_are_integers(emu):
    body = {"name": "c", "type": "APPLICATION", "image": "img",
            "compute": {"gpuTypeId": "NVIDIA H200", "gpuCountPerPod": 8.0, "podCount": 2.0}}  # fmt: skip
    status, cl, _ = call(emu, "POST", "/v2/clusters", body)
    assert status == 201 and cl["pods"]["total"] == 2 and cl["compute"]["podCount"] == 2
    assert call(emu, "POST", "/v2/pods", gpu_pod(gpu={"id": GPU, "count": 2.0}))[1]["gpu"]["count"] == 2


# --- query parameters: the spec's types, patterns and enums (422), and the rules of their descriptions (400) --


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("/v2/catalog/gpus?include=AVAILABILITY&product=POD&count=1.5", "count"),
        ("/v2/catalog/gpus?include=AVAILABILITY&product=POD&count=abc", "count"),
        ("/v2/catalog/gpus?include=AVAILABILITY&product=POD&count=0", "count"),
        ("/v2/catalog/gpus?include=AVAILABILITY&product=POD&minCudaVersion=", "minCudaVersion"),
        ("/v2/catalog/gpus?include=AVAILABILITY&product=POD&minCudaVersion=12.x", "minCudaVersion"),
        ("/v2/catalog/gpus?include=AVAILABILITY&product=POD&cudaVersions=12", "cudaVersions"),
        ("/v2/catalog/gpus?include=AVAILABILITY&product=POD&cloud=BOGUS", "cloud"),
        ("/v2/catalog/gpus?include=AVAILABILITY&product=POD&countryCodes=fr", "countryCodes"),
        ("/v2/catalog/gpus?include=SOMETHING&product=POD", "include"),
        ("/v2/catalog/gpus?include=AVAILABILITY&product=SPACESHIP", "product"),
        ("/v2/catalog/datacenters?regions=MARS", "regions"),
        ("/v2/catalog/datacenters?globalNetwork=null", "globalNetwork"),
        ("/v2/catalog/datacenters?include=EVERYTHING", "include"),
        ("/v2/catalog/cpus?include=AVAILABILITY&product=POD&vcpuCount=1", "vcpuCount"),
        ("/v2/pods?includeClusterPods=none", "includeClusterPods"),
    ],
)
def test_malformed_query_parameters_are_422(emu, query, name):
    problem = refused(emu, query, None, 422, "GET")
    assert problem["detail"] == "Request validation failed." and any(
        f"$query.{name}" in e for e in problem["errors"]
    )


@pytest.mark.parametrize(
    "query",
    [
        "/v2/catalog/gpus?include=AVAILABILITY",  # product required with include
        "/v2/catalog/gpus?product=POD",  # ... and valid only with it
        "/v2/catalog/gpus?count=2",
        "/v2/catalog/gpus?cloud=COMMUNITY",
        "/v2/catalog/gpus?minCudaVersion=12",
        "/v2/catalog/gpus?include=AVAILABILITY&product=POD&cudaVersions=12.8&minCudaVersion=12",
        "/v2/catalog/cpus?vcpuCount=4",
        "/v2/catalog/cpus?include=AVAILABILITY&product=POD&vcpuCount=6",  # a power of two
    ],
)
def test_query_rules_of_the_descriptions_are_400(emu, query):
    refused(emu, query, None, 400, "GET")


def test_catalog_filters_are_honoured(emu):
    emu.stock[(GPU, "EU-RO-1")] = 2
    q = "/v2/catalog/gpus?include=AVAILABILITY&product=POD&count=8"
    nvl = next(g for g in call(emu, "GET", q)[1]["gpus"] if g["id"] == GPU)
    assert "EU-RO-1" not in {d["id"] for d in nvl["dataCenters"]}
    rtx = "NVIDIA GeForce RTX 4090"  # maxCount: 8 on secure, 4 on community
    secure = next(g for g in call(emu, "GET", q + "&cloud=SECURE")[1]["gpus"] if g["id"] == rtx)
    community = next(g for g in call(emu, "GET", q + "&cloud=COMMUNITY")[1]["gpus"] if g["id"] == rtx)
    assert secure["availability"] != "NONE" and community["availability"] == "NONE"
    se = call(emu, "GET", q + "&countryCodes=SE")[1]["gpus"]
    assert all({d["id"] for d in g.get("dataCenters", [])} <= {"EU-SE-1"} for g in se)
    floor = call(emu, "GET", q + "&minCudaVersion=13")[1]["gpus"][0]
    assert [v["version"] for v in floor["cudaVersions"]] == ["13.0"]
    exact = call(emu, "GET", q + "&cudaVersions=12.4")[1]["gpus"][0]
    assert {d["id"] for d in exact["dataCenters"]} == {"EU-RO-1", "US-KS-2"} - {
        "EU-RO-1" if exact["id"] == GPU else ""
    }
    dcs = call(emu, "GET", "/v2/catalog/datacenters?regions=EUROPE&globalNetwork=true")[1]["dataCenters"]
    assert {d["id"] for d in dcs} == {"EU-RO-1", "EU-SE-1"}
    hps = call(emu, "GET", "/v2/catalog/datacenters?networkVolumeTypes=STANDARD,HIGH_PERFORMANCE")[1]
    assert {d["id"] for d in hps["dataCenters"]} == {"EU-SE-1", "US-KS-2"}
    assert {
        d["id"] for d in call(emu, "GET", "/v2/catalog/datacenters?globalNetwork=false")[1]["dataCenters"]
    } == {"US-TX-3"}
    cpus = call(emu, "GET", "/v2/catalog/cpus?include=AVAILABILITY&product=POD&vcpuCount=32")[1]["cpus"]
    assert {c["id"]: c["availability"] for c in cpus}["cpu3m"] == "NONE"  # cpu3m stops at 16 vCPUs
    assert call(emu, "GET", "/v2/pods?includeClusterPods=false")[0] == 200


# --- createPod / createCluster: the rules of the spec's prose -----------------------------------------------


def test_cpu_pod_rules(emu):
    assert "global networking" in refused(emu, "/v2/pods", cpu_pod(globalNetworking=True))["detail"]
    persistent = {"persistent": {"size": 20, "path": "/data"}}
    assert "CPU pods" in refused(emu, "/v2/pods", cpu_pod(mounts=persistent))["detail"]
    assert "cpu9z" in refused(emu, "/v2/pods", cpu_pod(cpu={"id": "cpu9z", "vcpuCount": 4}))["detail"]
    assert "power of two" in refused(emu, "/v2/pods", cpu_pod(cpu={"id": "cpu3c", "vcpuCount": 6}))["detail"]
    assert "cpu3m" in refused(emu, "/v2/pods", cpu_pod(cpu={"id": "cpu3m", "vcpuCount": 32}))["detail"]
    assert emu.pods == {}
    status, pod, _ = call(emu, "POST", "/v2/pods", cpu_pod(cpu={"id": "cpu3g", "vcpuCount": 8}))
    assert status == 201 and pod["cpu"] == {"id": "cpu3g", "vcpuCount": 8, "memory": 32} and "gpu" not in pod
    assert pod["cost"] == pytest.approx(8 * 0.04) and pod["cudaVersion"] is None
    flavors = call(emu, "GET", "/v2/catalog/cpus")[1]["cpus"]
    assert {"cpu3c", "cpu5c"} <= {c["id"] for c in flavors}


def test_gpu_pod_rules(emu):
    assert "maximum of 8" in refused(emu, "/v2/pods", gpu_pod(gpu={"id": GPU, "count": 9}))["detail"]
    rtx = {"id": "NVIDIA GeForce RTX 4090", "count": 8}
    assert call(emu, "POST", "/v2/pods", gpu_pod(name="ok", gpu=rtx))[0] == 201
    assert "COMMUNITY" in refused(emu, "/v2/pods", gpu_pod(gpu=rtx, cloud="COMMUNITY"))["detail"].upper()
    assert "unknown GPU" in refused(emu, "/v2/pods", gpu_pod(gpu={"id": "NVIDIA Z9000"}))["detail"]
    both = gpu_pod(gpu={"id": GPU, "allowedCudaVersions": ["12.8"], "minCudaVersion": "12.4"})
    assert "mutually exclusive" in refused(emu, "/v2/pods", both)["detail"]
    mounts = {"persistent": {"size": 20, "path": "/d"}, "network": [{"volumeId": "v", "path": "/w"}]}
    assert "mutually exclusive" in refused(emu, "/v2/pods", gpu_pod(mounts=mounts))["detail"]
    assert "data center" in refused(emu, "/v2/pods", gpu_pod(dataCenterIds=["MARS-1"]))["detail"]
    # an exact CUDA set no machine reports is a capacity error, not a fallback
    nothing = gpu_pod(gpu={"id": GPU, "allowedCudaVersions": ["11.0"]})
    assert refused(emu, "/v2/pods", nothing)["detail"].startswith(
        "There are no longer any instances available"
    )
    floor = call(emu, "POST", "/v2/pods", gpu_pod(name="f", gpu={"id": GPU, "minCudaVersion": "12.9"}))[1]
    assert floor["dataCenterId"] == "EU-SE-1" and floor["cudaVersion"] == "13.0"
    # an empty allowedCudaVersions states no constraint, so it may accompany a floor
    ok = gpu_pod(name="g", gpu={"id": GPU, "count": 1, "allowedCudaVersions": [], "minCudaVersion": "12.1"})
    assert call(emu, "POST", "/v2/pods", ok)[0] == 201


def test_template_id_must_exist_and_image_is_required_without_one(emu):
    body = gpu_pod(templateId="30zmvf89kd")
    del body["image"]
    assert "30zmvf89kd" in refused(emu, "/v2/pods", body, 404)["detail"]
    del body["templateId"]
    problem = refused(emu, "/v2/pods", body, 422)
    assert problem["errors"] == ["$: 'image' is a required property"]


def test_nested_unknown_fields_name_only_the_unexpected_ones(emu):
    problem = refused(emu, "/v2/pods", gpu_pod(gpu={"id": GPU, "count": 8, "extra": True}, bogus=1), 422)
    assert sorted(problem["errors"]) == [
        "$.gpu: additional properties 'extra' not allowed",
        "$: additional properties 'bogus' not allowed",
    ]
    cl = {
        "name": "c",
        "type": "RAY",
        "compute": {"gpuTypeId": "NVIDIA H200", "gpuCountPerPod": 8, "podCount": 2, "zz": 0},
    }
    assert refused(emu, "/v2/clusters", cl, 422)["errors"] == [
        "$.compute: additional properties 'zz' not allowed"
    ]


def test_cluster_rules_and_placement_with_its_volume(emu):
    base = {"name": "r1lab-r-cl", "type": "APPLICATION", "image": "img", "ports": ["22/tcp"]}
    nvl = base | {"compute": {"gpuTypeId": GPU, "gpuCountPerPod": 8, "podCount": 2}}
    assert "do not offer" in refused(emu, "/v2/clusters", nvl)["detail"]  # no H100 NVL in Instant Clusters
    wide = base | {"compute": {"gpuTypeId": "NVIDIA H200", "gpuCountPerPod": 16, "podCount": 2}}
    assert "maximum of 8" in refused(emu, "/v2/clusters", wide)["detail"]
    assert "port/protocol" in refused(emu, "/v2/clusters", base | wide | {"ports": [""], "compute": nvl["compute"] | {"gpuTypeId": "NVIDIA H200"}})["detail"]  # fmt: skip
    vol = call(emu, "POST", "/v2/network-volumes", {"name": "v", "size": 100, "dataCenter": "US-KS-2"})[1]
    ok = base | {
        "compute": {"gpuTypeId": "NVIDIA H200", "gpuCountPerPod": 8, "podCount": 2},
        "mounts": {"network": [{"volumeId": vol["id"], "path": "/workspace"}]},
    }
    status, cl, _ = call(emu, "POST", "/v2/clusters", ok)  # EU-RO-1 has stock too: the volume decides
    assert status == 201 and cl["dataCenterId"] == "US-KS-2"
    assert (
        "US-KS-2" in refused(emu, "/v2/clusters", ok | {"name": "x", "dataCenterIds": ["EU-RO-1"]})["detail"]
    )
    assert emu.stock[("NVIDIA H200", "US-KS-2")] == 0 and len(emu.clusters) == 1


def test_volume_type_must_be_offered_by_its_data_center(emu):
    body = {"name": "v", "size": 10, "dataCenter": "EU-RO-1", "type": "HIGH_PERFORMANCE"}
    assert "HIGH_PERFORMANCE" in refused(emu, "/v2/network-volumes", body)["detail"]
    status, vol, _ = call(emu, "POST", "/v2/network-volumes", body | {"dataCenter": "EU-SE-1"})
    assert status == 201 and vol["type"] == "HIGH_PERFORMANCE"


def test_ssh_proxy_is_filled_from_creation(emu):
    pod = call(emu, "POST", "/v2/pods", gpu_pod())[1]
    proxy = pod["ssh"]["proxy"]
    assert pod["ssh"]["direct"] is None and proxy["host"] == "ssh.runpod.io" and proxy["port"] == 22
    assert (
        proxy["username"].startswith(pod["id"] + "-")
        and proxy["command"] == f"ssh {proxy['username']}@ssh.runpod.io"
    )


def test_start_ssh_keys_follow_the_public_key_convention(emu):
    keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILXGDN/SclOozk1xsDztpmhGiKkkrfQB9SKoO8dSIQQZ a@x"]
    call(emu, "PUT", "/v2/account/ssh-keys", {"keys": keys})
    own = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFTgbzSZe8gdcMsGzIfXncqMShEIg98uUqCFacJE3hmG b@y"
    cases = [({"startSsh": True}, keys), ({}, []), ({"startSsh": True, "env": {"PUBLIC_KEY": own}}, [own])]
    for i, (extra, expected) in enumerate(cases):
        pod = call(emu, "POST", "/v2/pods", gpu_pod(name=f"k{i}", gpu={"id": GPU, "count": 1}) | extra)[1]
        assert emu.pods[pod["id"]]["public_keys"] == expected


def test_other_methods_are_rfc9457(emu):
    for method in ("TRACE", "OPTIONS", "FOO", "PATCH"):
        status, problem, headers = call(emu, method, "/v2/network-volumes")
        assert status == 405 and problem["title"] == "Method Not Allowed", method
        assert headers["Content-Type"] == "application/problem+json" and headers["Allow"] == "GET, POST"
    status, problem, _ = call(emu, "PATCH", "/v2/pods/abc", {"name": "x"})
    assert status == 501 and "updatePod" in problem["detail"]  # a spec operation the emulator does not serve
    assert call(emu, "GET", "/v2/nothing")[0] == 404


# --- rate limits ----------------------------------------------------------------------------------------------


def test_rate_limit_headers_count_real_requests():
    e = Emulator(api_key=KEY, rate_limits=(("minute", 5, 60), ("hour", 100, 3600))).start()
    try:
        seen = [call(e, "GET", "/v2/pods")[2]["RateLimit"] for _ in range(5)]
        assert seen[0].startswith('"minute";r=4;t=') and seen[-1].startswith('"minute";r=0;')
        assert '"hour";r=95;' in seen[-1]
        status, problem, headers = call(e, "GET", "/v2/pods")
        assert status == 429 and problem["detail"] == "rate limit exceeded for the minute window"
        assert 55 <= int(headers["Retry-After"]) <= 60 and headers["RateLimit-Policy"].startswith(
            '"minute";q=5;w=60'
        )
        e.clock.advance(61)  # the window resets
        assert call(e, "GET", "/v2/pods")[0] == 200
    finally:
        e.stop()
    assert e.spec_violations == []
    off = Emulator(api_key=KEY, rate_limits=()).start()
    try:
        assert all(call(off, "GET", "/v2/pods")[0] == 200 for _ in range(50))
        assert "RateLimit" not in call(off, "GET", "/v2/pods")[2]  # rate-limit-exempt callers get no headers
    finally:
        off.stop()


class _ListeningBackend:
    """Pods answer TCP on a loopback port (a listening socket): what `wait_ready` connects to."""

    def __init__(self) -> None:
        self.socks: dict[str, socket.socket] = {}

    def start(self, pod, public_keys):
        s = socket.create_server(("127.0.0.1", 0))
        self.socks[pod["id"]] = s
        return PodHost(ip="127.0.0.1", ports={"22/tcp": s.getsockname()[1]})

    def stop(self, pod_id):
        s = self.socks.pop(pod_id, None)
        if s:
            s.close()

    def terminate(self, pod_id):
        self.stop(pod_id)

    def close(self):
        for pod_id in list(self.socks):
            self.stop(pod_id)


def test_a_polling_loop_meets_a_natural_429_and_backs_off(monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    quota, window = 6, 2
    e = Emulator(
        api_key=KEY,
        backend=_ListeningBackend(),
        timings=Timings(1.0, 1.0, 1.0),
        rate_limits=(("burst", quota, window),),
    ).start()
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        time.sleep(s)

    try:
        client = RunPodClient(base_url=e.url, retry=RetryPolicy(attempts=6, base_s=0.01), sleep=sleep)
        pod = client.create_pod(PodSpec(name="r1lab-rl-head", image="img", gpu_type=GPU, gpu_count=1))
        t0 = time.monotonic()
        ready = client.wait_ready(pod["id"], timeout_s=30, poll_s=0.02)  # ~50 polls/s against 6 per 2 s
        assert ready["status"] == "RUNNING" and time.monotonic() - t0 >= 2.5  # ports appear 3 s after create
    finally:
        e.stop()
    log = [r for r in e.request_log if r[2] == f"/v2/pods/{pod['id']}"]
    refusals = [i for i, r in enumerate(log) if r[3] == 429]
    assert refusals, "the loop never met the limit"
    assert any(s >= 1.0 for s in slept)  # it waited Retry-After, not its poll interval
    for i in refusals:  # after each 429 the next request came only once the window had reset
        if i + 1 < len(log):
            assert log[i + 1][0] - log[i][0] >= 0.9
    assert len(refusals) <= len(log) // 3, "it hammered the API while limited"
    assert e.spec_violations == []


# --- the client reads these by status and structure ---------------------------------------------------------


def test_client_tells_rules_from_capacity(monkeypatch, emu):
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    client = RunPodClient(base_url=emu.url, retry=RetryPolicy(attempts=2, base_s=0.01), sleep=lambda s: None)
    with pytest.raises(RequestRejectedError, match="maximum of 8.*not for capacity"):
        client.create_pod(PodSpec(name="r1lab-c-x", image="i", gpu_type=GPU, gpu_count=9))
    emu.stock = {k: 0 for k in emu.stock}
    with pytest.raises(NoCapacityError, match="no RunPod capacity for 8 x NVIDIA H100 NVL"):
        client.create_pod(PodSpec(name="r1lab-c-y", image="i", gpu_type=GPU, gpu_count=8))
    nvl_cluster = {"name": "r1lab-c-cl", "type": "APPLICATION", "image": "i",
                   "compute": {"gpuTypeId": GPU, "gpuCountPerPod": 8, "podCount": 2}}  # fmt: skip
    with pytest.raises(RequestRejectedError, match="do not offer"):  # a rule, though every stock is 0
        client.create_cluster(nvl_cluster)
    with pytest.raises(NoCapacityError):
        client.create_cluster(
            nvl_cluster | {"compute": nvl_cluster["compute"] | {"gpuTypeId": "NVIDIA H200"}}
        )
    emu.stock = {k: 16 for k in emu.stock}
    vol = client.create_volume("r1lab-c-vol", 10, "EU-SE-1")
    with pytest.raises(VolumeDataCenterError, match="EU-SE-1"):  # read from the volume, not from a detail
        client.create_pod(PodSpec(name="r1lab-c-z", image="i", gpu_type=GPU, volume_id=vol["id"], data_centers=["US-KS-2"]), check_volume=False)  # fmt: skip


def test_pod_spec_refuses_what_runpod_refuses():
    with pytest.raises(ValueError, match="global networking needs an NVIDIA GPU"):
        PodSpec(name="r1lab-u", image="i", global_networking=True)
    with pytest.raises(ValueError, match="power of two"):
        PodSpec(name="r1lab-u", image="i", vcpu_count=6)
    assert "cpu" in PodSpec(name="r1lab-u", image="i").to_request()
    assert PodSpec(name="r1lab-g", image="i", gpu_type=GPU, global_networking=True).to_request()[
        "globalNetworking"
    ]


def test_threads_share_one_quota():
    """Two pollers of one account share its quota (RunPod limits per user, not per connection)."""
    e = Emulator(api_key=KEY, rate_limits=(("minute", 10, 60),)).start()
    try:
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.extend(call(e, "GET", "/v2/pods")[0] for _ in range(8))) for _ in range(2)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes).count(200) == 10 and codes.count(429) == 6
    finally:
        e.stop()


def test_rate_limits_are_configurable_from_the_command_line():
    from r1lab.cloud.emulator.__main__ import parse_rate_limits
    from r1lab.cloud.emulator.ratelimit import DEFAULT_POLICY

    assert parse_rate_limits(None) == DEFAULT_POLICY and parse_rate_limits("off") == ()
    assert parse_rate_limits("minute=60/60, hour=3000/3600") == (("minute", 60, 60), ("hour", 3000, 3600))
    for bad in ("minute=0/60", "minute=60", "=1/1", "minute=a/b"):
        with pytest.raises(ValueError, match="NAME=QUOTA/SECONDS"):
            parse_rate_limits(bad)


def test_cluster_members_start_knowing_the_clusters_size():
    """RunPod injects NUM_NODES and WORLD_SIZE into every member of an Instant Cluster (docs:
    instant-clusters/configuration): the backend that starts a member is told the cluster's size; the API's
    Pod.cluster (PodCluster, additionalProperties false) does not show it."""
    from r1lab.cloud.emulator.backends import RecordOnlyBackend

    started: list[dict] = []

    class Recording(RecordOnlyBackend):
        def start(self, pod: dict, public_keys: list[str]) -> PodHost:
            started.append(pod)
            return super().start(pod, public_keys)

    e = Emulator(api_key=KEY, backend=Recording(), timings=Timings(0, 0, 0)).start()
    try:
        body = {"name": "r1lab-r-cl", "type": "APPLICATION", "image": "img", "ports": ["22/tcp"],
                "compute": {"gpuTypeId": "NVIDIA H200", "gpuCountPerPod": 4, "podCount": 3}}  # fmt: skip
        status, _, _ = call(e, "POST", "/v2/clusters", body)
        assert status == 201
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(started) < 3:
            pods = call(e, "GET", "/v2/pods?includeClusterPods=true")[1]
            time.sleep(0.05)
        assert sorted(p["cluster"]["rank"] for p in started) == [0, 1, 2]
        assert {p["cluster"]["nodes"] for p in started} == {3}
        pods = call(e, "GET", "/v2/pods?includeClusterPods=true")[1]
        listed = pods["pods"] if isinstance(pods, dict) else pods
        assert listed and all("nodes" not in p["cluster"] for p in listed)
    finally:
        e.stop()
    assert e.spec_violations == []
