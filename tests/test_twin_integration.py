"""The twin end to end, on the code paths a real RunPod run takes:

twin up -> RunPod client (RUNPOD_API_BASE) provisions an SSH key, a network volume and two 8-GPU pods ->
SSH -> a real two-node Ray cluster (16 declared GPUs, dashboard through an SSH forward, token auth) ->
Dynamo as on real pods (etcd + NATS + frontend + prefill mocker on pod A, decode mocker on pod B, timed by the
performance model) -> one streamed chat request through the frontend -> teardown through the run's ledger ->
twin down, and proof that no namespace, link, route, iptables rule, mount or process is left.
"""

from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from r1lab.cloud.pods import HostKeyStore
from r1lab.cloud.provision import PodPlan, Provisioner
from r1lab.cloud.runpod import RunPodClient
from r1lab.cloud.twin import Twin
from r1lab.cloud.twin.sshexec import SshExecutor
from r1lab.config import load_experiment
from r1lab.perf.mocker import mocker_setup
from r1lab.progress import step
from r1lab.serve.commands import MockerTiming, Node, render
from r1lab.serve.launch import Launcher
from r1lab.teardown import teardown_run
from r1lab.tinymodel import write_tiny_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent


def _mocker_timings(exp, out: Path) -> dict[str, MockerTiming]:
    timings = {}
    for mode in ("prefill", "decode"):
        s = mocker_setup(
            "H100 NVL", f"TP{exp.gpus_per_node}", "mocker", out / mode, disaggregation_mode=mode,
            max_model_len=exp.serving.max_model_len, network_name=exp.provider.network,
        )  # fmt: skip
        timings[mode] = MockerTiming(
            s.npz_path, s.kv_bytes_per_token, s.num_gpu_blocks, s.block_size, s.max_num_seqs, s.deployment
        )
    return timings


