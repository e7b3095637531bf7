"""Query a Prometheus server's HTTP API and keep its series as `metrics.parquet`, so reports never need it.

Columns (docs/architecture.md): time (epoch seconds, float), source (the target's `source` label, else its
job), metric (the series name, or the query's name for expressions), labels (the remaining labels as sorted
JSON text), value (float).
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ["time", "source", "metric", "labels", "value"]
MAX_POINTS = 10_000  # Prometheus refuses a range query of more than 11,000 points per series


@dataclass(frozen=True)
class Query:
    """A PromQL query kept under `name` (raw selectors keep their own series names)."""

    name: str
    expr: str
    keep_names: bool = False  # True: each series keeps its __name__ as `metric`


# What a report uses: engine state (vLLM and Dynamo workers export the vllm:* names), the frontend's view,
# token counters, GPU telemetry (DCGM names: dcgm-exporter and r1lab's nvidia-smi exporter), node, Ray, health.
_FAMILIES = "|".join(
    [
        "vllm:(kv_cache_usage_perc|gpu_cache_usage_perc|num_requests_running|num_requests_waiting"
        "|num_preemptions_total|prompt_tokens_total|generation_tokens_total|prefix_cache_queries_total"
        "|prefix_cache_hits_total)",
        "dynamo_frontend_(inflight_requests|queued_requests|requests_total|input_sequence_tokens_sum"
        "|output_sequence_tokens_sum|worker_active_decode_blocks|worker_active_prefill_tokens"
        "|model_total_kv_blocks)",
        "dynamo_component_(kvstats_(total_blocks|gpu_cache_usage_percent|kv_cache_hit_rate)|requests_total"
        "|inflight_requests|router_kv_selected_cached_prefix_tokens_total|router_input_sequence_tokens_sum)",
        "DCGM_FI_DEV_(FB_USED|FB_FREE|GPU_UTIL|POWER_USAGE|GPU_TEMP|MEM_COPY_UTIL)",
        "node_memory_(MemAvailable|MemTotal)_bytes",
        "node_load1",
        "node_network_(receive|transmit)_bytes_total",
        "ray_node_(cpu_utilization|mem_used|gpus_utilization|gram_used)",
        "process_resident_memory_bytes",
        "up",
    ]
)
DEFAULT_QUERIES = (
    Query("families", f'{{__name__=~"{_FAMILIES}"}}', keep_names=True),
    Query("output_tok_s", "sum by (source) (rate(vllm:generation_tokens_total[10s]))"),
    Query("input_tok_s", "sum by (source) (rate(vllm:prompt_tokens_total[10s]))"),
)


class PromQueryError(RuntimeError):
    pass


def query_range(
    url: str, expr: str, start: float, end: float, step: float, timeout: float = 60
) -> list[dict]:
    """`/api/v1/query_range` -> the result list (matrix); raises PromQueryError naming the query."""
    params = urllib.parse.urlencode(
        {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    )
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query_range?{params}", timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise PromQueryError(f"prometheus {url}: query {expr!r} failed: HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise PromQueryError(f"prometheus {url} unreachable for query {expr!r}: {exc}") from None
    if body.get("status") != "success":
        raise PromQueryError(f"prometheus {url}: query {expr!r}: {body.get('error', body)}")
    return body["data"]["result"]


def step_for(start: float, end: float, min_step: float) -> float:
    """The finest step that keeps every series under Prometheus's per-query point limit."""
    return max(min_step, math.ceil((end - start) / MAX_POINTS * 1000) / 1000)


def collect(
    url: str, start: float, end: float, *, step: float = 1.0, queries: tuple[Query, ...] = DEFAULT_QUERIES
) -> pd.DataFrame:
    """Run every query over [start, end] and return the rows of metrics.parquet.

    The evaluation grid is laid back from `end` (end, end - step, ... >= start): its last point is `end` itself,
    so the last scrape before `end` is always in the frame, never lost between the grid's last point and `end`.
    """
    if end <= start:
        raise ValueError(f"collect: end {end} must be after start {start}")
    step = step_for(start, end, step)
    start = end - math.floor((end - start) / step) * step
    rows: list[tuple[float, str, str, str, float]] = []
    for q in queries:
        for series in query_range(url, q.expr, start, end, step):
            labels = dict(series["metric"])
            name = labels.pop("__name__", None) if q.keep_names else None
            labels.pop("__name__", None)
            source = labels.pop("source", None) or labels.get("job") or "prometheus"
            metric = name or q.name
            text = json.dumps(labels, sort_keys=True)
            for t, v in series["values"]:
                rows.append((float(t), source, metric, text, float(v)))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.sort_values(["metric", "source", "labels", "time"], kind="stable").reset_index(drop=True)


def save(df: pd.DataFrame, path: str | Path) -> Path:
    """Write metrics.parquet; refuses to replace an existing file (results are never overwritten)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if p.exists():
        raise FileExistsError(f"{p} exists and results are never overwritten: write to a new run directory")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"metrics frame lacks columns {missing}; expected {COLUMNS}")
    fields: list[tuple[str, pa.DataType]] = [("time", pa.float64()), ("source", pa.string()), ("metric", pa.string()), ("labels", pa.string()),
         ("value", pa.float64())]  # fmt: skip
    schema = pa.schema(fields)
    table = pa.Table.from_pandas(df[COLUMNS], schema=schema, preserve_index=False)
    tmp = p.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, p)
    return p


def load(path: str | Path) -> pd.DataFrame:
    """Read metrics.parquet, checking its columns (a clear error names the file and what is missing)."""
    p = Path(path)
    df = pd.read_parquet(p)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{p}: not a metrics file: columns {missing} missing (expected {COLUMNS})")
    return df


def snapshot(
    url: str, run_dir: str | Path, start: float, end: float, *, step: float = 1.0, **kw: Any
) -> Path:
    """Collect [start, end] from the server at `url` into run_dir/metrics.parquet."""
    return save(collect(url, start, end, step=step, **kw), Path(run_dir) / "metrics.parquet")
