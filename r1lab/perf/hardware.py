"""GPU catalog keyed by RunPod GPU type id, from datasheets (dense rates: half the 'with sparsity' figures).

Public interface:
- `GPUS`: RunPod id -> `GPU`; `gpu(name)` resolves an id, a short name or an alias
  ("NVIDIA H100 NVL", "H100 NVL", "h100nvl"; "NVIDIA H100 80GB HBM3", "H100 SXM"; "NVIDIA H200"; "NVIDIA B200").
- `known_gpu_types()` -> {runpod_id: short_name} (used by r1lab.config to validate params).
- `GPU.memory_bytes` is what nvidia-smi reports as total (vLLM's gpu_memory_utilization is a fraction of it).
- `GPU.default_profile`: slug of the reference hardware profile in r1lab/data/profiles/ used for its
  efficiency constants (H100 NVL has no measured profile: it borrows the H100 SXM one, scaled by datasheet).
  The defaults are the `r1lab calibrate` runs of 2026-11-27 (GPU time only, block-scaled FP8 GEMMs as R1 runs
  them); the first eager-timed, per-tensor profiles (h100-sxm-2026-11-27, h200-2026-11-27) stay loadable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class GPU:
    runpod_id: str
    short: str
    memory_bytes: int
    hbm_tb_s: float
    fp8_tflops: float
    bf16_tflops: float
    intranode: str  # key of network.LINKS used by a TP group inside one node
    nvlink_all_pairs: bool  # all GPUs of a node NVLink-connected (vLLM custom all-reduce stays on)
    default_profile: str
    aliases: tuple[str, ...] = ()
    datasheet: str = ""

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / 2**30


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
    ),
}


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


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
    return {g.runpod_id: g.short for g in GPUS.values()}
