"""End to end on loopback with real components: Dynamo's frontend and mocker (timed by r1lab's performance
model), a real Prometheus scraping both, r1lab's load generator, then the report from the files alone, checked in
headless Chromium. (On the twin the same pieces run inside the pods; the lead's 05/06 drive them.)"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pandas as pd
import pytest

from r1lab import monitor
from r1lab.monitor import targets as T
from r1lab.teardown import teardown_run

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _port() -> int:
    """A free port below 32768: Dynamo 1.6.1 parses DYN_SYSTEM_PORT as an i16."""
    while True:
        p = random.randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                return p
            except OSError:
                continue


def _dynamo_env(kv: Path) -> dict[str, str]:
    hosts = ("DYN_TCP_RPC_HOST", "DYN_TCP_RESPONSE_STREAM_HOST", "DYN_EVENT_PLANE_HOST", "DYN_SYSTEM_HOST",
             "DYN_HTTP_RPC_HOST")  # fmt: skip
    return {**os.environ, "DYN_DISCOVERY_BACKEND": "file", "DYN_FILE_KV": str(kv), "DYN_REQUEST_PLANE": "tcp",
            "DYN_EVENT_PLANE": "zmq", "NO_COLOR": "1", **dict.fromkeys(hosts, "127.0.0.1")}  # fmt: skip


def test_load_run_to_report(tmp_path: Path) -> None:
    pytest.importorskip("dynamo")
    from r1lab.bench.metrics import Slo
    from r1lab.bench.records import consolidate
    from r1lab.bench.scenarios import run_scenario, summarize_run
    from r1lab.bench.workloads import ModelTokenizer
    from r1lab.config import Scenario
    from r1lab.perf.mocker import mocker_setup
    from r1lab.perf.planner import plan_experiment
    from r1lab.report import build_report, check_report
    from r1lab.rundir import new_run
    from r1lab.tinymodel import write_tiny_model

    ctx = new_run(REPO / "params" / "twin.yaml", root=tmp_path / "out")
    rd = ctx.run_dir
    (rd / "plan.json").write_text(json.dumps(plan_experiment(ctx.exp).as_dict()))
    model = write_tiny_model(tmp_path / "model")
    timing = mocker_setup("H100 NVL", "TP8", "mocker", tmp_path / "tables", max_model_len=16384)
    env = _dynamo_env(tmp_path / f"kv-{uuid.uuid4().hex[:8]}")
    http, system = _port(), _port()

    def start(name: str, argv: list[str], extra: dict[str, str] | None = None) -> None:
        with open(rd / "logs" / f"{name}.log", "w") as log:
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**env, **(extra or {})},
                                 start_new_session=True)  # fmt: skip
        ctx.ledger.record(
            "local-process", str(p.pid), ctx.resource_name(name), "local", pid=p.pid, pgid=p.pid
        )

    # the plan's sweep points (params/twin.yaml) up to 48: predicted and measured meet at the same concurrencies
    planned = next(s.concurrency for s in ctx.exp.load.scenarios if s.name == "sweep")
    sc = Scenario(name="sweep", shape="concurrency", concurrency=[c for c in planned if c <= 48], input_tokens=256,
                  output_tokens=32, requests_per_point=16)  # fmt: skip
    try:
        start("mocker", [sys.executable, "-m", "dynamo.mocker", "--model-path", str(model), "--model-name", "r1",
                         *timing.args, "--speedup-ratio", "4"], {"DYN_SYSTEM_PORT": str(system)})  # fmt: skip
        start("frontend", [sys.executable, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port",
                           str(http)])  # fmt: skip
        url = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 120
        while b'"r1"' not in _get(url + "/v1/models"):
            assert time.monotonic() < deadline, (rd / "logs" / "mocker.log").read_text()[-2000:]
            time.sleep(0.5)
        targets = [T.dynamo_frontend("127.0.0.1", http, "head/dynamo-frontend"),
                   T.dynamo_worker("127.0.0.1", system, "head/mocker")]  # fmt: skip
        with monitor.recording(targets, rd, ledger=ctx.ledger, scrape_interval_s=0.5):
            run_scenario(sc, url=url, tokenizer=ModelTokenizer(model), model="r1", run_dir=rd)
    finally:
        report = teardown_run(rd)
    assert report.ok, str(report)
    consolidate(rd)
    summarize_run(rd, scenarios=[sc], slo=Slo(2000, 100), gpus=ctx.exp.total_gpus, source="measured-twin")

    m = pd.read_parquet(rd / "metrics.parquet")
    kv = m[(m.metric == "vllm:kv_cache_usage_perc") & (m.source == "head/mocker")]
    assert not kv.empty and kv.value.max() > 0  # the mocker's KV cache filled during the load
    assert not m[m.metric == "dynamo_frontend_inflight_requests"].empty

    rep = build_report(rd, png=False)
    # every chart draws but the reasoning one: the mocker streams no reasoning phase (that chart is drawn from
    # reasoning records in test_report_build)
    assert rep.missing == {"reasoning": "no request had a reasoning phase"}, rep.missing
    found = {f.kind: f for f in rep.findings}
    assert {"kv-bound", "compute-bound", "network-bound"} <= set(found)
    # queueing compares TTFT at the lowest and highest points; where a loaded machine left the lowest point's TTFTs
    # out as client-limited (every first chunk coalesced), no queueing verdict may be drawn from it
    low = min(json.loads((rd / "summary.json").read_text())["points"], key=lambda p: p["concurrency"])
    if (low.get("ttft_ms") or {}).get("p50") is None:
        assert low["client_limited"] and "queueing" not in found
    else:
        assert "queueing" in found
    assert "head/mocker" in found["kv-bound"].evidence[0]
    checks, _ = check_report(rep.path)
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.read()
    except OSError:
        return b""
