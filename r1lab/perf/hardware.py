"""The performance model's view of the GPU catalog (r1lab.gpus holds the entries; this module adds nothing).

Public interface:
- `GPUS`: RunPod id -> `GPU`; `gpu(name)` resolves an id, a short name or an alias
  ("NVIDIA H100 NVL", "H100 NVL", "h100nvl"; "NVIDIA H100 80GB HBM3", "H100 SXM"; "NVIDIA H200"; "NVIDIA B200").
- `known_gpu_types()` -> {runpod_id: short_name} (r1lab.config validates params against r1lab.gpus directly).
- `GPU.memory_bytes` is what nvidia-smi reports as total (vLLM's gpu_memory_utilization is a fraction of it).
- `GPU.default_profile`: slug of the reference hardware profile in r1lab/data/profiles/ used for its
  efficiency constants (H100 NVL has no measured profile: it borrows the H100 SXM one, scaled by datasheet).
  The defaults are the `r1lab calibrate` runs of 2026-11-27 (GPU time only, block-scaled FP8 GEMMs as R1 runs
  them); the first eager-timed, per-tensor profiles (h100-sxm-2026-11-27, h200-2026-11-27) stay loadable.
"""

from __future__ import annotations

from r1lab.gpus import GPU, GPUS, MIB, gpu, known_gpu_types

__all__ = ["GPU", "GPUS", "MIB", "gpu", "known_gpu_types"]
