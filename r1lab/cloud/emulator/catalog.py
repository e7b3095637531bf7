"""What the emulated RunPod account can rent: GPU types, CPU flavors, data centers, CUDA versions.

GPU types, their stock and prices come from the one GPU catalog (r1lab.gpus): secure prices are its dated fallbacks;
community prices of H100 SXM / H200 / B200, the RTX 4090 and A100 rows and the CPU flavors' figures are
illustrative values for the emulator only.
CPU flavor ids and their vCPU ranges follow RunPod's published flavors (cpu3c/cpu3g/cpu3m, cpu5c/...; e.g.
skypilot-org/skypilot-catalog#82 lists cpu3c at 2..32 vCPUs with 2 GB per vCPU).
"""

from __future__ import annotations

from typing import Any

from r1lab import gpus


def _row(gpu_id: str, stock: gpus.Stock, cluster: bool) -> dict[str, Any]:
    return {
        "id": gpu_id, "name": stock.name, "pool": stock.pool, "memory": stock.memory_gb,
        "price": {"secure": stock.prices[0], "community": stock.prices[1]},
        "maxCount": {"secure": stock.max_count[0], "community": stock.max_count[1]}, "cluster": cluster,
    }  # fmt: skip


# The one GPU catalog's stock (r1lab.gpus), then the types the account offers that r1lab does not model.
# `cluster`: offered for Instant Clusters (B200, H200, H100 SXM, A100; not H100 NVL: facts.md)
GPU_CATALOG: list[dict[str, Any]] = [
    *(_row(g.runpod_id, g.stock, g.instant_cluster) for g in gpus.GPUS.values() if g.stock is not None),
    *(_row(gpu_id, stock, cluster) for gpu_id, stock, cluster in gpus.UNMODELLED_STOCK),
]

CPU_CATALOG: list[dict[str, Any]] = [
    {"id": "cpu3c", "name": "Compute-Optimized", "group": "Gen 3", "vcpu": {"min": 2, "max": 32},
     "ramGbPerVcpu": 2.0, "price": {"securePerVcpu": 0.03, "serverlessPerVcpu": 0.035}},
    {"id": "cpu3g", "name": "General Purpose", "group": "Gen 3", "vcpu": {"min": 2, "max": 32},
     "ramGbPerVcpu": 4.0, "price": {"securePerVcpu": 0.04, "serverlessPerVcpu": 0.045}},
    {"id": "cpu3m", "name": "Memory-Optimized", "group": "Gen 3", "vcpu": {"min": 2, "max": 16},
     "ramGbPerVcpu": 8.0, "price": {"securePerVcpu": 0.05, "serverlessPerVcpu": 0.055}},
    {"id": "cpu5c", "name": "Compute-Optimized", "group": "Gen 5", "vcpu": {"min": 2, "max": 32},
     "ramGbPerVcpu": 2.0, "price": {"securePerVcpu": 0.04, "serverlessPerVcpu": 0.045}},
    {"id": "cpu5g", "name": "General Purpose", "group": "Gen 5", "vcpu": {"min": 2, "max": 32},
     "ramGbPerVcpu": 4.0, "price": {"securePerVcpu": 0.05, "serverlessPerVcpu": 0.055}},
]  # fmt: skip

# `country`: ISO 3166-1 alpha-2 (the countryCodes filter); `cuda`: CUDA versions its GPU hosts report
DATA_CENTERS: list[dict[str, Any]] = [
    {"id": "EU-RO-1", "name": "EU Romania 1", "region": "EUROPE", "globalNetwork": True, "country": "RO",
     "networkVolumeTypes": ["STANDARD"], "compliance": ["GDPR"], "cuda": ["12.4", "12.8"]},
    {"id": "EU-SE-1", "name": "EU Sweden 1", "region": "EUROPE", "globalNetwork": True, "country": "SE",
     "networkVolumeTypes": ["STANDARD", "HIGH_PERFORMANCE"], "compliance": ["GDPR", "RENEWABLE"],
     "cuda": ["12.8", "13.0"]},
    {"id": "US-KS-2", "name": "US Kansas 2", "region": "NORTH_AMERICA", "globalNetwork": True, "country": "US",
     "networkVolumeTypes": ["STANDARD", "HIGH_PERFORMANCE"], "compliance": ["SOC_2_TYPE_2"],
     "cuda": ["12.4", "12.8"]},
    {"id": "US-TX-3", "name": "US Texas 3", "region": "NORTH_AMERICA", "globalNetwork": False, "country": "US",
     "networkVolumeTypes": ["STANDARD"], "compliance": [], "cuda": ["12.8"]},
]  # fmt: skip

# RunPod's own capacity refusal, as clients have recorded it from the API (see r1lab/cloud/errors.py)
CAPACITY_DETAIL = "There are no longer any instances available with the requested specifications. Please refresh and try again."


def gpu_type(gpu_id: str) -> dict[str, Any] | None:
    return next((g for g in GPU_CATALOG if g["id"] == gpu_id), None)


def cpu_flavor(cpu_id: str) -> dict[str, Any] | None:
    return next((c for c in CPU_CATALOG if c["id"] == cpu_id), None)


def data_center(dc_id: str) -> dict[str, Any] | None:
    return next((d for d in DATA_CENTERS if d["id"] == dc_id), None)


def cuda_key(version: str) -> tuple[int, ...]:
    """'12.11' -> (12, 11): CUDA versions compare numerically, not as decimals."""
    return tuple(int(p) for p in version.split("."))


def cuda_ok(version: str, allowed: list[str] | None, minimum: str | None) -> bool:
    """Whether a host's CUDA version meets an exact set and/or a floor (a bare-major floor means any minor)."""
    if allowed and version not in allowed:
        return False
    if minimum:
        floor = cuda_key(minimum)
        if cuda_key(version)[: len(floor)] < floor:
            return False
    return True
