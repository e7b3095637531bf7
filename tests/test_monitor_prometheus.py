"""A real Prometheus (Debian's binary) scraping a prometheus_client exporter, node exporter and r1lab's
nvidia-smi exporter (fed by a fake nvidia-smi: the GPU is the only double), queried over its HTTP API and saved."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from r1lab import monitor
from r1lab.monitor import dashboard
from r1lab.monitor import targets as T
from r1lab.teardown import Ledger, teardown_run

pytestmark = pytest.mark.skipif(
    not shutil.which("prometheus") and not os.path.exists("/usr/bin/prometheus"),
    reason="Debian's prometheus is installed by scripts/bootstrap.sh",
)

FAKE_SMI = """#!/bin/sh
echo "0, GPU-aaaa, NVIDIA H100 NVL, 81234, 14000, 95830, 97, 350.5, 61"
echo "1, GPU-bbbb, NVIDIA H100 NVL, 80000, 15230, 95830, 88, [N/A], 60"
"""


@pytest.fixture
def exporter():
    from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

    reg = CollectorRegistry()
    kv = Gauge("vllm:kv_cache_usage_perc", "KV usage", ["model_name"], registry=reg)
    running = Gauge("vllm:num_requests_running", "running", ["model_name"], registry=reg)
    gen = Counter("vllm:generation_tokens", "generated tokens", ["model_name"], registry=reg)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    try:
        yield server.server_address[1], kv.labels("r1"), running.labels("r1"), gen.labels("r1")
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_scrapes_and_saves_metrics(tmp_path: Path, exporter) -> None:
    port, kv, running, gen = exporter
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ledger = Ledger(run_dir)
    smi = tmp_path / "nvidia-smi"
    smi.write_text(FAKE_SMI)
    smi.chmod(0o755)
    ex = monitor.prometheus.LocalExecutor()
    work = str(run_dir / "prometheus")
    _, node_port = monitor.start_node_exporter(ex, work, ledger=ledger)
    _, gpu_port = monitor.start_gpu_exporter(ex, work, ledger=ledger, nvidia_smi=str(smi), python="python3")
    tg = [
        T.dynamo_worker("127.0.0.1", port, "worker/decode"),
        T.node_exporter("127.0.0.1", node_port, "twin-host"),
        T.gpu_exporter("127.0.0.1", gpu_port, "head/gpu"),
    ]
    try:
        prom = monitor.start_prometheus(tg, work, ledger=ledger, scrape_interval_s=0.5)
        assert (run_dir / "prometheus" / "data").is_dir()  # the TSDB lives in the run dir
        live = {e["name"] for e in ledger.live()}
        assert {"r1lab-prometheus", "r1lab-node-exporter", "r1lab-gpu-exporter"} <= live
        t0 = time.time()
        prom.wait_scraped(3)
        for step in range(6):  # values change while Prometheus scrapes
            kv.set(0.1 * (step + 1))
            running.set(step)
            gen.inc(100)
            time.sleep(0.5)
        time.sleep(1.2)
        t1 = time.time()
        path = monitor.save_metrics(prom.url, run_dir, t0, t1, step=0.5)
        # the Grafana dashboard's queries are valid PromQL for this server, and the KV panel finds its series
        for expr in dashboard.expressions():
            series = monitor.query_range(prom.url, _grafana_vars(expr), t0, t1, 1.0)
            if expr.startswith("vllm:kv_cache_usage_perc"):
                assert series and series[0]["metric"]["source"] == "worker/decode"
    finally:
        report = teardown_run(run_dir)
    assert report.ok, str(report)
    assert not Ledger(run_dir).live()

    df = monitor.load_metrics(path)
    assert list(df.columns) == ["time", "source", "metric", "labels", "value"]
    kv_rows = df[(df.metric == "vllm:kv_cache_usage_perc") & (df.source == "worker/decode")]
    assert len(kv_rows) >= 4
    assert kv_rows.value.max() >= 0.4 and kv_rows.value.min() <= 0.3  # saw the gauge move
    assert json.loads(kv_rows.labels.iloc[0])["model_name"] == "r1"
    assert kv_rows.time.between(t0 - 1, t1 + 1).all()
    run = df[df.metric == "vllm:num_requests_running"]
    assert set(run.value) >= {2.0, 3.0}
    rate = df[df.metric == "output_tok_s"]
    assert not rate.empty and rate.value.max() > 50  # ~200 tok/s: 100 every 0.5 s
    fb = df[(df.metric == "DCGM_FI_DEV_FB_USED") & (df.source == "head/gpu")]
    assert set(fb.value) == {81234.0, 80000.0}
    assert {json.loads(x)["UUID"] for x in fb.labels} == {"GPU-aaaa", "GPU-bbbb"}
    power = df[df.metric == "DCGM_FI_DEV_POWER_USAGE"]
    assert set(power.value) == {350.5}  # [N/A] is left out, never invented
    assert not df[(df.metric == "node_memory_MemTotal_bytes") & (df.source == "twin-host")].empty
    up = df[df.metric == "up"]
    assert set(up.source) == {"worker/decode", "twin-host", "head/gpu"} and up.value.min() == 1.0

    # the report never needs the server again: it is gone, the file still answers
    with pytest.raises(monitor.store.PromQueryError):
        monitor.query_range(prom.url, "up", t0, t1, 1.0)
    with pytest.raises(FileExistsError, match="never overwritten"):
        monitor.store.save(df, path)


def test_prometheus_start_failure_names_the_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ledger = Ledger(run_dir)
    with pytest.raises(monitor.PrometheusError, match="exited during start-up"):
        monitor.start_prometheus(
            [T.vllm("127.0.0.1", 1, "x")], run_dir / "p", ledger=ledger, binary=str(_bad_binary(tmp_path))
        )
    assert not ledger.live()


def _bad_binary(tmp_path: Path) -> Path:
    p = tmp_path / "prometheus-broken"
    p.write_text("#!/bin/sh\necho 'err: bad flag' >&2\nexit 3\n")
    p.chmod(0o755)
    return p


def _grafana_vars(expr: str) -> str:
    return expr.replace("$__rate_interval", "2s").replace('"$source"', '".*"')


def test_recording_saves_the_window_and_stops(tmp_path: Path, exporter) -> None:
    port, kv, _, _ = exporter
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ledger = Ledger(run_dir)
    with monitor.recording([T.vllm("127.0.0.1", port, "head/vllm")], run_dir, ledger=ledger,
                           scrape_interval_s=0.5) as prom:  # fmt: skip
        assert prom.alive()
        for v in (0.25, 0.5, 0.75):
            kv.set(v)
            time.sleep(1.1)  # two scrape intervals: every value is scraped even when a scrape runs late
        kv.set(0.9)  # as the block ends: the recording waits for a scrape that began after it
    assert not prom.alive() and not ledger.live()
    df = monitor.load_metrics(run_dir / "metrics.parquet")
    kv_rows = df[df.metric == "vllm:kv_cache_usage_perc"]
    assert {0.25, 0.75, 0.9} <= set(kv_rows.value) and set(kv_rows.source) == {"head/vllm"}

    # a run killed before it saved: the TSDB in the run dir still has every scrape
    (run_dir / "metrics.parquet").rename(tmp_path / "saved.parquet")
    monitor.recover(run_dir, ledger=ledger, step=0.25)
    again = monitor.load_metrics(run_dir / "metrics.parquet")
    assert {0.25, 0.5, 0.75} <= set(again[again.metric == "vllm:kv_cache_usage_perc"].value)
    assert not ledger.live()
    with pytest.raises(FileExistsError, match="nothing to recover"):
        monitor.recover(run_dir)


class _PodLike:
    """An Executor that is not this machine's LocalExecutor (the path taken for pods): files go through put(),
    the server is reached through forward(). It runs on this host, like a twin pod does."""

    name, address = "head", "127.0.0.1"

    def __init__(self) -> None:
        self._local = monitor.prometheus.LocalExecutor()
        self.put_calls: list[str] = []

    def run(self, command, **kw):
        return self._local.run(command, **kw)

    def start(self, command, *, log, env=None):
        return self._local.start(command, log=log, env=env)

    def alive(self, pid):
        return self._local.alive(pid)

    def stop(self, pid, *, grace=10.0):
        self._local.stop(pid, grace=grace)

    def put(self, local, remote):
        self.put_calls.append(remote)
        self._local.put(local, remote)

    def get(self, remote, local):
        self._local.get(remote, local)

    def forward(self, remote_port, remote_host="127.0.0.1"):
        return self._local.forward(remote_port, remote_host)


def test_prometheus_on_a_pod_through_its_executor(tmp_path: Path, exporter) -> None:
    port = exporter[0]
    pod = _PodLike()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ledger = Ledger(run_dir)
    workdir = str(tmp_path / "pod-workspace" / "prometheus")
    prom = monitor.start_prometheus(
        [T.vllm("127.0.0.1", port, "head/vllm")], workdir, executor=pod, ledger=ledger
    )
    try:
        assert pod.put_calls == [f"{workdir}/prometheus.yml"]  # the config travels to the pod
        assert (
            not ledger.live()
        )  # a pod's server dies with the pod; only this machine's processes are ledgered
        prom.wait_scraped(1)
        assert "head/vllm" in urllib.request.urlopen(f"{prom.url}/api/v1/targets", timeout=5).read().decode()
    finally:
        prom.stop(ledger)
    assert not prom.alive()
