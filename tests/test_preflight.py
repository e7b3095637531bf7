"""Preflight without pods: what each stage's rendered commands need, and how a pod's facts are judged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from r1lab.config import load_experiment, parse_experiment
from r1lab.preflight import Needs, judge_pod, stage_needs
from r1lab.preflight.probe import PREFIX
from r1lab.serve.commands import nodes_of, render

REPO = Path(__file__).resolve().parent.parent
PROBE = REPO / "r1lab" / "preflight" / "probe.py"
NODES = {"head": "10.0.0.2", "worker": "10.0.0.3"}


def _needs(params: str, stage: str) -> dict[str, Needs]:
    exp = load_experiment(REPO / "params" / params)
    return stage_needs(render(exp, stage, nodes=nodes_of(exp, NODES)))


def test_dynamo_stage_needs_etcd_and_nats_on_the_head_and_every_plan_port() -> None:
    n = _needs("twin.yaml", "dynamo")
    assert {"etcd", "nats-server", "python"} <= n["head"].binaries
    assert "dynamo.frontend" in n["head"].modules and "dynamo.mocker" in n["worker"].modules
    assert {"ai-dynamo", "ai-dynamo-runtime"} <= n["worker"].dists
    assert n["head"].ports[2379].startswith("etcd") and n["head"].ports[4222].startswith("NATS")
    nixl = {
        p for node in n.values() for p, what in node.ports.items() if what.startswith("NIXL side channel")
    }
    assert nixl == {5600, 5601}  # from the dynamo.vllm commands the mocker stands in for (same network path)
    assert any(w.startswith("P/D bootstrap") for w in n["head"].ports.values())
    assert all(40123 in node.ports for node in n.values())  # the ephemeral range NCCL/Gloo use, sampled


def test_multi_stage_needs_ray_and_its_gcs_port() -> None:
    n = _needs("twin.yaml", "multi")
    assert "ray" in n["head"].binaries and "ray" in n["worker"].binaries
    assert n["head"].ports[6379] == "Ray GCS"
    assert set(n["head"].malloc.values()) == {"1"}  # RunPod's Ray/vLLM guide


def _facts(**over) -> dict:
    base = {
        "time": 0.0,
        "binaries": {"etcd": "/usr/bin/etcd", "nats-server": "/usr/sbin/nats-server", "python": "/x/python"},
        "bin_versions": {},
        "modules": {"dynamo.frontend": True},
        "dists": {"ai-dynamo": "1.6.1", "ai-dynamo-runtime": "1.6.1"},
        "gpu": {"source": "declared", "names": ["NVIDIA H100 NVL"] * 8},
        "shm_bytes": 16 * 2**30,
        "paths": {"/workspace": {"exists": True, "free": 10**12, "total": 10**12}},
        "files": {"/workspace/models/DeepSeek-R1/config.json": True},
    }
    return base | over


def _judge(facts: dict, setup: list[str] | None = None, needs: Needs | None = None) -> list:
    exp = load_experiment(REPO / "params" / "twin.yaml")
    needs = needs or Needs(
        {"etcd", "nats-server", "python"}, {"dynamo.frontend"}, {"ai-dynamo"}, {}, {"ray": "1"}
    )
    return judge_pod("head", "head", facts, "", exp=exp, needs=needs, gpu_type="NVIDIA H100 NVL", gpu_count=8,
                     setup=setup or [], volume="/workspace", weights_bytes=None,
                     weights_file="/workspace/models/DeepSeek-R1/config.json")  # fmt: skip


def test_a_missing_binary_fails_with_the_setup_line_to_add() -> None:
    rows = _judge(_facts(binaries={"etcd": None, "nats-server": None, "python": "/x/python"}))
    bad = [r for r in rows if r.status == "fail"]
    assert [r.check for r in bad] == ["binary etcd", "binary nats-server"]
    assert "apt-get install -y etcd-server nats-server" in bad[0].fix and "pods[head].setup" in bad[0].fix


def test_versions_are_judged_against_the_pods_setup_pins() -> None:
    rows = _judge(_facts(dists={"ai-dynamo": "1.6.0"}), setup=["pip install --no-deps ai-dynamo==1.6.1"])
    [bad] = [r for r in rows if r.status == "fail"]
    assert bad.check == "version ai-dynamo" and bad.found == "1.6.0" and bad.expected == "==1.6.1"


def test_shm_gpus_and_weights() -> None:
    rows = _judge(_facts(shm_bytes=64 * 2**20, files={}))
    bad = {r.check: r for r in rows if r.status == "fail"}
    assert set(bad) == {"/dev/shm", "weights on the volume"}
    assert bad["/dev/shm"].found == "0.1 GiB" and "remount" in bad["/dev/shm"].fix
    gpus = next(r for r in rows if r.check == "GPUs")
    assert gpus.source == "declared (twin)" and gpus.found == "8 x NVIDIA H100 NVL"
    real = _judge(_facts(gpu={"source": "nvidia-smi", "names": ["NVIDIA H100 NVL"] * 4, "driver": "570.1"}))
    assert next(r for r in real if r.check == "GPUs").status == "fail"


def test_a_command_without_malloc_arena_max_fails() -> None:
    needs = Needs({"python"}, set(), set(), {}, {"ray-head": None})
    [bad] = [r for r in _judge(_facts(), needs=needs) if r.status == "fail"]
    assert bad.check == "MALLOC_ARENA_MAX" and "ray-head" in bad.found


def test_the_probe_runs_here_with_the_standard_library(tmp_path: Path) -> None:
    cfg = {"binaries": ["sh", "no-such-binary-r1lab"], "modules": ["json"], "dists": ["pyyaml"],
           "paths": [str(tmp_path)], "files": [], "address": "127.0.0.1", "sizes": [str(tmp_path)]}  # fmt: skip
    (tmp_path / "x").write_bytes(b"12345")
    out = subprocess.run(
        [sys.executable, str(PROBE), "facts", json.dumps(cfg)], capture_output=True, text=True
    )
    facts = json.loads(out.stdout.strip().splitlines()[-1][len(PREFIX) :])
    assert facts["binaries"]["sh"] and facts["binaries"]["no-such-binary-r1lab"] is None
    assert facts["modules"]["json"] and facts["iface"] == "lo" and facts["sizes"][str(tmp_path)] == 5
    assert facts["shm_bytes"] and facts["paths"][str(tmp_path)]["free"] > 0


def test_iface_vars_follow_the_interface_of_the_private_address() -> None:
    exp = load_experiment(REPO / "params" / "runpod-2x8-h100nvl.yaml")
    nodes = nodes_of(exp, NODES, {"head": "enp1s0", "worker": "eth1"})
    dep = render(exp, "multi", nodes=nodes)
    for c in dep.commands:
        want = {"head": "enp1s0", "worker": "eth1"}[c.node]
        for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME", "TP_SOCKET_IFNAME", "UCX_NET_DEVICES"):
            assert c.env[var] == want, (c.name, var)
        assert c.env["MALLOC_ARENA_MAX"] == "1"
    dyn = render(exp, "dynamo", nodes=nodes)
    for c in dyn.commands:
        if "dynamo.vllm" in c.argv:
            assert c.env["UCX_NET_DEVICES"] == {"head": "enp1s0", "worker": "eth1"}[c.node]
    data = yaml.safe_load((REPO / "params" / "runpod-cluster-2x8-h100sxm.yaml").read_text())
    cluster = parse_experiment(yaml.safe_dump(data), "c.yaml")
    dry = render(cluster, "multi", nodes=nodes_of(cluster))
    assert {c.env["NCCL_SOCKET_IFNAME"] for c in dry.commands} == {"ens1"}  # as RunPod documents


def test_launch_deadline_follows_weight_bytes_and_the_volume_read_rate() -> None:
    """A fixed 30 min cannot load ~681 GB per node from a 200 MB/s volume (57 min of reading alone)."""
    from r1lab.serve.deploy import launch_deadline_s

    exp = load_experiment(REPO / "params" / "runpod-2x8-h100nvl.yaml")
    slow, how = launch_deadline_s(exp, "single", 200e6)
    fast, _ = launch_deadline_s(exp, "single", 2e9)
    multi, _ = launch_deadline_s(exp, "multi", 200e6)
    assert slow > 1.5 * 681e9 / 200e6 and "681 GB per node at 200 MB/s (measured" in how
    assert fast < slow and 600 < fast < 1200
    assert multi < slow  # PP2: each node reads half the layers
    assert "assumed" in launch_deadline_s(exp, "single", None)[1]
    twin = load_experiment(REPO / "params" / "twin.yaml")
    assert launch_deadline_s(twin, "single", 1e8)[0] == 600  # the mocker reads no weights
