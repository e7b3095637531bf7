"""The RunPod emulator holds to RunPod's own OpenAPI spec: auth, validation, states, ports, actions, clusters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from r1lab.cloud.emulator import Emulator, Timings
from r1lab.cloud.emulator.spec import load_spec

KEY = "rpa_EMULATORTESTKEY0123456789abcd"
GPU = "NVIDIA H100 NVL"


@pytest.fixture
def emu():
    # timings far in the future: the tests move the clock themselves
    e = Emulator(api_key=KEY, timings=Timings(provision_s=60, start_s=30, ports_delay_s=20)).start()
    yield e
    e.stop()
    assert e.spec_violations == []


def call(emu, method, path, body=None, key=KEY, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(emu.url + path, data=data, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read()
            return r.status, (json.loads(text) if text else None), dict(r.headers)
    except urllib.error.HTTPError as exc:
        text = exc.read()
        return exc.code, (json.loads(text) if text else None), dict(exc.headers)


def pod_body(**kw):
    body = {
        "name": "r1lab-t-head",
        "image": "img",
        "gpu": {"id": GPU, "count": 8},
        "ports": ["22/tcp", "8000/http"],
    }
    return body | kw


def test_401_is_rfc9457_and_matches_spec(emu):
    spec = load_spec()
    for key in (None, "rpa_wrongwrongwrongwrongwrong"):
        status, body, headers = call(emu, "GET", "/v2/pods", key=key)
        assert status == 401
        assert headers["Content-Type"] == "application/problem+json"
        assert body["status"] == 401 and body["title"] == "Unauthorized" and body["detail"]
        ptr, _ = spec.response_pointer("/v2/pods", "get", 401)
        assert spec.errors(ptr, body) == []


def test_unknown_and_invalid_fields_are_422(emu):
    status, body, _ = call(emu, "POST", "/v2/pods", pod_body(bogus=1))
    assert status == 422 and any("bogus" in e for e in body["errors"])
    status, body, _ = call(emu, "POST", "/v2/pods", pod_body(gpu={"id": GPU, "count": 8, "extra": True}))
    assert status == 422 and any("extra" in e for e in body["errors"])
    status, body, _ = call(
        emu, "POST", "/v2/network-volumes", {"name": "v", "size": 5, "dataCenter": "EU-RO-1"}
    )
    assert status == 422 and any("size" in e for e in body["errors"])
    status, body, _ = call(emu, "PUT", "/v2/account/ssh-keys", {"keys": ["not a key"]})
    assert status == 422
    status, body, _ = call(emu, "POST", "/v2/pods", raw=b"{not json")
    assert status == 400
    # handler-level rules of the spec: exactly one of gpu/cpu
    both = pod_body(cpu={"id": "cpu3c", "vcpuCount": 4})
    assert call(emu, "POST", "/v2/pods", both)[0] == 400
    assert emu.pods == {}


def test_pod_moves_through_states_and_ports_appear_late(emu):
    status, pod, headers = call(emu, "POST", "/v2/pods", pod_body())
    assert status == 201 and pod["status"] == "PROVISIONING" and pod["ssh"]["direct"] is None
    assert "RateLimit" in headers and "RateLimit-Policy" in headers
    assert pod["cost"] == pytest.approx(8 * 3.19)
    pid = pod["id"]
    emu.clock.advance(61)
    assert call(emu, "GET", f"/v2/pods/{pid}")[1]["status"] == "STARTING"
    emu.clock.advance(31)
    emu.tick()
    got = call(emu, "GET", f"/v2/pods/{pid}")[1]
    assert got["status"] == "RUNNING"
    assert got["ssh"]["direct"] is None and got["runtime"]["ports"] == []  # ports come later
    emu.clock.advance(21)
    got = call(emu, "GET", f"/v2/pods/{pid}")[1]
    assert got["ssh"]["direct"]["port"] > 0 and {p["private"] for p in got["runtime"]["ports"]} == {22, 8000}
    assert got["startedAt"] is not None and got["actions"] == ["stop", "restart", "terminate"]


def test_actions_and_terminate(emu):
    pid = call(emu, "POST", "/v2/pods", pod_body())[1]["id"]
    assert call(emu, "POST", f"/v2/pods/{pid}/action", {"action": "restart"})[0] == 409  # not RUNNING yet
    status, pod, _ = call(emu, "POST", f"/v2/pods/{pid}/action", {"action": "stop"})
    assert status == 200 and pod["status"] == "EXITED" and pod["cost"] == 0.0
    assert call(emu, "POST", f"/v2/pods/{pid}/action", {"action": "start"})[1]["status"] == "STARTING"
    assert call(emu, "POST", f"/v2/pods/{pid}/action", {"action": "fly"})[0] == 422
    assert call(emu, "POST", f"/v2/pods/{pid}/action", {"action": "terminate"})[0] == 204
    assert call(emu, "GET", f"/v2/pods/{pid}")[0] == 404
    assert call(emu, "DELETE", f"/v2/pods/{pid}")[0] == 404
    assert call(emu, "GET", "/v2/pods")[1] == {"pods": []}


def test_catalog_and_volumes(emu):
    gpus = call(emu, "GET", "/v2/catalog/gpus?include=AVAILABILITY&product=POD&count=8")[1]["gpus"]
    nvl = next(g for g in gpus if g["id"] == GPU)
    assert nvl["availability"] in ("LOW", "MEDIUM", "HIGH") and nvl["dataCenters"]
    assert call(emu, "GET", "/v2/catalog/gpus?include=AVAILABILITY")[0] == 400  # product required
    assert "availability" not in call(emu, "GET", "/v2/catalog/gpus")[1]["gpus"][0]
    dcs = call(emu, "GET", "/v2/catalog/datacenters?include=GPU_AVAILABILITY")[1]["dataCenters"]
    assert {"EU-RO-1", "US-KS-2"} <= {d["id"] for d in dcs} and "gpuAvailability" in dcs[0]
    status, vol, _ = call(
        emu, "POST", "/v2/network-volumes", {"name": "v", "size": 100, "dataCenter": "EU-RO-1"}
    )
    assert status == 201 and vol["dataCenter"] == "EU-RO-1"
    # a pod asking for another data center than its volume's is refused
    mounts = {"network": [{"volumeId": vol["id"], "path": "/workspace"}]}
    status, body, _ = call(emu, "POST", "/v2/pods", pod_body(mounts=mounts, dataCenterIds=["US-KS-2"]))
    assert status == 400 and "EU-RO-1" in body["detail"]
    # without a data center, the pod goes where its volume is; the volume cannot go while attached
    pod = call(emu, "POST", "/v2/pods", pod_body(mounts=mounts))[1]
    assert pod["dataCenterId"] == "EU-RO-1"
    assert call(emu, "DELETE", f"/v2/network-volumes/{vol['id']}")[0] == 400
    call(emu, "DELETE", f"/v2/pods/{pod['id']}")
    assert call(emu, "DELETE", f"/v2/network-volumes/{vol['id']}")[0] == 204
    assert call(emu, "GET", f"/v2/network-volumes/{vol['id']}")[0] == 404


def test_capacity_is_finite(emu):
    emu.stock = {k: 0 for k in emu.stock} | {(GPU, "US-KS-2"): 8}
    assert call(emu, "POST", "/v2/pods", pod_body(dataCenterIds=["EU-RO-1"]))[0] == 400
    ok = call(emu, "POST", "/v2/pods", pod_body(name="a"))[1]
    assert ok["dataCenterId"] == "US-KS-2"
    status, body, _ = call(emu, "POST", "/v2/pods", pod_body(name="b"))
    assert status == 400 and "no longer any instances" in body["detail"]
    call(emu, "DELETE", f"/v2/pods/{ok['id']}")  # releases its GPUs
    assert call(emu, "POST", "/v2/pods", pod_body(name="c"))[0] == 201


def test_clusters(emu):
    body = {
        "name": "r1lab-t-cl",
        "type": "APPLICATION",
        "compute": {"gpuTypeId": "NVIDIA H100 80GB HBM3", "gpuCountPerPod": 8, "podCount": 2},
        "image": "img",
        "ports": ["22/tcp"],
    }
    status, cl, _ = call(emu, "POST", "/v2/clusters", body)
    assert status == 201 and cl["pods"]["total"] == 2 and cl["primary"]["status"] == "PROVISIONING"
    members = call(emu, "GET", f"/v2/clusters/{cl['id']}/pods")[1]["pods"]
    assert sorted(m["cluster"]["rank"] for m in members) == [0, 1]
    assert call(emu, "GET", "/v2/pods")[1]["pods"] == []  # members hidden by default
    assert len(call(emu, "GET", "/v2/pods?includeClusterPods=true")[1]["pods"]) == 2
    assert call(emu, "DELETE", f"/v2/pods/{members[0]['id']}")[0] == 409
    assert call(emu, "DELETE", f"/v2/clusters/{cl['id']}")[0] == 204
    assert call(emu, "GET", "/v2/pods?includeClusterPods=true")[1]["pods"] == []


def test_a_response_that_breaks_the_spec_is_caught():
    e = Emulator(api_key=KEY).start()
    try:
        original = e.render_pod
        e.render_pod = lambda rec: {k: v for k, v in original(rec).items() if k != "actions"}
        status, body, _ = call(e, "POST", "/v2/pods", pod_body())
        assert status == 500 and body["detail"] == "emulator response violates the spec"
        assert len(e.spec_violations) == 1 and "actions" in e.spec_violations[0]
    finally:
        e.stop()


def test_faults_on_demand(emu):
    emu.add_fault("rate_limit", "listPods", retry_after=7)
    status, body, headers = call(emu, "GET", "/v2/pods")
    assert status == 429 and headers["Retry-After"] == "7" and body["status"] == 429
    assert call(emu, "GET", "/v2/pods")[0] == 200  # times=1
    emu.add_fault("server_error_after_create", "createPod")
    assert call(emu, "POST", "/v2/pods", pod_body())[0] == 500
    assert len(call(emu, "GET", "/v2/pods")[1]["pods"]) == 1  # ... but the pod was made
    emu.add_fault("no_capacity", "createPod")
    assert call(emu, "POST", "/v2/pods", pod_body(name="x"))[0] == 400
    with pytest.raises(ValueError):
        emu.add_fault("meteor")


def test_runs_as_a_process_with_state_dir(tmp_path: Path):
    env = dict(os.environ, RUNPOD_API_KEY=KEY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "r1lab.cloud.emulator", "--port", "0", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,  # its own process group, as every server a test starts (tests/procguard.py)
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")

        class E:
            pass

        e = E()
        e.url = url
        assert (
            call(e, "POST", "/v2/network-volumes", {"name": "v", "size": 10, "dataCenter": "EU-SE-1"})[0]
            == 201
        )
        assert (tmp_path / "url").read_text().strip() == url
        assert int((tmp_path / "emulator.pid").read_text()) == proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert KEY not in out + err
    state = json.loads((tmp_path / "state.json").read_text())
    assert [v["name"] for v in state["volumes"].values()] == ["v"]
    assert KEY not in (tmp_path / "state.json").read_text()
