"""The one GPU catalog: every GPU product r1lab models is one `GPU` entry here, and nothing else lists them.

Each entry holds its datasheet figures (dense rates: half the 'with sparsity' figures), its RunPod id (the same id
names it for pods and for Instant Clusters), whether Instant Clusters offer it, its dated fallback prices, the stock
the RunPod emulator offers and the reference hardware profile (r1lab/data/profiles/) whose efficiency constants the
performance model uses for it. config (validate), perf (hardware, planner), cloud (pricing, the emulator's catalog)
and cost derive from it; it imports nothing of r1lab, so every layer may read it.
calibrate/gpu_bench.py ships alone to pods and keeps its own copy of the datasheet figures
(tests/test_gpu_catalog.py checks that both agree).

Adding a GPU type: one `GPU(...)` entry in `GPUS`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

MIB = 1 << 20


@dataclass(frozen=True)
class FallbackPrice:
    """An hourly price per GPU seen on a date (used only when RunPod's live catalog is unreachable)."""

    secure: float
    date: str
    source: str
    community: float | None = None


@dataclass(frozen=True)
class Stock:
    """What the RunPod emulator offers of a GPU type (RunPod's display name, pool, GB, limits, prices).

    `prices`: (secure, community) per GPU-hour; the secure price is the dated fallback where one exists."""

    name: str
    pool: str
    memory_gb: int
    prices: tuple[float, float]
    max_count: tuple[int, int] = (8, 8)  # (secure, community)


@dataclass(frozen=True)
class GPU:
    runpod_id: str
    short: str
    memory_bytes: int  # what nvidia-smi reports as total (vLLM's gpu_memory_utilization is a fraction of it)
    hbm_tb_s: float
    fp8_tflops: float
    bf16_tflops: float
    intranode: str  # key of perf.network.LINKS used by a TP group inside one node
    nvlink_all_pairs: bool  # all GPUs of a node NVLink-connected (vLLM custom all-reduce stays on)
    default_profile: str
    aliases: tuple[str, ...] = ()
    datasheet: str = ""
    fastest_link_gb_s: float = (
        0.0  # fastest GPU-to-GPU path inside a node, GB/s one direction (gpu_bench's link_gb_s)
    )
    instant_cluster: bool = False  # RunPod Instant Clusters offer it (facts.md)
    price: FallbackPrice | None = None
    stock: Stock | None = None
    profile_measured: bool = True  # False: default_profile was measured on another GPU (scaled by datasheet)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / 2**30


_FACTS_2026_11_09 = "runpod pricing page (secure)"

GPUS: dict[str, GPU] = {
    "NVIDIA H100 NVL": GPU(
        "NVIDIA H100 NVL",
        "H100 NVL",
        95830 * MIB,
        3.9,
        1671.0,
        835.0,
        "pcie-gen5",
        False,
        "h100-sxm-x1-2026-11-27",
        ("h100nvl", "h100 nvl", "h100-nvl"),
        "NVIDIA H100 NVL datasheet: 94 GB HBM3, 3.9 TB/s; NVLink bridge pairs (600 GB/s), else PCIe Gen5",
        fastest_link_gb_s=300.0,
        instant_cluster=False,
        price=FallbackPrice(3.19, "2026-11-09", _FACTS_2026_11_09, community=2.59),
        stock=Stock("H100 NVL", "HOPPER_141", 94, (3.19, 2.59)),
        profile_measured=False,
    ),
    "NVIDIA H100 80GB HBM3": GPU(
        "NVIDIA H100 80GB HBM3",
        "H100 SXM",
        81559 * MIB,
        3.35,
        1979.0,
        989.0,
        "nvswitch-nvl4",
        True,
        "h100-sxm-x1-2026-11-27",
        ("h100sxm", "h100 sxm", "h100-sxm", "h100", "h100 80gb"),
        "NVIDIA H100 SXM5 datasheet: 80 GB HBM3, 3.35 TB/s, NVSwitch 900 GB/s",
        fastest_link_gb_s=450.0,
        instant_cluster=True,
        price=FallbackPrice(3.99, "2026-11-09", _FACTS_2026_11_09),
        stock=Stock("H100 SXM", "HOPPER_80", 80, (3.99, 2.99)),
    ),
    "NVIDIA H200": GPU(
        "NVIDIA H200",
        "H200",
        143771 * MIB,
        4.8,
        1979.0,
        989.0,
        "nvswitch-nvl4",
        True,
        "h200-x4-2026-11-27",
        ("h200", "h200 sxm", "h200sxm", "h200-sxm"),
        "NVIDIA H200 SXM datasheet: 141 GB HBM3e, 4.8 TB/s, NVSwitch 900 GB/s",
        fastest_link_gb_s=450.0,
        instant_cluster=True,
        price=FallbackPrice(4.59, "2026-11-09", _FACTS_2026_11_09),
        stock=Stock("H200 SXM", "HOPPER_141", 141, (4.59, 3.59)),
    ),
    "NVIDIA B200": GPU(
        "NVIDIA B200",
        "B200",
        183359 * MIB,
        8.0,
        4500.0,
        2250.0,
        "nvswitch-nvl5",
        True,
        "h200-x4-2026-11-27",
        ("b200",),
        "NVIDIA HGX B200: 180 GB HBM3e, 8 TB/s, NVLink 5 1.8 TB/s; no measured profile yet (borrows H200's)",
        fastest_link_gb_s=900.0,
        instant_cluster=True,
        price=FallbackPrice(
            4.99,
            "2026-12-02",
            "runpod.io/articles/guides/nvidia-b200 (on-demand), stored copy read 2026-12-02",
        ),
        stock=Stock("B200", "BLACKWELL_180", 180, (4.99, 3.99)),
        profile_measured=False,
        notes=(
            "datasheet-derived: the H200 profile's efficiencies scaled by the B200 datasheet, not measured",
        ),
    ),
}

# RunPod GPU types the emulated account also offers that r1lab does not model (not valid in params):
# illustrative figures for the emulator only. (id, stock, instant_cluster)
UNMODELLED_STOCK: tuple[tuple[str, Stock, bool], ...] = (
    ("NVIDIA A100-SXM4-80GB", Stock("A100 SXM", "AMPERE_80", 80, (1.74, 1.39)), True),
    ("NVIDIA GeForce RTX 4090", Stock("RTX 4090", "ADA_24", 24, (0.69, 0.34), (8, 4)), False),
)


@functools.lru_cache(maxsize=1024)  # a pure string function, called ~13 times per lookup (names: a few dozen)
def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


@functools.lru_cache(maxsize=1024)  # GPUS is constant; once per predict() and on every Deployment.hw
def gpu(name: str) -> GPU:
    """Resolve a RunPod id, short name or alias; errors list what is known."""
    key = _norm(name)
    for g in GPUS.values():
        if key in {_norm(g.runpod_id), _norm(g.short), *(_norm(a) for a in g.aliases)}:
            return g
    raise KeyError(
        f"unknown GPU {name!r}; known RunPod ids: {sorted(GPUS)} (short names: {[g.short for g in GPUS.values()]})"
    )


def known_gpu_types() -> dict[str, str]:
    """RunPod id -> short name of every modelled GPU (what params may name)."""
    return {g.runpod_id: g.short for g in GPUS.values()}


def fallback_prices() -> dict[str, FallbackPrice]:
    """RunPod id -> dated fallback price, for every GPU that has one."""
    return {g.runpod_id: g.price for g in GPUS.values() if g.price is not None}


# RunPod Instant Clusters (facts.md, RunPod docs 2026-12-01): 2-8 nodes; B200/H200/H100 SXM at 3,200 Gbps between
# nodes, A100 at 1,600 Gbps; no H100 NVL.
INSTANT_CLUSTER_NODES = (2, 8)


def instant_cluster_types() -> dict[str, str]:
    """RunPod id -> short name of every GPU type Instant Clusters offer (modelled or not)."""
    out = {g.runpod_id: g.short for g in GPUS.values() if g.instant_cluster}
    return out | {gid: stock.name for gid, stock, clustered in UNMODELLED_STOCK if clustered}


def cluster_refusal(gpu_type: str | None, nodes: int) -> str | None:
    """Why RunPod would not rent this Instant Cluster (with the fix), or None when it offers it. RunPod itself
    answers an H100 NVL cluster with a 400 'no longer any instances available' that reads as stock."""
    offered = instant_cluster_types()
    if gpu_type not in offered:
        names = ", ".join(f"{short} ({gid!r})" for gid, short in offered.items())
        return (
            f"RunPod Instant Clusters offer {names}, not {gpu_type!r} (RunPod answers 400 'no longer any "
            "instances available', which reads as stock): use one of those GPU types, or "
            "provider.network: global-networking for ordinary pods (100 Mbps between them)"
        )
    lo, hi = INSTANT_CLUSTER_NODES
    if not lo <= nodes <= hi:
        return (
            f"RunPod Instant Clusters have {lo}-{hi} nodes, not {nodes}: change the serving pods' count "
            "(pods[].count) or the roles"
        )
    return None