def _stream_chat(base_url: str, model: str) -> tuple[list[dict], float]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}],
        "max_tokens": 12,
        "stream": True,
    }
    req = urllib.request.Request(
        base_url + "/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    chunks, t0 = [], time.monotonic()
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                chunks.append({"done": True})
                break
            chunks.append(json.loads(data))
    return chunks, time.monotonic() - t0


def test_twin_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.fail("the twin needs root (network namespaces); CI runs as root")
    t_start = time.monotonic()
    monkeypatch.setenv("R1LAB_PROGRESS", "plain")
    token = secrets.token_hex(24)
    monkeypatch.setenv("RAY_AUTH_TOKEN", token)  # Ray 2.60 token auth: the launcher hands it to both nodes
    exp = load_experiment(REPO / "params" / "twin.yaml")
    run_dir = tmp_path / "run-twin-it"
    run_dir.mkdir()
    state_dir = tmp_path / "twin"
    twin = None
    launcher = None
    try:
        with step("twin up"):
            # host pods (asked for): this test drives Ray and Dynamo over SSH between two pods with this machine's
            # venv, without running the params' setup; the default bare pods and their setup run in test_demo
            twin = Twin.up(state_dir, exp.provider.network, pods="host")
            for k, v in twin.client_env().items():
                monkeypatch.setenv(k, v)  # the same settings a real account uses
        client = RunPodClient()
        assert client.base_url == twin.url and client.base_url.startswith("http://127.0.0.1:")

        with step("provision: SSH key, network volume, two 8-GPU pods"):
            prov = Provisioner(run_dir, "it", client=client, poll_s=0.3, ready_timeout_s=120)
            prov.ensure_key()
            vol = prov.volume(exp.volume.size_gb, exp.provider.data_center)
            plans = [
                PodPlan(p.role, p.image, p.gpu_type, p.gpu_count, data_center=exp.provider.data_center,
                        ports=["22/tcp"], volume_mount=exp.volume.mount, global_networking=True)
                for p in exp.serving_pods
            ]  # fmt: skip
            ready = {r.role: r for r in prov.pods(plans, vol)}
        known = HostKeyStore(run_dir / "ssh" / "known_hosts.json")
        ex = {
            role: SshExecutor.for_pod(r.pod, prov.key, known, role, run_dir / "logs" / "ssh.log")
            for role, r in ready.items()
        }
        head, worker = ex["head"], ex["worker"]
        assert head.address != worker.address
        info = twin.status()
        subnet_prefix = info["subnet"].rsplit(".", 1)[0] + "."
        assert head.address.startswith(subnet_prefix) and worker.address.startswith(subnet_prefix)

        with step("SSH: each pod is its own host with 8 declared GPUs"):
            a = head.run("hostname; echo $RUNPOD_GPU_COUNT $R1LAB_GPU_TYPE").output.splitlines()
            b = worker.run("hostname; echo $RUNPOD_GPU_COUNT").output.splitlines()
            assert a[0] == ready["head"].id and b[0] == ready["worker"].id
            assert a[1] == "8 NVIDIA H100 NVL" and b[1] == "8"

        with step("tiny model onto the network volume (seen by both pods)"):
            model_dir = write_tiny_model(tmp_path / "tiny-model")
            head.put(model_dir, exp.model.path)
            assert worker.run(f"test -s {exp.model.path}/tokenizer.json && echo ok").output.strip() == "ok"

        nodes = [
            Node("head", "head", 0, head.address, exp.gpus_per_node),
            Node("worker", "worker", 1, worker.address, exp.gpus_per_node),
        ]
        timings = _mocker_timings(exp, tmp_path / "mocker")
        launcher = Launcher(run_dir, ex)

        with step("Ray: head on pod A, worker on pod B"):
            multi = render(exp, "multi", nodes=nodes, mocker={"engine": timings["decode"]})
            for c in [c for c in multi.to_run if c.name.startswith("ray-")]:
                launcher.start(multi, c)
            ray_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
            # both Ray nodes join within seconds when the machine is quiet; a loaded one needs far longer
            deadline = time.monotonic() + 180
            while True:
                status = head.run("ray status", env=ray_env, timeout=60, check=False).output
                if "16.0 GPU" in status or time.monotonic() > deadline:
                    break
                time.sleep(2)
            print(status)
            assert "0.0/16.0 GPU" in status, status
            ips = (
                head.run(
                    "python -c \"import ray; ray.init(address='auto', logging_level='ERROR'); "
                    "print(sorted(n['NodeManagerAddress'] for n in ray.nodes() if n['Alive']))\"",
                    env=ray_env,
                    timeout=90,
                )
                .output.strip()
                .splitlines()[-1]
            )
            assert ips == str(sorted([head.address, worker.address])), (
                ips
            )  # Ray on the pods' private addresses
            assert worker.run("pgrep -x raylet", check=False).code == 0

        with step("Ray dashboard through an SSH forward"):
            with head.forward(exp_dashboard_port(multi)) as port:
                url = f"http://127.0.0.1:{port}/api/version"
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req, timeout=30) as resp:
                    version = json.loads(resp.read())
                assert version.get("ray_version") == "2.60.0", version
                with pytest.raises(urllib.error.HTTPError) as denied:
                    urllib.request.urlopen(url, timeout=30)
                assert denied.value.code in (401, 403)

        with step("Dynamo: etcd + NATS + frontend + prefill on A, decode on B"):
            dyn = render(exp, "dynamo", nodes=nodes, mocker=timings)
            placed = {c.name: c.node for c in dyn.to_run}
            assert placed["etcd"] == placed["nats"] == placed["dynamo-frontend"] == "head"
            assert placed["mocker-prefill-0"] == "head" and placed["mocker-decode-0"] == "worker"
            endpoint = launcher.launch(dyn, deadline_s=180)

        def completed() -> tuple[int, int]:
            logs = "/tmp/r1lab/logs/dynamo"
            grep = "grep -c 'request completed' {}/mocker-{}-0.log"
            return (
                int(head.run(grep.format(logs, "prefill"), check=False).output.strip() or 0),
                int(worker.run(grep.format(logs, "decode"), check=False).output.strip() or 0),
            )

        before = completed()
        with step("a streamed chat request through the frontend"):
            chunks, seconds = _stream_chat(endpoint.url, endpoint.model)
            deltas = [c for c in chunks if c.get("choices")]
            text = "".join(
                (c["choices"][0].get("delta") or {}).get("content") or "" for c in deltas
            ) + "".join((c["choices"][0].get("delta") or {}).get("reasoning_content") or "" for c in deltas)
            print(f"{len(deltas)} chunks in {seconds:.2f}s: {text[:80]!r}")
            assert len(deltas) >= 2 and chunks[-1] == {"done": True}

        with step("prefill on pod A and decode on pod B both served it"):
            after = completed()
            assert after[0] == before[0] + 1 and after[1] == before[1] + 1, (before, after)

        with step("`ray stop` on pod B leaves pod A's Ray running"):
            worker.run("ray stop", timeout=120)
            assert worker.run("pgrep -x raylet", check=False).code != 0
            assert head.run("pgrep -x gcs_server", check=False).code == 0
            assert head.run("pgrep -x raylet", check=False).code == 0
    finally:
        with step("teardown: serving processes, pods, volume, key, twin"):
            try:  # each step runs even when the one before raised: a failed stop must not leak the twin
                if launcher is not None:
                    launcher.stop(grace=5)
            finally:
                try:
                    report = teardown_run(run_dir)
                    assert report.ok, str(report)
                finally:
                    if twin is not None:
                        left = twin.down()
                        assert not any(left.values()), left
    elapsed = time.monotonic() - t_start
    print(f"twin end to end: {elapsed:.0f} s")
    left = twin.leftovers()
    assert not any(left.values()), left
    assert elapsed < 300


def exp_dashboard_port(dep) -> int:
    head = next(c for c in dep.to_run if c.name == "ray-head")
    return int(head.argv[head.argv.index("--dashboard-port") + 1])
