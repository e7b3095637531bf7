"""Real Dynamo on loopback: the frontend with mocker workers (timed by the performance model's tables),
aggregated and prefill/decode, launched by r1lab, answers a streamed completion (issue 6, 4c)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from r1lab.config import parse_experiment
from r1lab.execution import LocalExecutor
from r1lab.serve.checks import minimal_completion, read_metrics, streamed_chat
from r1lab.serve.commands import nodes_of
from r1lab.serve.deploy import deploy
from r1lab.teardown import Ledger
from r1lab.tinymodel import write_tiny_model

sys.path.insert(0, str(Path(__file__).parent))
from serve_helpers import loopback_ports  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PYTHON = (
    str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def twin(model: Path, **dynamo) -> object:
    data = yaml.safe_load((REPO / "params" / "twin.yaml").read_text())
    data["model"]["path"] = str(model)
    data["serving"]["speedup_ratio"] = 20.0
    data["dynamo"]["real_engine_requests"] = 0  # these tests serve the mocker only
    data["dynamo"].update(dynamo)
    return parse_experiment(yaml.safe_dump(data), "twin-loopback")


def _launch(exp, tmp_path: Path):  # noqa: ANN202
    ex = LocalExecutor()
    ports = loopback_ports()
    return deploy(exp, tmp_path / "run", "dynamo", {"head": ex, "worker": ex}, ports=ports, deadline_s=90,
                  remote_dir=str(tmp_path / "pods"), programs={"python": PYTHON}, discovery="file"), ports  # fmt: skip


def test_dynamo_pd_mocker_streamed(model_dir: Path, tmp_path: Path) -> None:
    exp = twin(model_dir, disaggregated=True, router_mode="kv")
    launched, ports = _launch(exp, tmp_path)
    try:
        dep = launched.deployment
        assert {c.name for c in dep.to_run} == {"dynamo-frontend", "mocker-prefill-0", "mocker-decode-0"}
        assert {c.name for c in dep.not_run} == {"dynamo-vllm-prefill-0", "dynamo-vllm-decode-0"}
        s = streamed_chat(launched.endpoint, prompt="Explain prefill and decode in one line.", max_tokens=12)
        assert s.ok, s.error
        assert s.chunks >= 2 and s.finish_reason == "length" and s.ttft_s is not None
        ok = minimal_completion(launched.endpoint)
        assert ok.ok, ok.error
        # the prefill worker did the prefill: its own metrics count the requests routed to it
        pre = next(c for c in dep.to_run if c.name == "mocker-prefill-0")
        m = read_metrics(f"http://127.0.0.1:{pre.env['DYN_SYSTEM_PORT']}/metrics")
        # readiness' one-token completion, the stream and the minimal completion all went through prefill
        assert m.get("dynamo_component_requests_total", 0) >= 3, sorted(m)[:40]
        front = read_metrics(launched.endpoint.base + "/metrics")
        assert front.get("dynamo_frontend_requests_total", 0) >= 2
        # Dynamo's request plane and response streams listen on the rendered ports (what preflight checks
        # between pods), not on OS-assigned ones: each worker's DYN_TCP_RPC_PORT, the frontend's stream port
        listening = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True).stdout
        planes = {c.name: (c.env.get("DYN_TCP_RPC_PORT"), c.env.get("DYN_TCP_RESPONSE_STREAM_PORT"))
                  for c in dep.to_run}  # fmt: skip
        assert planes["dynamo-frontend"][1] == str(ports.response_stream_base)
        for name in ("mocker-prefill-0", "mocker-decode-0"):
            assert planes[name][0] and f"127.0.0.1:{planes[name][0]} " in listening, (name, listening)
        assert f"127.0.0.1:{ports.response_stream_base} " in listening, listening
    finally:
        launched.launcher.stop()
    assert Ledger(tmp_path / "run").live() == []
    cmd_files = sorted((tmp_path / "run" / "commands").glob("*.sh"))
    assert len(cmd_files) == 1 and "[NOT RUN: rendered only]" in cmd_files[0].read_text()
    tables = list((tmp_path / "run" / "mocker" / "dynamo").glob("*.npz"))
    assert len(tables) == 2  # the performance model's prefill and decode tables


def test_dynamo_aggregated_mocker_streamed(model_dir: Path, tmp_path: Path) -> None:
    exp = twin(model_dir, disaggregated=False, decode_role=None, decode_workers=2, router_mode="round-robin")
    launched, _ = _launch(exp, tmp_path)
    try:
        workers = [c for c in launched.deployment.to_run if c.name.startswith("mocker-")]
        assert [c.name for c in workers] == ["mocker-agg-0", "mocker-agg-1"]
        assert all("--disaggregation-mode" not in c.argv for c in workers)
        for _ in range(2):
            s = streamed_chat(launched.endpoint, max_tokens=6)
            assert s.ok, s.error
        counts = []
        for c in workers:
            m = read_metrics(f"http://127.0.0.1:{c.env['DYN_SYSTEM_PORT']}/metrics")
            counts.append(m.get("dynamo_component_requests_total", 0))
        assert all(n >= 1 for n in counts), counts  # round-robin reached both workers
    finally:
        launched.launcher.stop()
    assert Ledger(tmp_path / "run").live() == []


def test_twin_single_stage_mocker_stands_in_for_vllm_serve(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Notebook 02 on the twin: the frontend + one aggregated mocker (TP8 table) answer where `vllm serve` would."""
    exp = twin(model_dir)
    ex = LocalExecutor()
    ports = loopback_ports()
    launched = deploy(exp, tmp_path / "run", "single", {"head": ex, "worker": ex}, ports=ports, deadline_s=90,
                      remote_dir=str(tmp_path / "pods"), programs={"python": PYTHON})  # fmt: skip
    try:
        assert launched.endpoint.url == f"http://127.0.0.1:{ports.vllm}/v1"
        out = capsys.readouterr().out  # the original plan's audit was shown before the launch
        assert "[REJECTED ] serve    --dtype float8_e4m3fn" in out
        assert launched.state()["url"] == launched.endpoint.url and "api_key" not in launched.state()
        assert [c.name for c in launched.deployment.not_run] == ["vllm-serve"]
        check = minimal_completion(launched.endpoint)
        assert check.ok and check.completion_tokens >= 1, check.error
    finally:
        launched.launcher.stop()
    setup = next((tmp_path / "run" / "mocker" / "single").glob("*.json"))
    assert "TP8" in setup.read_text()  # the performance model's single-node table


