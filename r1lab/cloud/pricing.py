"""Prices and a run's cost: live prices from RunPod's catalog, else dated fallbacks (params `cost.prices`).

A run's cost = sum over its pods of (uptime from `created` to `deleted` in the ledger) x (the hourly rate
recorded at creation: the pod's own `cost` when RunPod reports it, else catalog/fallback price x GPUs)
+ network-volume storage (GB x $/GB-month x months held). Ledger-based, so a crashed run can still be priced.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from r1lab.cloud.errors import CloudError
from r1lab.cloud.runpod import RunPodClient

HOURS_PER_MONTH = 730.0
# facts.md: third-party copies of RunPod's pricing page, seen 2026-11-09 (secure, community).
FALLBACK_PRICES: dict[str, dict[str, Any]] = {
    "NVIDIA H100 NVL": {"SECURE": 3.19, "COMMUNITY": 2.59, "date": "2026-11-09"},
    "NVIDIA H100 80GB HBM3": {"SECURE": 3.99, "date": "2026-11-09"},
    "NVIDIA H200": {"SECURE": 4.59, "date": "2026-11-09"},
}
VOLUME_USD_PER_GB_MONTH = 0.07


@dataclass
class Price:
    gpu: str
    cloud: str
    usd_per_gpu_hour: float
    source: str  # "catalog" (live) or "fallback <date>"


def gpu_price(
    gpu: str,
    cloud: str = "SECURE",
    client: RunPodClient | None = None,
    fallback: dict[str, Any] | None = None,
) -> Price:
    """The hourly price of one GPU: the live catalog when reachable, else params' dated fallback, else ours.

    `fallback` maps GPU id -> {"usd_per_gpu_hour": float, "date": "YYYY-MM-DD"} (params `cost.prices`)."""
    if client is not None:
        try:
            for g in client.list_gpu_types(availability=False):
                if g["id"] == gpu:
                    value = g["price"]["secure" if cloud == "SECURE" else "community"]
                    if value:
                        return Price(gpu, cloud, float(value), "catalog")
        except CloudError:
            pass
    if fallback and gpu in fallback:
        p = fallback[gpu]
        p = p if isinstance(p, dict) else p.model_dump()
        return Price(gpu, cloud, float(p["usd_per_gpu_hour"]), f"fallback {p.get('date', '?')}")
    if gpu in FALLBACK_PRICES and cloud in FALLBACK_PRICES[gpu]:
        return Price(gpu, cloud, FALLBACK_PRICES[gpu][cloud], f"fallback {FALLBACK_PRICES[gpu]['date']}")
    raise CloudError(
        f"no price for {gpu} ({cloud}): the catalog is unreachable and params cost.prices has no entry. "
        f"Fix: add cost.prices['{gpu}'] = {{usd_per_gpu_hour: ..., date: YYYY-MM-DD}} to the params file."
    )


@dataclass
class CostItem:
    kind: str
    name: str
    hours: float
    usd: float
    rate: str


@dataclass
class Cost:
    usd: float
    items: list[CostItem] = field(default_factory=list)
    hours: float = 0.0  # wall time since the run's first resource


def _t(s: str) -> float:
    return dt.datetime.fromisoformat(s).timestamp()


def run_cost(
    entries: list[dict[str, Any]],
    now: float | None = None,
    volume_usd_per_gb_month: float = VOLUME_USD_PER_GB_MONTH,
) -> Cost:
    """Cost of a run from its ledger entries (r1lab.teardown.Ledger.entries())."""
    now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
    created: dict[tuple[str, str], dict[str, Any]] = {}
    ended: dict[tuple[str, str], float] = {}
    for e in entries:
        key = (e["kind"], e["id"])
        if e["event"] == "created":
            created[key] = e
        elif e["event"] == "deleted":
            ended[key] = _t(e["time"])
    cost = Cost(usd=0.0)
    first = min((_t(e["time"]) for e in created.values()), default=now)
    cost.hours = max(0.0, now - first) / 3600
    for key, e in created.items():
        meta = e.get("meta") or {}
        hours = max(0.0, ended.get(key, now) - _t(e["time"])) / 3600
        if e["kind"] in ("runpod-pod", "runpod-cluster") and "usd_per_hour" in meta:
            usd = hours * float(meta["usd_per_hour"])
            cost.items.append(CostItem(e["kind"], e["name"], hours, usd, f"${meta['usd_per_hour']}/h"))
        elif e["kind"] == "runpod-volume" and "size_gb" in meta:
            rate = float(meta.get("usd_per_gb_month", volume_usd_per_gb_month))
            usd = float(meta["size_gb"]) * rate * hours / HOURS_PER_MONTH
            cost.items.append(
                CostItem(e["kind"], e["name"], hours, usd, f"{meta['size_gb']} GB x ${rate}/GB-month")
            )
        else:
            continue
        cost.usd += usd
    return cost
