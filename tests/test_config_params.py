"""Params validation: every committed params file validates; bad params give errors naming file, key and fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from r1lab.config import ParamsError, load_experiment, parse_experiment

REPO = Path(__file__).resolve().parent.parent
PARAMS = sorted((REPO / "params").glob("*.yaml"))

GOOD = """
name: ok
provider: {kind: runpod, data_center: EU-RO-1}
pods:
  - {role: head, gpu_type: NVIDIA H100 NVL, gpu_count: 8}
serving: {engine: vllm, tensor_parallel: 8}
"""


def test_every_params_file_validates() -> None:
    assert {p.name for p in PARAMS} >= {
        "twin.yaml",
        "runpod-1x8-h100nvl.yaml",
        "runpod-2x8-h100nvl.yaml",
        "runpod-cluster-2x8-h100sxm.yaml",
        "runpod-1x8-h200.yaml",
    }
    for p in PARAMS:
        exp = load_experiment(p)
        assert exp.name == p.stem


def test_good_minimal_params() -> None:
    exp = parse_experiment(GOOD, "x.yaml")
    assert exp.total_gpus == 8 and exp.nodes == 1 and exp.gpu_type == "NVIDIA H100 NVL"


def _problems(text: str) -> list[str]:
    with pytest.raises(ParamsError) as info:
        parse_experiment(text, "bad.yaml")
    return info.value.problems


# (description, text replacement applied to GOOD, substrings the single error must contain)
BAD_CASES = [
    (
        "typo in a key",
        ("tensor_parallel: 8", "tensor_paralel: 8"),
        ["bad.yaml:6", "serving.tensor_paralel", "unknown key", "did you mean 'tensor_parallel'"],
    ),
    (
        "wrong type",
        ("tensor_parallel: 8", "tensor_parallel: eight"),
        ["bad.yaml:6", "serving.tensor_parallel", "expected a valid integer", "'eight'"],
    ),
    (
        "unknown GPU type",
        ("NVIDIA H100 NVL", "NVIDIA H100 NV"),
        ["bad.yaml:5", "pods[0].gpu_type", "unknown GPU type", "did you mean 'NVIDIA H100 NVL'"],
    ),
    (
        "parallelism does not fit",
        ("tensor_parallel: 8", "tensor_parallel: 16"),
        ["serving.tensor_parallel", "= 16 GPUs", "have 8"],
    ),
    (
        "plan's --dtype flag",
        ("tensor_parallel: 8}", 'tensor_parallel: 8, extra_args: ["--dtype", "float8_e4m3fn"]}'),
        ["serving.extra_args", "--dtype float8_e4m3fn", "quantization_config", "remove the flag"],
    ),
    (
        "flag r1lab owns",
        ("tensor_parallel: 8}", 'tensor_parallel: 8, extra_args: ["--max-model-len=4096"]}'),
        ["serving.extra_args", "--max-model-len", "serving.max_model_len"],
    ),
    (
        "P/D without Dynamo",
        ("serving:", "dynamo: {disaggregated: true}\nserving:"),
        ["dynamo.disaggregated", "dynamo.enabled: true"],
    ),
    ("lowercase data center", ("EU-RO-1", "eu-ro-1"), ["provider.data_center", "upper case", "'eu-ro-1'"]),
    (
        "plan's *.fp8 pattern",
        ("serving:", 'model: {include: ["*.fp8"]}\nserving:'),
        ["model.include[0]", "matches no file", "'*.safetensors'"],
    ),
    (
        "secret in params",
        ("serving:", "hf_token: hf_abcdefghijklmnopqrstuvwxyz\nserving:"),
        ["hf_token", "secrets never go in params", "environment"],
    ),
    ("mocker on RunPod", ("engine: vllm", "engine: mocker"), ["serving.engine", "on RunPod use 'vllm'"]),
    (
        "two pods without a network",
        ("pods:", "pods:\n  - {role: worker, gpu_type: NVIDIA H100 NVL, gpu_count: 8}"),
        ["tensor_parallel"],
    ),
    (
        "gpu memory utilisation out of range",
        ("tensor_parallel: 8}", "tensor_parallel: 8, gpu_memory_utilization: 1.5}"),
        ["serving.gpu_memory_utilization", "0.98", "1.5"],
    ),
    ("not YAML", ("serving:", "serving: [unclosed"), ["bad.yaml", "not valid YAML"]),
    (
        "duplicate key (YAML would let the last one win)",
        ("data_center: EU-RO-1}", "data_center: EU-RO-1, budget_usd: 5}\nprovider2: 1\nname: again"),
        ["bad.yaml:5", "name", "given twice", "first on line 2"],
    ),
    (
        "duplicate key in a nested mapping",
        ("data_center: EU-RO-1}", "data_center: EU-RO-1, budget_usd: 5, budget_usd: 5000}"),
        ["bad.yaml:3", "budget_usd", "given twice"],
    ),
    (
        "pod deadline of 100000 hours",
        ("data_center: EU-RO-1}", "data_center: EU-RO-1, pod_deadline_hours: 100000}"),
        ["bad.yaml:3", "provider.pod_deadline_hours", "168", "100000"],
    ),
    (
        "heartbeat timeout too short for the watchdog",
        ("data_center: EU-RO-1}", "data_center: EU-RO-1, heartbeat_timeout_s: 30}"),
        ["provider.heartbeat_timeout_s", "at least 120", "0 to switch"],
    ),
    (
        "a load point that never ends",
        ("serving:", "load: {scenarios: [{name: s, duration_s: 1e9}]}\nserving:"),
        ["load.scenarios[0].duration_s", "86400"],
    ),
    (
        "unknown data center",
        ("data_center: EU-RO-1}", "data_center: XX-NOPE-9}"),
        ["bad.yaml:3", "provider.data_center", "no data center 'XX-NOPE-9'", "EU-RO-1", "US-KS-2"],
    ),
    (
        "data center typo",
        ("data_center: EU-RO-1}", "data_center: EU-RO-2}"),
        ["provider.data_center", "did you mean 'EU-RO-1'"],
    ),
    (
        "volume smaller than the weights",
        ("serving:", "volume: {size_gb: 600}\nserving:"),
        ["volume.size_gb", "600 GB cannot hold", "at least 710"],
    ),
    (
        "volume larger than RunPod allows",
        ("serving:", "volume: {size_gb: 5000}\nserving:"),
        ["volume.size_gb", "4096"],
    ),
    (
        "prefill on the CPU utility pod",
        (
            "serving:",
            "  - {role: utility, gpu_count: 0, serves: false}\n"
            "dynamo: {enabled: true, disaggregated: true, prefill_role: utility}\nserving:",
        ),
        ["dynamo.prefill_role", "'utility' serves nothing", "['head']"],
    ),
    (
        "a short Hugging Face token in a setup line",
        ("gpu_count: 8}", "gpu_count: 8, setup: ['HF_TOKEN=hf_Ab12cd34Z pip install x']}"),
        ["pods[0].setup[0]", "looks like a secret"],
    ),
    (
        "missing pods",
        ("pods:\n  - {role: head, gpu_type: NVIDIA H100 NVL, gpu_count: 8}\n", ""),
        ["pods", "required key is missing"],
    ),
]


@pytest.mark.parametrize("desc,change,expect", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_params_give_documented_error(desc: str, change: tuple[str, str], expect: list[str]) -> None:
    old, new = change
    assert old in GOOD, desc
    problems = _problems(GOOD.replace(old, new))
    text = "\n".join(problems)
    for part in expect:
        assert part in text, f"{desc}: {part!r} not in {text!r}"


def test_multi_node_needs_network_and_distributed_backend() -> None:
    two = GOOD.replace("pods:", "pods:\n  - {role: worker, gpu_type: NVIDIA H100 NVL, gpu_count: 8}").replace(
        "tensor_parallel: 8}", "tensor_parallel: 8, pipeline_parallel: 2}"
    )
    assert "provider.network" in "\n".join(_problems(two))
    two_net = two.replace("data_center: EU-RO-1}", "data_center: EU-RO-1, network: global-networking}")
    assert "serving.distributed_backend" in "\n".join(_problems(two_net))
    ok = two_net.replace("pipeline_parallel: 2}", "pipeline_parallel: 2, distributed_backend: ray}")
    assert parse_experiment(ok).nodes == 2


def test_validate_cli_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("tensor_parallel: 8", "tensor_paralel: 8"))
    cmd = [sys.executable, "-m", "r1lab.cli", "validate"]
    ok = subprocess.run([*cmd, str(REPO / "params" / "twin.yaml")], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    res = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 1
    assert f"{bad}:6: serving.tensor_paralel" in res.stderr
    missing = subprocess.run([*cmd, str(tmp_path / "nope.yaml")], capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 1 and "no such params file" in missing.stderr


def _with_setup(setup: list[str]) -> str:
    import yaml

    data = yaml.safe_load(GOOD)
    data["pods"][0]["setup"] = setup
    return yaml.safe_dump(data)


def test_setup_pinning_vllm_and_ai_dynamo_incompatibly_is_refused_naming_both_pins() -> None:
    """The seed params pinned vllm==0.33.0 beside ai-dynamo==1.6.1 --no-deps: never resolved."""
    bad = ["pip install -q vllm==0.33.0 'ray[default]==2.60.0'", "pip install -q --no-deps ai-dynamo==1.6.1"]
    with pytest.raises(ParamsError) as exc:
        parse_experiment(_with_setup(bad), "mix.yaml")
    [msg] = exc.value.problems
    assert msg.startswith("mix.yaml:") and "pods[0].setup" in msg
    assert "vllm==0.33.0" in msg and "ai-dynamo==1.6.1" in msg
    assert "pin vllm==0.31.0 nixl[cu13]==1.4.1" in msg
    bad_nixl = ["pip install vllm==0.31.0 nixl[cu13]==1.5.0 && pip install --no-deps ai-dynamo==1.6.1"]
    with pytest.raises(ParamsError, match=r"nixl==1\.5\.0 and ai-dynamo==1\.6\.1"):
        parse_experiment(_with_setup(bad_nixl), "nixl.yaml")
    good = ["pip install vllm==0.31.0 'nixl[cu13]==1.4.1'", "pip install --no-deps ai-dynamo==1.6.1"]
    assert parse_experiment(_with_setup(good), "ok.yaml").pods[0].setup == good


def test_dynamo_engine_pins_match_the_installed_ai_dynamo_wheel() -> None:
    """The table the validator uses is the wheel's own [vllm] extra (read from its METADATA)."""
    from importlib.metadata import requires, version

    from r1lab.pins import DYNAMO_ENGINE_PINS

    have = version("ai-dynamo")
    assert have in DYNAMO_ENGINE_PINS, f"add ai-dynamo {have}'s [vllm] extra pins to r1lab/pins.py"
    extra = [r for r in requires("ai-dynamo") or [] if "extra == 'vllm'" in r or 'extra == "vllm"' in r]
    pinned = {
        r.split("[")[0].split("=")[0].strip(): r.split("==")[1].split(";")[0].strip()
        for r in extra
        if "==" in r
    }
    assert {k: pinned[k] for k in DYNAMO_ENGINE_PINS[have]} == DYNAMO_ENGINE_PINS[have]