def test_dynamo_stage_is_ready_only_when_the_frontend_lists_every_worker(
    model_dir: Path, tmp_path: Path
) -> None:
    """Two workers (one per pod), one registered in another discovery directory (a wrong ETCD_ENDPOINTS, say):
    the frontend answers /health and completions through the other, but the stage is not ready."""
    from r1lab.serve.deploy import plan_stage
    from r1lab.serve.launch import Launcher, ServeError

    exp = twin(model_dir, disaggregated=False, decode_role=None, decode_workers=2, router_mode="round-robin")
    ex = LocalExecutor()
    ports = loopback_ports()
    nodes = nodes_of(exp, {"head": ex.address, "worker": ex.address})
    dep = plan_stage(exp, tmp_path / "run", "dynamo", nodes=nodes, ports=ports, remote_dir=str(tmp_path / "pods"),
                     discovery="file")  # fmt: skip
    front = next(c for c in dep.to_run if c.name == "dynamo-frontend")
    assert dict(front.ready.instances) == {"backend": 2}
    pd = plan_stage(twin(model_dir, disaggregated=True), tmp_path / "pd", "dynamo", nodes=nodes, ports=ports,
                    remote_dir=str(tmp_path / "pods"), discovery="file")  # fmt: skip
    pd_front = next(c for c in pd.to_run if c.name == "dynamo-frontend")
    assert dict(pd_front.ready.instances) == {
        "prefill": 1,
        "backend": 1,
    }  # decode workers register as backend
    lost = next(c for c in dep.to_run if c.name == "mocker-agg-1")
    lost.env["DYN_FILE_KV"] = str(tmp_path / "pods" / "elsewhere")
    lost.pre = [f"mkdir -p {lost.env['DYN_FILE_KV']}"]
    launcher = Launcher(tmp_path / "run", {"head": ex, "worker": ex}, remote_dir=str(tmp_path / "pods"),
                        programs={"python": PYTHON})  # fmt: skip
    try:
        with pytest.raises(ServeError, match=r"the frontend lists backend 1/2"):
            launcher.launch(dep, deadline_s=30)
    finally:
        launcher.stop()
    assert Ledger(tmp_path / "run").live() == []
