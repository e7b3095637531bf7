"""Scrape targets and the Prometheus configuration that scrapes them.

Every target carries a `source` label (the pod role and component, e.g. `head/frontend`), which becomes the
`source` column of metrics.parquet. Addresses are as the Prometheus host sees them: on the twin, this machine;
on RunPod, the head pod (which reaches the other pods over the private network).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

# Default ports of the exporters r1lab runs (a pod's exporter may be given any other port).
NODE_EXPORTER_PORT = 9100
GPU_EXPORTER_PORT = 9400  # dcgm-exporter's default; r1lab's nvidia-smi exporter uses it too


# prometheus_client >= 0.22, asked for OpenMetrics 1.0 (as Prometheus asks first), escapes ':' to '_' in names:
# vLLM's `vllm:kv_cache_usage_perc` arrives as `vllm_kv_cache_usage_perc`. Restore vLLM's documented names.
VLLM_NAMES = {"source_labels": ["__name__"], "regex": "vllm_(.+)", "target_label": "__name__",
              "replacement": "vllm:$1"}  # fmt: skip


@dataclass(frozen=True)
class Target:
    """One scrape endpoint: `job` groups targets of one kind (vllm, dynamo-frontend, ...)."""

    job: str
    address: str  # host:port
    source: str
    metrics_path: str = "/metrics"
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"Target {self.source!r}: address must be host:port, got {self.address!r}")


def vllm(host: str, port: int, source: str) -> Target:
    """vLLM's OpenAI server: /metrics on its serving port."""
    return Target("vllm", f"{host}:{port}", source)


def dynamo_frontend(host: str, port: int, source: str = "frontend") -> Target:
    """Dynamo's frontend: /metrics on its HTTP port (dynamo_frontend_* families)."""
    return Target("dynamo-frontend", f"{host}:{port}", source)


def dynamo_worker(host: str, system_port: int, source: str) -> Target:
    """A Dynamo worker (vLLM or mocker): /metrics on its DYN_SYSTEM_PORT (vllm:* and dynamo_component_*)."""
    return Target("dynamo-worker", f"{host}:{system_port}", source)


def ray(host: str, metrics_export_port: int, source: str) -> Target:
    """A Ray node's metrics agent (`ray start --metrics-export-port`)."""
    return Target("ray", f"{host}:{metrics_export_port}", source)


def node_exporter(host: str, port: int = NODE_EXPORTER_PORT, source: str = "node") -> Target:
    return Target("node", f"{host}:{port}", source)


def gpu_exporter(host: str, port: int = GPU_EXPORTER_PORT, source: str = "gpu") -> Target:
    """DCGM exporter or r1lab's nvidia-smi exporter (both export DCGM_FI_DEV_* names)."""
    return Target("gpu", f"{host}:{port}", source)


def render_config(
    targets: list[Target], *, scrape_interval_s: float = 2.0, ray_file_sd: list[str] | None = None
) -> str:
    """prometheus.yml text: one scrape job per target (so each keeps its own path and labels).

    `ray_file_sd`: paths of Ray's service-discovery files (`/tmp/ray/prom_metrics_service_discovery.json`),
    which list every Ray node's metrics port as the cluster grows.
    """
    if not targets and not ray_file_sd:
        raise ValueError("no scrape targets: give at least one Target")
    interval = _duration(scrape_interval_s)
    jobs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for t in targets:
        name = f"{t.job}:{t.source}"
        if name in seen:
            raise ValueError(
                f"two targets with job {t.job!r} and source {t.source!r}: give each its own source"
            )
        seen.add(name)
        jobs.append(
            {
                "job_name": name,
                "metrics_path": t.metrics_path,
                "static_configs": [{"targets": [t.address], "labels": {"source": t.source, **t.labels}}],
                "metric_relabel_configs": [VLLM_NAMES],
            }
        )
    if ray_file_sd:
        jobs.append(
            {
                "job_name": "ray:cluster",
                "file_sd_configs": [{"files": list(ray_file_sd), "refresh_interval": "5s"}],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "source", "replacement": "ray/$1"}
                ],
                "metric_relabel_configs": [VLLM_NAMES],
            }
        )
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": _duration(scrape_interval_s * 0.8),
            "evaluation_interval": interval,
        },
        "scrape_configs": jobs,
    }
    return yaml.safe_dump(config, sort_keys=False)


def _duration(seconds: float) -> str:
    """A Prometheus duration (integer units only: 500ms, 2s)."""
    ms = max(int(round(seconds * 1000)), 100)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def _flag(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def from_deployment(deployment: Any, addresses: dict[str, str] | None = None) -> list[Target]:
    """Scrape targets of a serve Deployment (r1lab.serve.commands): every Dynamo worker's DYN_SYSTEM_PORT, the
    Dynamo frontend's HTTP port, every `vllm serve` port. Commands rendered but not run are skipped.
    `addresses` maps node names to the address Prometheus reaches them at (default: the node name)."""
    out: list[Target] = []
    for c in deployment.commands:
        if not getattr(c, "run", True):
            continue
        addr = (addresses or {}).get(c.node, c.node)
        argv = [str(a) for a in c.argv]
        source = f"{c.node}/{c.name}"
        if "DYN_SYSTEM_PORT" in (c.env or {}):
            out.append(dynamo_worker(addr, int(c.env["DYN_SYSTEM_PORT"]), source))
        elif "dynamo.frontend" in argv and _flag(argv, "--http-port"):
            out.append(dynamo_frontend(addr, int(_flag(argv, "--http-port") or 0), source))
        elif argv[:2] == ["vllm", "serve"] and _flag(argv, "--port") and "--headless" not in argv:
            out.append(vllm(addr, int(_flag(argv, "--port") or 0), source))
    return out


def to_state(targets: list[Target]) -> list[dict[str, Any]]:
    """Targets as plain dicts for state.json (04 writes them, 05 scrapes them)."""
    return [
        {
            "job": t.job,
            "address": t.address,
            "source": t.source,
            "metrics_path": t.metrics_path,
            "labels": t.labels,
        }
        for t in targets
    ]


def from_state(items: list[dict[str, Any]] | None) -> list[Target]:
    """Targets back from state.json (an empty list when 04 recorded none)."""
    return [Target(**item) for item in items or []]
