"""GPU prices: live from RunPod's catalog, else dated fallbacks (params `cost.prices`).

The provisioner records each pod's hourly rate in the ledger at creation (the pod's own `cost` when RunPod
reports it, else this price x GPUs); a run's cost is priced from the ledger by r1lab.cost.run_total alone (the
budget guard and the report both use it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r1lab import gpus
from r1lab.cloud.errors import CloudError
from r1lab.cloud.runpod import RunPodClient

# the catalog's dated fallbacks (r1lab.gpus), by cloud: {"SECURE": usd, ["COMMUNITY": usd,] "date": ...}
FALLBACK_PRICES: dict[str, dict[str, Any]] = {
    gpu_id: {"SECURE": p.secure, **({"COMMUNITY": p.community} if p.community else {}), "date": p.date}
    for gpu_id, p in gpus.fallback_prices().items()
}


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
