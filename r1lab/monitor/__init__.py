"""Monitoring: a real Prometheus scraping vLLM, Dynamo, Ray, node and GPU exporters; its series saved into the
run dir as metrics.parquet so reports never need the server.

Notebook API:
- `targets.*` build scrape targets (`vllm`, `dynamo_frontend`, `dynamo_worker`, `ray`, `node_exporter`,
  `gpu_exporter`; `targets.from_deployment(dep, addresses)` for a serve Deployment);
- `with recording(targets, ctx.run_dir, ledger=ctx.ledger): run the load` -> metrics.parquet of that window;
- `start_prometheus(targets, run_dir / "prometheus", ledger=ctx.ledger)` (or `executor=` a pod's, `install=True`);
- `save_metrics(prom.url, run_dir, start, end)` -> run_dir/metrics.parquet; `load_metrics(path)`;
- `recover(run_dir)`: metrics.parquet from the TSDB a killed run left in run_dir/prometheus/data;
- `start_node_exporter`, `start_gpu_exporter` (exporters started through an Executor).
"""

from r1lab.monitor import targets
from r1lab.monitor.exporters import start_gpu_exporter, start_node_exporter
from r1lab.monitor.prometheus import Prometheus, PrometheusError, recording, recover, running
from r1lab.monitor.prometheus import start as start_prometheus
from r1lab.monitor.store import Query, collect, query_range
from r1lab.monitor.store import load as load_metrics
from r1lab.monitor.store import snapshot as save_metrics
from r1lab.monitor.targets import Target

__all__ = [
    "Prometheus", "PrometheusError", "Query", "Target", "collect", "load_metrics", "query_range", "running",
    "recording", "recover", "save_metrics", "start_gpu_exporter", "start_node_exporter", "start_prometheus", "targets",
]  # fmt: skip
