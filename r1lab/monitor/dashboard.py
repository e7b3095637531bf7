"""The Grafana dashboard for researchers who run Grafana: generated here, committed as grafana/r1lab.json.

Import it in Grafana (Dashboards > Import) and pick the Prometheus data source; the `source` variable filters
by r1lab's per-target label. Regenerate with `python -m r1lab.monitor.dashboard`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("grafana") / "r1lab.json"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SRC = 'source=~"$source"'

# (title, unit, [(legend, expr)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("TTFT at the frontend (p50, p99)", "s", [
        ("p50", f"histogram_quantile(0.5, sum by (le) (rate(dynamo_frontend_time_to_first_token_seconds_bucket{{{SRC}}}[$__rate_interval])))"),
        ("p99", f"histogram_quantile(0.99, sum by (le) (rate(dynamo_frontend_time_to_first_token_seconds_bucket{{{SRC}}}[$__rate_interval])))"),
        ("vLLM p50", f"histogram_quantile(0.5, sum by (le) (rate(vllm:time_to_first_token_seconds_bucket{{{SRC}}}[$__rate_interval])))"),
    ]),
    ("Inter-token latency (p50, p99)", "s", [
        ("p50", f"histogram_quantile(0.5, sum by (le) (rate(dynamo_frontend_inter_token_latency_seconds_bucket{{{SRC}}}[$__rate_interval])))"),
        ("p99", f"histogram_quantile(0.99, sum by (le) (rate(dynamo_frontend_inter_token_latency_seconds_bucket{{{SRC}}}[$__rate_interval])))"),
        ("vLLM p50", f"histogram_quantile(0.5, sum by (le) (rate(vllm:inter_token_latency_seconds_bucket{{{SRC}}}[$__rate_interval])))"),
    ]),
    ("Tokens/s", "short", [
        ("output {{source}}", f"sum by (source) (rate(vllm:generation_tokens_total{{{SRC}}}[$__rate_interval]))"),
        ("input {{source}}", f"sum by (source) (rate(vllm:prompt_tokens_total{{{SRC}}}[$__rate_interval]))"),
    ]),
    ("KV-cache usage", "percentunit", [
        ("{{source}}", f"vllm:kv_cache_usage_perc{{{SRC}}}"),
        ("{{source}} (dynamo)", f"dynamo_component_kvstats_gpu_cache_usage_percent{{{SRC}}}"),
    ]),
    ("Requests running and waiting", "short", [
        ("running {{source}}", f"vllm:num_requests_running{{{SRC}}}"),
        ("waiting {{source}}", f"vllm:num_requests_waiting{{{SRC}}}"),
        ("frontend in flight", f"sum(dynamo_frontend_inflight_requests{{{SRC}}})"),
        ("frontend queued", f"sum(dynamo_frontend_queued_requests{{{SRC}}})"),
    ]),
    ("Preemptions/s", "short", [
        ("{{source}}", f"sum by (source) (rate(vllm:num_preemptions_total{{{SRC}}}[$__rate_interval]))"),
    ]),
    ("GPU memory used", "decmbytes", [("{{source}} GPU {{gpu}}", f"DCGM_FI_DEV_FB_USED{{{SRC}}}")]),
    ("GPU utilisation", "percent", [("{{source}} GPU {{gpu}}", f"DCGM_FI_DEV_GPU_UTIL{{{SRC}}}")]),
    ("GPU power", "watt", [("{{source}} GPU {{gpu}}", f"DCGM_FI_DEV_POWER_USAGE{{{SRC}}}")]),
    ("Host memory available", "bytes", [("{{source}}", f"node_memory_MemAvailable_bytes{{{SRC}}}")]),
    ("Network transmit", "Bps", [
        ("{{source}} {{device}}", f"rate(node_network_transmit_bytes_total{{{SRC},device!=\"lo\"}}[$__rate_interval])"),
    ]),
    ("Targets up", "short", [("{{source}}", f"up{{{SRC}}}")]),
]  # fmt: skip


def dashboard() -> dict[str, Any]:
    panels = []
    for i, (title, unit, queries) in enumerate(PANELS):
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title, "datasource": DS,
            "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": expr, "legendFormat": legend}
                        for j, (legend, expr) in enumerate(queries)],
        })  # fmt: skip
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus",
                      "pluginName": "Prometheus"}],
        "title": "r1lab: DeepSeek-R1 serving", "uid": "r1lab-serving", "schemaVersion": 39, "version": 1,
        "editable": True, "refresh": "5s", "time": {"from": "now-30m", "to": "now"}, "tags": ["r1lab", "vllm", "dynamo"],
        "templating": {"list": [{
            "name": "source", "label": "source", "type": "query", "datasource": DS, "query": "label_values(up, source)",
            "definition": "label_values(up, source)", "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"text": "All", "value": "$__all"}, "refresh": 2,
        }]},
        "panels": panels,
    }  # fmt: skip


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard (tests run them against a real Prometheus)."""
    return [expr for _, _, qs in PANELS for _, expr in qs]


def write(path: Path = PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dashboard(), indent=1) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else PATH))