def test_instant_cluster_of_h100_nvl_is_refused_with_the_fix() -> None:
    """RunPod's Instant Clusters offer B200, H200, H100 SXM, A100: an H100 NVL cluster would fail in 03 with a
    400 that reads as stock."""
    text = """
name: nvl-cluster
provider: {kind: runpod, network: instant-cluster}
pods:
  - {role: head, gpu_type: NVIDIA H100 NVL, gpu_count: 8}
  - {role: worker, gpu_type: NVIDIA H100 NVL, gpu_count: 8}
serving: {tensor_parallel: 8, pipeline_parallel: 2, distributed_backend: ray}
"""
    with pytest.raises(ParamsError) as exc:
        parse_experiment(text, "c.yaml")
    [msg] = exc.value.problems
    assert "pods[0].gpu_type" in msg and "'NVIDIA H100 NVL'" in msg
    assert "H200" in msg and "H100 SXM" in msg and "global-networking" in msg
    ok = text.replace("NVIDIA H100 NVL", "NVIDIA H100 80GB HBM3")
    assert parse_experiment(ok, "c.yaml").provider.network == "instant-cluster"
    nine = ok.replace("gpu_count: 8}\nserving", "gpu_count: 8, count: 8}\nserving").replace(
        "pipeline_parallel: 2", "pipeline_parallel: 9"
    )
    with pytest.raises(ParamsError, match="2-8 nodes, not 9"):
        parse_experiment(nine, "c9.yaml")


def test_plan_refuses_an_instant_cluster_runpod_does_not_offer(tmp_path: Path) -> None:
    p = tmp_path / "nvl.yaml"
    p.write_text(
        "name: nvl\nprovider: {kind: runpod, network: instant-cluster}\npods:\n"
        "  - {role: head, gpu_type: NVIDIA H100 NVL, gpu_count: 8, count: 2}\n"
        "serving: {tensor_parallel: 8, pipeline_parallel: 2, distributed_backend: ray}\n"
    )
    for cmd in ("validate", "plan"):
        proc = subprocess.run(
            [sys.executable, "-m", "r1lab.cli", cmd, str(p)], capture_output=True, text=True
        )
        assert proc.returncode != 0, cmd
        assert "Instant Clusters offer" in proc.stderr + proc.stdout, cmd
