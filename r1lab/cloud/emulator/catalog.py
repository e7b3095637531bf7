"""What the emulated RunPod account can rent: GPU types, CPU flavors, data centers, CUDA versions.

Prices: facts.md (2026-11-09 copies of the pricing page) where known; community prices of H100 SXM / H200, the
RTX 4090 row, the A100/B200 rows and the CPU flavors' figures are illustrative values for the emulator only.
CPU flavor ids and their vCPU ranges follow RunPod's published flavors (cpu3c/cpu3g/cpu3m, cpu5c/...; e.g.
skypilot-org/skypilot-catalog#82 lists cpu3c at 2..32 vCPUs with 2 GB per vCPU).
"""

from __future__ import annotations

from typing import Any

# `cluster`: offered for Instant Clusters (B200, H200, H100 SXM, A100; not H100 NVL: facts.md)
GPU_CATALOG: list[dict[str, Any]] = [
    {"id": "NVIDIA H100 NVL", "name": "H100 NVL", "pool": "HOPPER_141", "memory": 94,
     "price": {"secure": 3.19, "community": 2.59}, "maxCount": {"secure": 8, "community": 8}, "cluster": False},
    {"id": "NVIDIA H100 80GB HBM3", "name": "H100 SXM", "pool": "HOPPER_80", "memory": 80,
     "price": {"secure": 3.99, "community": 2.99}, "maxCount": {"secure": 8, "community": 8}, "cluster": True},
    {"id": "NVIDIA H200", "name": "H200 SXM", "pool": "HOPPER_141", "memory": 141,
     "price": {"secure": 4.59, "community": 3.59}, "maxCount": {"secure": 8, "community": 8}, "cluster": True},
    {"id": "NVIDIA B200", "name": "B200", "pool": "BLACKWELL_180", "memory": 180,
     "price": {"secure": 5.99, "community": 5.49}, "maxCount": {"secure": 8, "community": 8}, "cluster": True},
    {"id": "NVIDIA A100-SXM4-80GB", "name": "A100 SXM", "pool": "AMPERE_80", "memory": 80,
     "price": {"secure": 1.74, "community": 1.39}, "maxCount": {"secure": 8, "community": 8}, "cluster": True},
    {"id": "NVIDIA GeForce RTX 4090", "name": "RTX 4090", "pool": "ADA_24", "memory": 24,
     "price": {"secure": 0.69, "community": 0.34}, "maxCount": {"secure": 8, "community": 4}, "cluster": False},
]  # fmt: skip

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
