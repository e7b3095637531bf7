"""Unit tests: the commands r1lab renders for each topology are pinned (R1 flags, Ray, --nnodes, DP+EP, Dynamo)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from r1lab.config import load_experiment, parse_experiment
from r1lab.serve.checks import parse_nvidia_smi, vram_per_gpu, write_command_file
from r1lab.serve.cli import cli_main
from r1lab.serve.commands import (
    API_KEY_ENV,
    Node,
    ServeConfigError,
    nodes_of,
    render,
    stages,
)
from r1lab.serve.plan_audit import audit_plan, format_audit

REPO = Path(__file__).resolve().parent.parent
PARAMS = sorted((REPO / "params").glob("*.yaml"))


def exp_of(name: str):
    return load_experiment(REPO / "params" / name)


def variant(base: str, **serving):
    """A params file with serving keys replaced (the topology variants no committed params file uses)."""
    import yaml

    data = yaml.safe_load((REPO / "params" / base).read_text())
    data["serving"].update(serving)
    return parse_experiment(yaml.safe_dump(data), f"{base}+{serving}")


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def by_name(dep, name):
    return next(c for c in dep.commands if c.name == name)


NODES = [Node("head", "head", 0, "10.0.0.1", 8), Node("worker", "worker", 1, "10.0.0.2", 8)]


def test_single_node_tp8_r1_flags() -> None:
    dep = render(exp_of("runpod-1x8-h100nvl.yaml"), "single", nodes=NODES[:1])
    assert [c.name for c in dep.commands] == ["vllm-serve"]
    c = dep.commands[0]
    assert c.argv[:3] == [
        "vllm",
        "serve",
        "/workspace/models/DeepSeek-R1",
    ]  # model positional, from the volume
    assert flag(c.argv, "--tensor-parallel-size") == "8"
    assert "--dtype" not in c.argv and "--quantization" not in c.argv  # FP8 from quantization_config
    assert flag(c.argv, "--kv-cache-dtype") == "fp8"
    assert flag(c.argv, "--max-model-len") == "8192"
    assert flag(c.argv, "--reasoning-parser") == "deepseek_r1"
    assert flag(c.argv, "--served-model-name") == "deepseek-r1"
    assert "--trust-remote-code" not in c.argv  # deepseek_v3 is native to vLLM and transformers
    assert "--api-key" not in c.argv and c.secrets == {
        "VLLM_API_KEY": API_KEY_ENV
    }  # public port: key via env
    assert c.env["VLLM_HOST_IP"] == "10.0.0.1"
    assert c.ready.completion and c.ready.port == 8000
    assert "${R1LAB_VLLM_API_KEY:?" in c.shell()


def test_ray_tp8_pp2_two_nodes() -> None:
    exp = exp_of("runpod-2x8-h100nvl.yaml")
    dep = render(exp, "multi", nodes=NODES)
    assert [c.name for c in dep.commands] == ["ray-head", "ray-worker-worker", "vllm-serve"]
    head, worker, serve = dep.commands
    assert head.argv[:3] == ["ray", "start", "--head"]
    assert flag(head.argv, "--node-ip-address") == "10.0.0.1"
    assert flag(head.argv, "--dashboard-host") == "127.0.0.1"  # never 0.0.0.0 (facts.md 6)
    assert flag(worker.argv, "--address") == "10.0.0.1:6379"
    assert flag(worker.argv, "--node-ip-address") == "10.0.0.2"
    assert head.env["VLLM_HOST_IP"] == "10.0.0.1" and worker.env["VLLM_HOST_IP"] == "10.0.0.2"
    assert head.env["NCCL_IB_DISABLE"] == "1"  # Global Networking: TCP only
    assert head.env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in head.secrets
    assert head.env["RAY_agent_register_timeout_ms"] == "180000"  # loaded: agents need > 30 s
    assert not head.background and head.stop_argv == ["ray", "stop"]
    assert flag(serve.argv, "--tensor-parallel-size") == "8"
    assert flag(serve.argv, "--pipeline-parallel-size") == "2"
    assert flag(serve.argv, "--distributed-executor-backend") == "ray"
    assert "TP8xPP2" in dep.topology


def test_instant_cluster_nccl_ifname() -> None:
    dep = render(exp_of("runpod-cluster-2x8-h100sxm.yaml"), "multi", nodes=NODES)
    assert by_name(dep, "vllm-serve").env["NCCL_SOCKET_IFNAME"] == "ens1"
    assert "NCCL_IB_DISABLE" not in by_name(dep, "vllm-serve").env


def test_nnodes_variant_headless_worker() -> None:
    exp = variant("runpod-cluster-2x8-h100sxm.yaml", distributed_backend="nnodes")
    dep = render(exp, "multi", nodes=NODES)
    assert [c.name for c in dep.commands] == ["vllm-serve", "vllm-headless-worker"]
    r0, r1 = dep.commands
    for c, rank in ((r0, "0"), (r1, "1")):
        assert flag(c.argv, "--nnodes") == "2" and flag(c.argv, "--node-rank") == rank
        assert flag(c.argv, "--master-addr") == "10.0.0.1"
    assert "--headless" in r1.argv and "--headless" not in r0.argv
    assert r1.ready is None and r1.secrets == {}  # the headless node serves no HTTP
    assert not any(c.argv[0] == "ray" for c in dep.commands)


def test_dp_ep_variant() -> None:
    exp = variant("runpod-cluster-2x8-h100sxm.yaml", pipeline_parallel=1, data_parallel=2, expert_parallel=True,
                  distributed_backend="nnodes")  # fmt: skip
    dep = render(exp, "multi", nodes=NODES)
    r0, r1 = dep.commands
    for c in (r0, r1):
        assert flag(c.argv, "--tensor-parallel-size") == "8" and flag(c.argv, "--data-parallel-size") == "2"
        assert flag(c.argv, "--data-parallel-size-local") == "1"
        assert flag(c.argv, "--data-parallel-address") == "10.0.0.1"
        assert flag(c.argv, "--data-parallel-rpc-port") == "13345"
        assert "--enable-expert-parallel" in c.argv and "--pipeline-parallel-size" not in c.argv
    assert "--headless" in r1.argv and flag(r1.argv, "--data-parallel-start-rank") == "1"


def test_dynamo_pd_nixl_distinct_ports() -> None:
    exp = exp_of("runpod-2x8-h100nvl.yaml")
    dep = render(exp, "dynamo", nodes=NODES)
    names = [c.name for c in dep.commands]
    assert names[:3] == ["etcd", "nats", "dynamo-frontend"]
    front = by_name(dep, "dynamo-frontend")
    assert front.argv[:3] == ["python", "-m", "dynamo.frontend"] and flag(front.argv, "--router-mode") == "kv"
    assert flag(front.argv, "--http-host") == "127.0.0.1"  # RunPod: no API key in Dynamo: SSH forward only
    assert (
        front.env["ETCD_ENDPOINTS"] == "http://10.0.0.1:2379"
        and front.env["NATS_SERVER"] == "nats://10.0.0.1:4222"
    )
    pre, dec = by_name(dep, "dynamo-vllm-prefill-0"), by_name(dep, "dynamo-vllm-decode-0")
    assert pre.node == "head" and dec.node == "worker"
    for c, mode in ((pre, "prefill"), (dec, "decode")):
        assert c.argv[:3] == ["python", "-m", "dynamo.vllm"]
        assert flag(c.argv, "--disaggregation-mode") == mode
        assert json.loads(flag(c.argv, "--kv-transfer-config"))["kv_connector"] == "NixlConnector"
        assert flag(c.argv, "--dyn-reasoning-parser") == "deepseek_r1" and "--dtype" not in c.argv
    assert pre.env["DYN_SYSTEM_PORT"] != dec.env["DYN_SYSTEM_PORT"]
    assert pre.env["VLLM_NIXL_SIDE_CHANNEL_PORT"] != dec.env["VLLM_NIXL_SIDE_CHANNEL_PORT"]
    assert pre.env["DYN_TCP_RPC_HOST"] == "10.0.0.1" and dec.env["DYN_TCP_RPC_HOST"] == "10.0.0.2"


def test_dynamo_aggregated_two_workers_one_node_split_gpus() -> None:
    import yaml

    data = yaml.safe_load((REPO / "params" / "runpod-1x8-h200.yaml").read_text())
    data["dynamo"] = {"enabled": True, "router_mode": "round-robin", "decode_workers": 2}
    exp = parse_experiment(yaml.safe_dump(data), "agg")
    dep = render(exp, "dynamo", nodes=NODES[:1])
    workers = [c for c in dep.commands if "dynamo.vllm" in c.argv]
    assert [c.env["CUDA_VISIBLE_DEVICES"] for c in workers] == ["0,1,2,3", "4,5,6,7"]
    assert all(flag(c.argv, "--tensor-parallel-size") == "4" for c in workers)
    assert all("--disaggregation-mode" not in c.argv for c in workers)
    assert by_name(dep, "dynamo-frontend").env["DYN_DISCOVERY_BACKEND"] == "file"  # one node: no etcd needed
    data["dynamo"]["decode_workers"] = 3
    with pytest.raises(ServeConfigError, match="cannot split its 8 GPUs"):
        render(parse_experiment(yaml.safe_dump(data), "agg3"), "dynamo", nodes=NODES[:1])


def test_twin_mocker_stands_in_and_vllm_is_recorded_not_run(tmp_path: Path) -> None:
    exp = exp_of("twin.yaml")
    for stage in stages(exp):
        dep = render(exp, stage, nodes=NODES)
        vllm = [c for c in dep.commands if c.argv[:2] == ["vllm", "serve"] or "dynamo.vllm" in c.argv]
        mock = [c for c in dep.commands if "dynamo.mocker" in c.argv]
        assert vllm and all(not c.run for c in vllm), stage
        assert mock and all(c.run for c in mock), stage
        for c in mock:
            # MLA latent (facts.md); under P/D the bytes that cross the link: one copy per decode TP rank
            pd = "--disaggregation-mode" in c.argv
            latent = {"auto": 70272, "fp8": 35136}[exp.serving.kv_cache_dtype]
            assert flag(c.argv, "--kv-bytes-per-token") == str(latent * (8 if pd else 1)), c.name
        path = write_command_file(tmp_path, dep)
        lines = path.read_text().splitlines()
        for c in vllm:  # recorded, commented out, marked NOT RUN
            assert f"# --- {c.name} on {c.node}  [NOT RUN: rendered only]" in lines
            assert "# " + c.shell() + (" &" if c.background else "") in lines
    dyn = render(exp, "dynamo", nodes=NODES)
    modes = {flag(c.argv, "--disaggregation-mode") for c in dyn.commands if "dynamo.mocker" in c.argv}
    assert modes == {"prefill", "decode"}
    assert (
        by_name(dyn, "mocker-prefill-0").node == "head" and by_name(dyn, "mocker-decode-0").node == "worker"
    )
    assert flag(by_name(dyn, "mocker-prefill-0").argv, "--kv-transfer-bandwidth") == "0.0125"  # 100 Mbps
    multi = render(exp, "multi", nodes=NODES)
    assert [c.name for c in multi.commands if c.run][:2] == ["ray-head", "ray-worker-worker"]  # real Ray


def test_twin_mocker_reasons_with_the_tiny_tokenizers_think_ids() -> None:
    """serving.mocker_reasoning: every mocker streams `<think>` .. `</think>` (the served tokenizer's ids) around
    that fraction of each output; without it, no --reasoning (the mocker answers at once)."""
    from r1lab.tinymodel import build_tokenizer

    exp = exp_of("twin.yaml")
    exp = exp.model_copy(update={"serving": exp.serving.model_copy(update={"mocker_reasoning": 0.25})})
    tok = build_tokenizer()
    for c in (c for c in render(exp, "dynamo", nodes=NODES).commands if "dynamo.mocker" in c.argv):
        assert json.loads(flag(c.argv, "--reasoning")) == {"start_thinking_token_id": tok.token_to_id("<think>"),
                                                         "end_thinking_token_id": tok.token_to_id("</think>"),
                                                         "thinking_ratio": 0.25}, c.name  # fmt: skip
    off = exp.model_copy(update={"serving": exp.serving.model_copy(update={"mocker_reasoning": None})})
    assert not any("--reasoning" in c.argv for c in render(off, "dynamo", nodes=NODES).commands)


def test_command_files_numbered_never_overwritten(tmp_path: Path) -> None:
    dep = render(exp_of("runpod-1x8-h100nvl.yaml"), "single")
    a, b = write_command_file(tmp_path, dep), write_command_file(tmp_path, dep)
    assert a.name == "00-serve-single.sh" and b.name == "01-serve-single.sh"
    assert json.loads(a.with_suffix(".json").read_text())["commands"][0]["argv"][1] == "serve"


def test_command_files_replay_what_the_launcher_runs(tmp_path: Path) -> None:
    """commands/NN-<stage>.sh replays a process as the launcher starts it: the files it needs copied named, its
    `pre` lines (etcd's and NATS's fresh stores) just before its command line; the JSON records both."""
    from r1lab.serve.deploy import plan_stage

    dep = plan_stage(exp_of("twin.yaml"), tmp_path, "dynamo", nodes=NODES)  # the twin's: with mocker tables
    sh = sorted((tmp_path / "commands").glob("*-serve-dynamo.sh"))[-1]
    lines = sh.read_text().splitlines()
    meta = {c["name"]: c for c in json.loads(sh.with_suffix(".json").read_text())["commands"]}
    pres = [c for c in dep.to_run if c.pre]
    assert {c.name for c in pres} >= {"etcd", "nats"} and any(c.uploads for c in dep.to_run)
    for c in dep.to_run:
        at = lines.index(c.shell() + (" &" if c.background else ""))
        assert lines[at - len(c.pre) : at] == c.pre, c.name
        head = lines.index(f"# --- {c.name} on {c.node}")
        for src, dst in c.uploads:
            copy = f"# before it, copy from where r1lab ran: {src} -> {c.node}:{dst}"
            assert copy in lines[head:at], c.name
        assert meta[c.name]["pre"] == c.pre and [tuple(u) for u in meta[c.name]["uploads"]] == c.uploads


def test_secrets_never_in_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(API_KEY_ENV, "sk-very-secret-value-123")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "ray-secret-token-456")
    for st in stages(exp_of("runpod-2x8-h100nvl.yaml")):
        dep = render(exp_of("runpod-2x8-h100nvl.yaml"), st)
        text = write_command_file(tmp_path, dep).read_text()
        assert "sk-very-secret" not in text and "ray-secret-token" not in text


def test_max_model_len_from_planner_when_null() -> None:
    exp = variant("runpod-1x8-h200.yaml", max_model_len=None)
    c = render(exp, "single").commands[0]
    n = int(flag(c.argv, "--max-model-len"))
    from r1lab.model import Parallelism
    from r1lab.perf.memory import memory_plan

    plan = memory_plan("NVIDIA H200", Parallelism(8), kv_dtype="fp8", gpu_memory_utilization=0.92,
                       max_num_seqs=exp.serving.max_num_seqs)  # fmt: skip
    assert n == min(plan.kv_tokens, 163840) and n > 0


def test_shell_lines_are_replayable() -> None:
    for params in PARAMS:
        exp = load_experiment(params)
        for st in stages(exp):
            for c in render(exp, st).commands:
                tokens = shlex.split(c.shell())
                assert tokens[-len(c.argv) :] == c.argv


def test_nodes_placeholders_and_addresses() -> None:
    exp = exp_of("twin.yaml")
    assert [n.address for n in nodes_of(exp)] == ["HEAD_ADDR", "WORKER_ADDR"]
    assert [n.address for n in nodes_of(exp, {"head": "10.1.0.2", "worker": "10.1.0.3"})] == [
        "10.1.0.2",
        "10.1.0.3",
    ]


def test_plan_audit_flag_by_flag() -> None:
    items = audit_plan(exp_of("runpod-2x8-h100nvl.yaml"))
    verdict = {i.original: i.verdict for i in items}
    assert verdict["python -m vllm.entrypoints.api_server"] == "rejected"
    assert verdict["--dtype float8_e4m3fn"] == "rejected"
    assert verdict["--tensor-parallel-size 16"] == "corrected"
    assert verdict["--dashboard-host 0.0.0.0"] == "corrected"
    tp = next(i for i in items if i.original == "--tensor-parallel-size 16")
    assert (
        "--tensor-parallel-size 8 --pipeline-parallel-size 2" in tp.replacement
    )  # from the rendered command
    text = format_audit(items)
    assert text.index("REJECTED") < text.index("CORRECTED")


def test_vram_twin_is_modelled_and_nvidia_smi_parsed() -> None:
    rep = vram_per_gpu(exp_of("twin.yaml"), None, "multi")
    assert rep.source == "modelled" and len(rep.gpus) == 8 and "modelled" in rep.note
    rows = parse_nvidia_smi("0, NVIDIA H100 NVL, 88000, 95830\n1, NVIDIA H100 NVL, 87990, 95830\n")
    assert rows[1] == {"index": 1, "name": "NVIDIA H100 NVL", "used_mib": 87990.0, "total_mib": 95830.0}


def test_cli_dry_run_and_audit(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main([str(REPO / "params" / "twin.yaml"), "--dry-run", "--audit-plan"]) == 0
    out = capsys.readouterr().out
    assert "--dtype float8_e4m3fn" in out and "NOT RUN" in out and "python -m dynamo.mocker" in out
    assert out.index("flag by flag") < out.index("#!/usr/bin/env bash")  # the audit comes first
    assert cli_main([str(REPO / "params" / "runpod-1x8-h100nvl.yaml"), "--stage", "multi"]) == 2
    assert cli_main([str(REPO / "params" / "nope.yaml")]) == 1


def test_private_names_resolve_to_ips_on_the_pod() -> None:
    from r1lab.execution import LocalExecutor
    from r1lab.serve.deploy import resolve_ip
    from r1lab.serve.launch import ServeError

    ex = LocalExecutor()
    assert resolve_ip(ex, "10.0.0.7") == "10.0.0.7"
    assert resolve_ip(ex, "localhost") == "127.0.0.1"
    with pytest.raises(ServeError, match="cannot resolve private address"):
        resolve_ip(ex, "no-such-pod.invalid")


def test_dynamo_vllm_workers_publish_kv_events_on_their_own_loopback() -> None:
    dep = render(exp_of("runpod-2x8-h100nvl.yaml"), "dynamo", nodes=NODES)
    workers = [c for c in dep.commands if "dynamo.vllm" in c.argv]
    cfgs = [json.loads(flag(c.argv, "--kv-events-config")) for c in workers]
    assert len(cfgs) == 2 and all(c["enable_kv_cache_events"] and c["publisher"] == "zmq" for c in cfgs)
    ends = [c["endpoint"] for c in cfgs]
    assert all(e.startswith("tcp://127.0.0.1:") for e in ends) and len(set(ends)) == 2  # private, distinct


def test_twin_real_engine_renders_the_same_workers_on_the_cpu_build() -> None:
    """engine=vllm on the twin: the GPU pods' dynamo.vllm commands, with only the CPU build's differences."""
    exp = exp_of("twin.yaml")
    gpu = render(exp_of("runpod-2x8-h100nvl.yaml"), "dynamo", nodes=NODES)
    dep = render(exp, "dynamo", nodes=NODES, engine="vllm")
    assert dep.engine == "vllm" and not dep.not_run and any("CPU build" in n for n in dep.notes)
    assert not [c for c in dep.commands if "dynamo.mocker" in c.argv]
    pre, dec = by_name(dep, "dynamo-vllm-prefill-0"), by_name(dep, "dynamo-vllm-decode-0")
    assert (pre.node, dec.node) == ("head", "worker") and pre.run and dec.run
    for c, g in ((pre, by_name(gpu, "dynamo-vllm-prefill-0")), (dec, by_name(gpu, "dynamo-vllm-decode-0"))):
        assert c.argv[:3] == g.argv[:3] == ["python", "-m", "dynamo.vllm"]
        for f in ("--disaggregation-mode", "--kv-transfer-config", "--dyn-reasoning-parser"):
            assert flag(c.argv, f) == flag(g.argv, f), f
        assert flag(c.argv, "--tensor-parallel-size") == "1" and "--enforce-eager" in c.argv
        # start-up on 2 cores: the worker in the engine-core process, a KV cache sized for 8 x 2048 tokens
        assert flag(c.argv, "--distributed-executor-backend") == "uni"
        assert c.env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and "VLLM_CPU_KVCACHE_SPACE" not in c.env
        assert 8 * 2048 * 3456 <= int(flag(c.argv, "--kv-cache-memory-bytes")) <= 2**27
        assert flag(c.argv, "--kv-cache-dtype") == "auto" and int(flag(c.argv, "--max-model-len")) <= 2048
        assert c.env["UCX_TLS"] == "tcp,self" and c.env["UCX_NET_DEVICES"] == "eth0"
        # stopped by the twin with nothing in flight: no grace period (cpu_engine.py); the GPU's keeps Dynamo's
        assert c.env["DYN_GRACEFUL_SHUTDOWN_GRACE_PERIOD_SECS"] == "0" and "DYN_GRACEFUL" not in str(g.env)
        assert c.env["VLLM_NIXL_SIDE_CHANNEL_HOST"] == c.env["VLLM_HOST_IP"] == c.env["DYN_TCP_RPC_HOST"]
        assert json.loads(flag(c.argv, "--kv-events-config"))["enable_kv_cache_events"]
    assert render(exp, "dynamo", nodes=NODES).engine == "mocker"  # default unchanged


def test_cpu_workers_get_vllms_model_inspection_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The twin's CPU workers read vLLM's model-inspection answer from their own VLLM_CACHE_ROOT, a copy of the
    engine venv's (cpu_engine.py), and the records say so; GPU commands and the mocker's are untouched."""
    venv = tmp_path / "venv"
    info = venv / "r1lab-vllm-cache" / "modelinfos" / "vllm-models-deepseek_v2-DeepseekV3ForCausalLM.json"
    info.parent.mkdir(parents=True)
    info.write_text("{}")
    monkeypatch.setenv("R1LAB_DYNAMO_VLLM_VENV", str(venv))
    dep = render(exp_of("twin.yaml"), "dynamo", nodes=NODES, engine="vllm")
    workers = [c for c in dep.commands if "dynamo.vllm" in c.argv]
    assert len(workers) == 2
    for c in workers:
        assert c.env["VLLM_CACHE_ROOT"] == "/tmp/r1lab/vllm-cache"
        assert c.uploads == [(str(info), f"/tmp/r1lab/vllm-cache/modelinfos/{info.name}")]
    assert any("model-class inspection answered from vLLM's own cache" in n for n in dep.notes)
    assert any("grace period 0" in n for n in dep.notes)
    for other in (render(exp_of("runpod-2x8-h100nvl.yaml"), "dynamo", nodes=NODES),
                  render(exp_of("twin.yaml"), "dynamo", nodes=NODES)):  # fmt: skip
        assert not [c for c in other.commands if "VLLM_CACHE_ROOT" in c.env or "vllm-cache" in str(c.uploads)]
        assert not any("inspection" in n or "grace" in n for n in other.notes)
    info.unlink()  # an engine venv without the cache: the workers inspect in a subprocess, as the notes say
    dep = render(exp_of("twin.yaml"), "dynamo", nodes=NODES, engine="vllm")
    assert not [c.uploads for c in dep.commands if "dynamo.vllm" in c.argv and c.uploads]
    assert any("no vLLM model-inspection cache" in n for n in dep.notes)


def test_cpu_spec_replaces_the_flags_it_owns() -> None:
    from dataclasses import replace

    from r1lab.serve.commands import VllmSpec
    from r1lab.serve.cpu_engine import CPU_KVCACHE_BYTES, cpu_spec

    base = VllmSpec.from_experiment(exp_of("twin.yaml"))
    mine = replace(base, extra_args=("--kv-cache-memory-bytes", "1", "--enforce-eager", "--seed", "3"))
    args = cpu_spec(mine).extra_args
    assert args.count("--kv-cache-memory-bytes") == 1 and args.count("--enforce-eager") == 1
    assert args[args.index("--kv-cache-memory-bytes") + 1] == str(CPU_KVCACHE_BYTES)
    assert args[:2] == ("--seed", "3")  # what is not the CPU build's own is kept


def test_etcd_and_nats_start_on_fresh_stores() -> None:
    """An etcd restarted on an earlier deployment's data dir (04's real-engine check, then its mocker stage, on the
    same head) replays that deployment's lease revocations and revoked a new worker's lease: each launch clears
    the stores first."""
    dep = render(exp_of("twin.yaml"), "dynamo", nodes=NODES)
    etcd, nats = by_name(dep, "etcd"), by_name(dep, "nats")
    assert etcd.pre == [f"rm -rf {flag(etcd.argv, '--data-dir')}"]
    assert nats.pre == [f"rm -rf {flag(nats.argv, '--store_dir')}"]
