"""What RunPod offers per product: ordinary pods and Instant Clusters (GPU types, pod counts, interconnect).

`r1lab validate` / `plan` refuse a params file that asks for something outside this (with the fix) before anything
is rented: RunPod itself answers an H100 NVL cluster with a 400 "no longer any instances available" that reads
as stock (the emulator's catalog, r1lab.cloud.emulator.catalog, refuses it too). Sources: RunPod's Instant Cluster docs and API notes (facts.md, 2026-12-01):
B200, H200 and H100 SXM clusters at 3,200 Gbps between nodes, A100 at 1,600 Gbps; 2-8 nodes; no H100 NVL.
Ordinary pods reach each other only over Global Networking, documented at 100 Mbps.

Public interface: `POD`, `INSTANT_CLUSTER` (`Product`), `cluster_refusal(gpu_type, pods) -> str | None`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Product:
    """One RunPod product: the GPU types it rents (None: any GPU type in the catalog), how many pods, the link."""

    name: str
    gpu_types: dict[str, str] | None  # RunPod GPU type id -> short name
    min_pods: int
    max_pods: int
    interconnect_gbps: dict[str, float] = field(default_factory=dict)  # per GPU type, between nodes
    source: str = ""


POD = Product("pod", None, 1, 1, {}, "RunPod pods; two pods talk over Global Networking at 100 Mbps (docs)")


def _cluster_types() -> dict[str, str]:
    """The GPU types Instant Clusters offer, from the one GPU catalog (r1lab.gpus: modelled and not)."""
    from r1lab.gpus import GPUS, UNMODELLED_STOCK

    out = {g.runpod_id: g.short for g in GPUS.values() if g.instant_cluster}
    return out | {gid: stock.name for gid, stock, clustered in UNMODELLED_STOCK if clustered}


INSTANT_CLUSTER = Product(
    "Instant Cluster",
    _cluster_types(),
    2,
    8,
    {
        "NVIDIA B200": 3200.0,
        "NVIDIA H200": 3200.0,
        "NVIDIA H100 80GB HBM3": 3200.0,
        "NVIDIA A100-SXM4-80GB": 1600.0,
    },
    "RunPod Instant Clusters docs (facts.md, 2026-12-01): B200/H200/H100 SXM at 3,200 Gbps, A100 1,600 Gbps, 2-8 nodes",
)


def cluster_refusal(gpu_type: str | None, pods: int) -> str | None:
    """Why RunPod would not rent this Instant Cluster (with the fix), or None when it offers it."""
    c = INSTANT_CLUSTER
    assert c.gpu_types is not None
    offered = ", ".join(f"{short} ({gid!r})" for gid, short in c.gpu_types.items())
    if gpu_type not in c.gpu_types:
        return (
            f"RunPod Instant Clusters offer {offered}, not {gpu_type!r} (RunPod answers 400 'no longer any "
            "instances available', which reads as stock): use one of those GPU types, or "
            "provider.network: global-networking for ordinary pods (100 Mbps between them)"
        )
    if not c.min_pods <= pods <= c.max_pods:
        return (
            f"RunPod Instant Clusters have {c.min_pods}-{c.max_pods} nodes, not {pods}: change the serving pods' "
            "count (pods[].count) or the roles"
        )
    return None
