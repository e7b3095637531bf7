"""Prometheus config generation, the nvidia-smi exporter's exposition, and the committed Grafana dashboard."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from r1lab.monitor import dashboard, gpu_exporter
from r1lab.monitor import targets as T


def test_config_has_one_job_per_target_with_source_labels() -> None:
    text = T.render_config(
        [T.vllm("10.0.0.2", 8000, "head/vllm"), T.dynamo_frontend("127.0.0.1", 8080),
         T.dynamo_worker("10.0.0.3", 9345, "worker/decode"), T.ray("10.0.0.2", 8090, "head/ray"),
         T.node_exporter("10.0.0.2", source="head/node"), T.gpu_exporter("10.0.0.2", source="head/gpu")],
        scrape_interval_s=1.5, ray_file_sd=["/tmp/ray/prom_metrics_service_discovery.json"],
    )  # fmt: skip
    cfg = yaml.safe_load(text)
    assert cfg["global"]["scrape_interval"] == "1500ms" and cfg["global"]["scrape_timeout"] == "1200ms"
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["vllm:head/vllm"]["static_configs"][0] == {
        "targets": ["10.0.0.2:8000"],
        "labels": {"source": "head/vllm"},
    }
    assert jobs["gpu:head/gpu"]["static_configs"][0]["targets"] == ["10.0.0.2:9400"]
    assert jobs["ray:cluster"]["file_sd_configs"][0]["files"] == [
        "/tmp/ray/prom_metrics_service_discovery.json"
    ]
    # vLLM's names survive prometheus_client's OpenMetrics escaping (vllm:x arrives as vllm_x)
    assert all(j["metric_relabel_configs"][0]["replacement"] == "vllm:$1" for j in jobs.values())
    assert T._duration(2) == "2s" and T._duration(0.01) == "100ms"


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="host:port"):
        T.Target("vllm", "no-port", "x")
    with pytest.raises(ValueError, match="give each its own source"):
        T.render_config([T.vllm("a", 1, "s"), T.vllm("b", 2, "s")])
    with pytest.raises(ValueError, match="no scrape targets"):
        T.render_config([])


CSV = "0, GPU-aaaa, NVIDIA H200, 120000, 23000, 143771, 99, 650.25, 70\n1, GPU-bbbb, NVIDIA H200, [N/A], 1, 143771, 5, 80, 40\n"


def test_gpu_exporter_renders_dcgm_names() -> None:
    text = gpu_exporter.render(CSV, "pod-1")
    assert (
        'DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-aaaa",modelName="NVIDIA H200",Hostname="pod-1"} 120000' in text
    )
    assert 'DCGM_FI_DEV_FB_USED{gpu="1"' not in text  # [N/A] is left out, never invented
    assert (
        'DCGM_FI_DEV_POWER_USAGE{gpu="0",UUID="GPU-aaaa",modelName="NVIDIA H200",Hostname="pod-1"} 650.25'
        in text
    )
    from prometheus_client.parser import text_string_to_metric_families

    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert len(fams["DCGM_FI_DEV_GPU_UTIL"].samples) == 2
    with pytest.raises(ValueError, match="fields"):
        gpu_exporter.render("0, GPU-a, H200\n", "h")


def test_gpu_exporter_reports_a_failing_nvidia_smi(tmp_path: Path) -> None:
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\nexit 9\n"
    )
    smi.chmod(0o755)
    proc = subprocess.Popen([sys.executable, gpu_exporter.__file__, "--port", "0", "--nvidia-smi", str(smi)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        url = line.split()[-1]
        body = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        proc.terminate()
        proc.wait(10)
    assert 'r1lab_gpu_exporter_up{error="RuntimeError: nvidia-smi exited 9: NVIDIA-SMI has failed' in body
    assert "DCGM_FI_DEV_FB_USED{" not in body


def test_committed_dashboard_is_current() -> None:
    assert json.loads(dashboard.PATH.read_text()) == dashboard.dashboard()
    d = dashboard.dashboard()
    assert len(d["panels"]) == len(dashboard.PANELS) and all(p["targets"] for p in d["panels"])


def test_targets_from_a_rendered_deployment() -> None:
    from r1lab.config import load_experiment
    from r1lab.serve.commands import render

    dep = render(load_experiment(Path(__file__).parent.parent / "params" / "twin.yaml"), "dynamo")
    tg = {t.source: t for t in T.from_deployment(dep, {"head": "10.9.0.2", "worker": "10.9.0.3"})}
    ran = [c for c in dep.commands if c.run]
    workers = [c for c in ran if "DYN_SYSTEM_PORT" in c.env]
    assert workers and all(tg[f"{c.node}/{c.name}"].job == "dynamo-worker" for c in workers)
    for c in workers:
        host = "10.9.0.2" if c.node == "head" else "10.9.0.3"
        assert tg[f"{c.node}/{c.name}"].address == f"{host}:{c.env['DYN_SYSTEM_PORT']}"
    assert any(t.job == "dynamo-frontend" for t in tg.values())
    assert not any(c.name in s for c in dep.commands if not c.run for s in tg)  # rendered-only: not scraped


def test_targets_round_trip_through_state() -> None:
    tg = [T.vllm("10.0.0.2", 8000, "head/vllm"), T.Target("x", "h:1", "s", "/m", {"a": "b"})]
    assert T.from_state(json.loads(json.dumps(T.to_state(tg)))) == tg
    assert T.from_state(None) == []
