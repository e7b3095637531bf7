"""Measure a GPU machine's real ceilings for the DeepSeek-R1 performance model (needs only PyTorch).

Self-contained on purpose: copy this one file to a RunPod pod (the vllm/vllm-openai image has PyTorch) or any
CUDA machine and run `python3 gpu_bench.py --out DIR`. It imports nothing of r1lab.

What it measures (each record appended to DIR/records.jsonl as soon as it is taken):
- `copy`: device-to-device copy of 1 GiB on every GPU; `tb_s` counts bytes read plus written.
- `gemm`: `a[m,k] @ w[n,k]^T` at DeepSeek-R1 layer shapes, full and TP-sharded (k or n divided by TP), across
  m (tokens in the batch), in bf16 (torch.mm), fp8 e4m3 with per-tensor scales (`torch._scaled_mm`) and fp8 with
  DeepSeek's own block scales (1x128 activations, 128x128 weights) where this PyTorch/cuBLAS supports them.
- `kv_read`: a decode-attention-like read of the MLA latent cache (576 values per token): 16 heads' queries
  (128 heads / TP8) scored against every cached token, bf16 and fp8; `tb_s` is cache bytes over time.
- `allreduce`: NCCL all-reduce of bf16 over 2, 4, ... GPUs (one process per GPU) against message size.
- the topology (`nvidia-smi topo -m`), clocks, power limit and throttle reasons as found (never changed).

Timing: medians of CUDA-event timings after warm-up, on random data. Each sample first parks the GPU on a short
spin kernel while the CPU queues `n_inner` operations behind it, so the events time the GPU's own work, not
Python's launch overhead (the way CUDA graphs run decode in vLLM); a sample whose queue ran dry is retaken with
a longer spin. Operands rotate through enough copies to exceed 3x the L2 cache, so weights come from HBM as in
a real decode step. Every rate is checked against the datasheet ceiling of its card: a rate above it is a bad
measurement, recorded with an error and left out of the profile (exit code 3).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# NVLink multicast (NVLS) stays off: on shared hosts a program using it can take every GPU of the host down.
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

# Datasheet ceilings (dense rates; facts.md): a standalone copy of r1lab.gpus (this file ships alone to pods;
# tests/test_gpu_catalog.py checks that both agree). link_gb_s: fastest GPU-to-GPU path, one direction (the quantity an
# all-reduce's bus bandwidth is compared with).
DATASHEET: dict[str, dict[str, float]] = {
    "H100 NVL": {"hbm_tb_s": 3.9, "fp8_tflops": 1671.0, "bf16_tflops": 835.0, "link_gb_s": 300.0},
    "H100 SXM": {"hbm_tb_s": 3.35, "fp8_tflops": 1979.0, "bf16_tflops": 989.0, "link_gb_s": 450.0},
    "H200": {"hbm_tb_s": 4.8, "fp8_tflops": 1979.0, "bf16_tflops": 989.0, "link_gb_s": 450.0},
    "B200": {"hbm_tb_s": 8.0, "fp8_tflops": 4500.0, "bf16_tflops": 2250.0, "link_gb_s": 900.0},
}


def identify_gpu(device_name: str) -> str | None:
    """Datasheet key for a CUDA device name ('NVIDIA H100 80GB HBM3' -> 'H100 SXM'), None if unknown."""
    n = device_name.upper()
    if "H100" in n and "NVL" in n:
        return "H100 NVL"
    if "H100" in n and ("HBM3" in n or "SXM" in n):
        return "H100 SXM"
    if "H200" in n and "NVL" not in n:
        return "H200"
    if "B200" in n:
        return "B200"
    return None


def profile_slug(gpu_key: str | None, device_name: str, gpus: int, date: str) -> str:
    """File name stem of a profile: 'h200-x4-2026-11-27'."""
    base = (gpu_key or device_name).lower().replace("nvidia", "").strip()
    base = "-".join("".join(c if c.isalnum() else " " for c in base).split())
    return f"{base}-x{gpus}-{date}"


def _under_load(records: list[dict[str, Any]]) -> dict[str, Any]:
    """SM clock, power draw and throttle reasons of every GPU read while GPU 0 ran GEMMs (as found)."""
    rows: list[dict[str, Any]] = next((r["smi"] for r in records if r.get("kind") == "smi_under_load"), [])
    if not rows:
        return {}
    return {
        "sm_under_load": [_num(x.get("clocks.sm")) for x in rows],
        "power_draw_under_load_w": [_num(x.get("power.draw")) for x in rows],
        "clocks_event_reasons_under_load": [x.get("clocks_event_reasons.active") for x in rows],
    }


# ---------------------------------------------------------------- DeepSeek-R1 shapes (config.json values)
R1 = {
    "hidden": 7168,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_rope_head_dim": 64,
    "qk_nope_head_dim": 128,
    "v_head_dim": 128,
    "heads": 128,
    "intermediate": 18432,
    "moe_intermediate": 2048,
    "vocab": 129280,
}
LATENT = R1["kv_lora_rank"] + R1["qk_rope_head_dim"]  # 576 values cached per token per layer


@dataclass(frozen=True)
class GemmShape:
    """One linear layer as one TP rank runs it: out[m, n] = a[m, k] @ w[n, k]^T."""

    name: str
    k: int
    n: int
    tp: int
    max_m: int | None = None  # lm_head only sees the last token of each sequence


def gemm_shapes(tps: Iterable[int] = (1, 8)) -> list[GemmShape]:
    """R1's linear layers, unsharded (tp=1) and as each TP rank holds them (vLLM's sharding)."""
    h, heads = R1["hidden"], R1["heads"]
    qk_head = R1["qk_nope_head_dim"] + R1["qk_rope_head_dim"]
    out: list[GemmShape] = []
    for tp in tps:
        if tp == 1:  # replicated on every rank: the same at any TP
            out.append(GemmShape("qkv_a_proj", h, R1["q_lora_rank"] + LATENT, 1))
        out += [
            GemmShape("q_b_proj", R1["q_lora_rank"], heads * qk_head // tp, tp),
            GemmShape(
                "kv_b_proj", R1["kv_lora_rank"], heads * (R1["qk_nope_head_dim"] + R1["v_head_dim"]) // tp, tp
            ),
            GemmShape("o_proj", heads * R1["v_head_dim"] // tp, h, tp),
            GemmShape("dense_gate_up", h, 2 * R1["intermediate"] // tp, tp),
            GemmShape("dense_down", R1["intermediate"] // tp, h, tp),
            GemmShape("expert_gate_up", h, 2 * R1["moe_intermediate"] // tp, tp),
            GemmShape("expert_down", R1["moe_intermediate"] // tp, h, tp),
            GemmShape("lm_head", h, R1["vocab"] // tp, tp, max_m=1024),
        ]
    return out


M_VALUES = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
GEMM_DTYPES = ("bf16", "fp8", "fp8_block")
# Generic message sizes, then R1's TP all-reduce of hidden states (m tokens x 7168 x 2 B) for m = 1 ... 4096.
ALLREDUCE_BYTES = tuple(4096 * 4**i for i in range(9)) + tuple(
    m * R1["hidden"] * 2 for m in (1, 8, 64, 256, 1024, 4096)
)
KV_TOKENS = (8192, 65536, 524288, 2097152)
KV_BATCHED = ((64, 8192), (256, 2048))  # (sequences, context tokens) of one decode step, bf16 bmm
KV_HEADS = R1["heads"] // 8  # query heads per rank at TP8 (MLA shares one latent across heads)


# ---------------------------------------------------------------- pure helpers (tested without a GPU)
def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: list[float]) -> float:
    """(p90 - p10) / median of the samples: how noisy a measurement was."""
    s = sorted(xs)
    if len(s) < 3:
        return 0.0
    lo, hi = s[int(0.1 * (len(s) - 1))], s[int(math.ceil(0.9 * (len(s) - 1)))]
    return (hi - lo) / median(s)


def ceiling_error(what: str, value: float, ceiling: float | None, unit: str) -> str | None:
    """An error text when a measured rate exceeds its physical ceiling (that is a bad measurement)."""
    if ceiling is None or value <= ceiling:
        return None
    return f"{what} {value:.3g} {unit} is above the datasheet ceiling {ceiling:g} {unit}: bad measurement"


def rotation_sets(bytes_per_set: int, l2_bytes: int, cap_bytes: int = 3 << 30, most: int = 512) -> int:
    """How many operand copies to rotate through so that the working set exceeds 3x L2 (within cap_bytes)."""
    want = max(1, math.ceil(3 * l2_bytes / max(1, bytes_per_set)))
    fit = max(1, cap_bytes // max(1, bytes_per_set))
    return int(min(want, fit, most))


def bus_gb_s(nbytes: int, world: int, seconds: float) -> float:
    """nccl-tests' bus bandwidth of an all-reduce: bytes * 2 (n-1)/n / time."""
    return nbytes * 2 * (world - 1) / world / seconds / 1e9


def build_profile(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The hardware profile (docs/architecture.md, 'Hardware profiles') from the records of one run."""
    meta = next(r for r in records if r["kind"] == "meta")
    ok = [r for r in records if not r.get("error")]
    copies = [r["tb_s"] for r in ok if r["kind"] == "copy"]
    kv = [r for r in ok if r["kind"] == "kv_read" and r["layout"] == "flat"]

    def kv_plateau(dtype: str) -> float | None:
        rows = [r for r in kv if r["dtype"] == dtype]
        return max(rows, key=lambda r: r["tokens"])["tb_s"] if rows else None

    gemm = [  # "fp8": per-tensor scales; "fp8_block": DeepSeek's 1x128 / 128x128 block scales
        {k: r[k] for k in ("dtype", "name", "tp", "m", "k", "n", "seconds", "tflops")}
        for r in ok
        if r["kind"] == "gemm"
    ]
    allreduce = [
        {k: r[k] for k in ("world", "bytes", "seconds", "bus_gb_s")}
        for r in ok
        if r["kind"] == "allreduce" and r["method"] == "queued"
    ]
    return {
        "schema_version": SCHEMA_VERSION,
        "gpu": meta["gpu"],
        "device_name": meta["device_name"],
        "gpus": meta["gpus"],
        "measured": meta["date"],
        "versions": meta["versions"],
        "clocks_mhz": {**meta["clocks_mhz"], **_under_load(records)},
        "power_limit_w": meta["power_limit_w"],
        "topology": meta["topology"],
        "copy_tb_s": median(copies) if copies else None,
        "kv_read_tb_s": kv_plateau("bf16"),
        "kv_read_fp8_tb_s": kv_plateau("fp8"),
        "gemm": gemm,
        "allreduce": allreduce,
        "source": (
            f"{'DRY RUN on CPU, not a measurement: ' if meta['dry_run'] else ''}"
            f"r1lab calibrate (gpu_bench.py) on {meta['host']} at {meta['time']}; "
            "times are GPU time per operation (medians of CUDA-event timings with the operations queued behind a "
            "spin kernel, so Python launch overhead is excluded, as under CUDA graphs); operands rotated past "
            "3x L2; fp8 = torch._scaled_mm with per-tensor scales, fp8_block = the same with DeepSeek's block "
            "scales (cuBLAS; m=1 and k/128 not a multiple of 4 unsupported); all-reduce = NCCL bf16, NVLS off"
        ),
        "timing": "queued",
    }


# ---------------------------------------------------------------- output
class Recorder:
    """Appends one JSON line per record and flushes it at once (a killed run keeps what it measured)."""

    def __init__(self, out: Path) -> None:
        self.path = out / "records.jsonl"
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists: give calibrate a new --out directory")
        self.records: list[dict[str, Any]] = []
        self._f = self.path.open("a", encoding="utf-8")

    def add(self, record: dict[str, Any]) -> dict[str, Any]:
        self.records.append(record)
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        return record

    def error(self, section: str, exc: BaseException) -> None:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        print(f"  ! {section}: {detail}", flush=True)
        self.add({"kind": "error", "section": section, "error": detail})

    def close(self) -> None:
        self._f.close()


def smi(args: list[str]) -> str | None:
    """nvidia-smi output, or None where it is missing (reading only: nothing here changes the card)."""
    try:
        return subprocess.run(
            ["nvidia-smi", *args], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None


SMI_FIELDS = (
    "index,name,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,clocks.applications.graphics,"
    "power.draw,power.limit,power.default_limit,power.max_limit,temperature.gpu,clocks_event_reasons.active,"
    "driver_version,pstate"
)


def smi_query() -> list[dict[str, str]]:
    text = smi([f"--query-gpu={SMI_FIELDS}", "--format=csv,noheader,nounits"])
    if not text:
        return []
    keys = SMI_FIELDS.split(",")
    return [
        dict(zip(keys, (v.strip() for v in line.split(",")), strict=False))
        for line in text.strip().splitlines()
    ]


def _num(s: str | None) -> float | None:
    try:
        return float(s) if s is not None else None
    except ValueError:
        return None


# ---------------------------------------------------------------- timing
class Bench:
    """Times GPU work with CUDA events (or a wall clock in the CPU dry run, which only exercises the logic)."""

    def __init__(self, torch: Any, device: Any, samples: int, dry_run: bool) -> None:
        self.torch, self.device, self.samples, self.dry = torch, device, samples, dry_run
        self.cuda = device.type == "cuda"
        self.clock_hz = 2.0e9  # spin length assumes the fastest clock: a slower clock only spins longer

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def time(
        self,
        fn: Callable[[int], Any],
        target_s: float = 1e-3,
        warmup: int = 3,
        max_inner: int = 64,
        reset: Callable[[], Any] | None = None,
    ) -> dict[str, Any]:
        """Median seconds per call of fn(i) (i selects the rotating operand set); reset() runs untimed
        before the warm-up, the probe and each sample (e.g. to restore an all-reduce's input)."""
        if not self.cuda:
            return self._time_wall(fn, warmup, reset)
        with self.torch.cuda.device(self.device):
            return self._time_cuda(fn, target_s, warmup, max_inner, reset or (lambda: None))

    def _time_wall(
        self, fn: Callable[[int], Any], warmup: int, reset: Callable[[], Any] | None
    ) -> dict[str, Any]:
        ts = []
        for s in range(warmup + self.samples):
            if reset:
                reset()
            t0 = time.perf_counter()
            fn(s)
            if s >= warmup:
                ts.append(time.perf_counter() - t0)
        return {
            "seconds": median(ts),
            "spread": spread(ts),
            "n_inner": 1,
            "samples": len(ts),
            "method": "wall",
        }

    def _time_cuda(
        self, fn: Callable[[int], Any], target_s: float, warmup: int, max_inner: int, reset: Callable[[], Any]
    ) -> dict[str, Any]:
        torch = self.torch
        reset()
        for i in range(warmup):
            fn(i)
        self.sync()
        # Probe: one eager call gives an upper bound of the op's time; the CPU cost of queuing one op.
        reset()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(warmup)
        end.record()
        end.synchronize()
        probe = start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        for i in range(4):
            fn(i)
        cpu_per_op = (time.perf_counter() - t0) / 4
        self.sync()
        n_inner = int(min(max_inner, max(1, math.ceil(target_s / max(probe, 1e-6)))))
        spin_s = 2.0 * n_inner * cpu_per_op + 2e-4
        ts: list[float] = []
        retakes = starved_kept = 0
        while len(ts) < self.samples:
            reset()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(int(spin_s * self.clock_hz))
            start.record()
            for j in range(n_inner):
                fn(len(ts) * n_inner + j)
            end.record()
            starved = start.query()  # the spin ended before the queue was full: the GPU may have idled
            end.synchronize()
            if starved and retakes < 8:
                retakes += 1
                spin_s *= 2
                continue
            starved_kept += int(starved)
            ts.append(start.elapsed_time(end) / 1e3 / n_inner)
        return {
            "seconds": median(ts),
            "spread": spread(ts),
            "n_inner": n_inner,
            "samples": len(ts),
            "retakes": retakes,
            "starved_samples": starved_kept,
            "eager_seconds": probe,
            "method": "queued",
        }


# ---------------------------------------------------------------- measurements
def measure_copy(
    torch: Any, bench: Bench, rec: Recorder, dev: Any, ceiling: float | None, nbytes: int
) -> None:
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    t = bench.time(lambda i: dst.copy_(src), target_s=5e-3)
    if not torch.equal(dst[:4096], src[:4096]):
        raise RuntimeError("copy check failed: destination differs from source")
    tb_s = 2 * nbytes / t["seconds"] / 1e12
    rec.add(
        {
            "kind": "copy",
            "gpu": dev.index or 0,
            "bytes": nbytes,
            **t,
            "tb_s": tb_s,
            "ceiling_tb_s": ceiling,
            "error": ceiling_error("copy", tb_s, ceiling, "TB/s"),
        }
    )


def _act_scales(torch: Any, m: int, k: int, dev: Any) -> Any:
    """Random positive scales per token and 128 k-values: shape (m, k/128), column-major (cuBLAS's layout)."""
    return (torch.rand(math.ceil(k / 128), m, device=dev) + 0.5).t()


def _weight_scales(torch: Any, n: int, k: int, dev: Any) -> Any:
    """Random positive scales per 128x128 weight block: shape (k/128, n/128), column-major."""
    return (torch.rand(math.ceil(n / 128), math.ceil(k / 128), device=dev) + 0.5).t()


def _dequant_blocks(torch: Any, x: Any, scale: Any, block_rows: int) -> Any:
    s = scale.float()
    if block_rows > 1:
        s = s.repeat_interleave(block_rows, 0)[: x.shape[0]]
    s = s.repeat_interleave(128, 1)[:, : x.shape[1]]
    return x.float() * s


class GemmCase:
    """Rotating operand sets for one (shape, m, dtype) and the call that multiplies one set."""

    def __init__(
        self, torch: Any, shape: GemmShape, m: int, dtype: str, dev: Any, l2: int, sets: int | None = None
    ) -> None:
        self.torch, self.shape, self.m, self.dtype = torch, shape, m, dtype
        k, n = shape.k, shape.n
        elem = 2 if dtype == "bf16" else 1
        per_set = (m * k + n * k) * elem + m * n * 2
        self.sets = sets or rotation_sets(per_set, l2)
        self.weight_bytes = n * k * elem
        self.min_bytes = per_set
        self.a, self.w, self.sa, self.sb = [], [], [], []
        for _ in range(self.sets):
            a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
            if dtype == "bf16":
                self.a.append(a)
                self.w.append(w)
                continue
            self.a.append(a.to(torch.float8_e4m3fn))
            self.w.append(w.to(torch.float8_e4m3fn))
            if dtype == "fp8":
                self.sa.append(torch.rand((), device=dev) + 0.5)
                self.sb.append(torch.rand((), device=dev) + 0.5)
            else:  # DeepSeek's recipe: activations per token and 128 k-values, weights per 128x128 block
                self.sa.append(_act_scales(torch, m, k, dev))
                self.sb.append(_weight_scales(torch, n, k, dev))
        self.out = torch.empty(m, n, device=dev, dtype=torch.bfloat16)

    def __call__(self, i: int) -> Any:
        j = i % self.sets
        if self.dtype == "bf16":
            return self.torch.mm(self.a[j], self.w[j].t(), out=self.out)
        return self.torch._scaled_mm(
            self.a[j], self.w[j].t(), self.sa[j], self.sb[j], out_dtype=self.torch.bfloat16
        )

    def rel_error(self) -> float:
        """|out - ref| / |ref| against a float32 reference of the same (dequantized) operands."""
        torch = self.torch
        out = self(0).float()
        a, w = self.a[0], self.w[0]
        if self.dtype == "bf16":
            ref = a.float() @ w.float().t()
        elif self.dtype == "fp8":
            ref = (a.float() @ w.float().t()) * self.sa[0].float() * self.sb[0].float()
        else:
            ref = (
                _dequant_blocks(torch, a, self.sa[0], 1) @ _dequant_blocks(torch, w, self.sb[0].t(), 128).t()
            )
        return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


TOLERANCE = {"bf16": 1e-2, "fp8": 2e-2, "fp8_block": 2e-2}


def gemm_shape_check(torch: Any, shape: GemmShape, dtype: str, dev: Any, m: int) -> str | None:
    """None if this shape multiplies correctly in this dtype (fresh random operands, float32 reference);
    else the error that every measurement of the shape is recorded with (a wrong kernel's time means nothing)."""
    if dtype == "fp8_block" and math.ceil(shape.k / 128) % 4:
        # Seen on H200, cuBLAS 13 (2026-11-27): with k/128 not a multiple of 4 the 128x128 weight scales are
        # read with a padded stride and the result is wrong (relative error 0.4 and 4.5); vLLM uses its own
        # CUTLASS/DeepGEMM kernels there.
        return f"unsupported: block-scaled fp8 through cuBLAS needs k/128 to be a multiple of 4 (k={shape.k})"
    try:
        case = GemmCase(torch, shape, m, dtype, dev, 1 << 20, sets=1)
        err = case.rel_error()
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        return f"unsupported: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}"
    if not err <= TOLERANCE[dtype]:
        return f"wrong result: relative error {err:.3g} > {TOLERANCE[dtype]} at m={m}"
    return None


def measure_gemms(
    torch: Any,
    bench: Bench,
    rec: Recorder,
    dev: Any,
    l2: int,
    sheet: dict[str, float] | None,
    shapes: list[GemmShape],
    m_values: Iterable[int],
    dtypes: Iterable[str],
    progress: Callable[[str], None],
) -> None:
    m_values = tuple(m_values)
    check_m = 64 if 64 in m_values else min(m_values)
    for dtype in dtypes:
        ceiling_tflops = sheet[f"{'bf16' if dtype == 'bf16' else 'fp8'}_tflops"] if sheet else None
        hbm = sheet["hbm_tb_s"] if sheet else None
        for shape in shapes:
            shape_error = gemm_shape_check(torch, shape, dtype, dev, check_m)
            if shape_error:
                print(f"  ! gemm {dtype} {shape.name} tp{shape.tp}: {shape_error}", flush=True)
            for m in m_values:
                if shape.max_m is not None and m > shape.max_m:
                    continue
                progress(f"gemm {dtype} {shape.name} tp{shape.tp} m={m}")
                if shape_error:
                    rec.add(
                        {
                            "kind": "gemm",
                            "dtype": dtype,
                            "name": shape.name,
                            "tp": shape.tp,
                            "m": m,
                            "k": shape.k,
                            "n": shape.n,
                            "error": shape_error,
                        }
                    )
                    continue
                base = {
                    "kind": "gemm",
                    "dtype": dtype,
                    "name": shape.name,
                    "tp": shape.tp,
                    "m": m,
                    "k": shape.k,
                    "n": shape.n,
                }
                try:
                    case = GemmCase(torch, shape, m, dtype, dev, l2)
                    t = bench.time(case)
                except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
                    detail = (
                        str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                    )
                    rec.add({**base, "error": f"unsupported: {detail}"})
                    print(f"  ! gemm {dtype} {shape.name} tp{shape.tp} m={m}: {detail}", flush=True)
                    continue
                tflops = 2 * m * shape.k * shape.n / t["seconds"] / 1e12
                hbm_tb_s = case.min_bytes / t["seconds"] / 1e12
                error = ceiling_error("GEMM rate", tflops, ceiling_tflops, "TFLOPS") or ceiling_error(
                    "bytes moved", hbm_tb_s, hbm, "TB/s"
                )
                rec.add(
                    {
                        **base,
                        **t,
                        "tflops": tflops,
                        "weight_tb_s": case.weight_bytes / t["seconds"] / 1e12,
                        "bytes_tb_s": hbm_tb_s,
                        "sets": case.sets,
                        "checked_at_m": check_m,
                        "error": error,
                    }
                )
                del case


def measure_kv_read(
    torch: Any,
    bench: Bench,
    rec: Recorder,
    dev: Any,
    l2: int,
    hbm: float | None,
    tokens: Iterable[int],
    batched: Iterable[tuple[int, int]],
    progress: Callable[[str], None],
) -> None:
    """Scores KV_HEADS queries against every cached latent (576 values/token): one pass over the cache."""
    for dtype in ("bf16", "fp8"):
        elem = 2 if dtype == "bf16" else 1
        for t_tokens in tokens:
            progress(f"kv_read {dtype} {t_tokens} tokens")
            kv_bytes = t_tokens * LATENT * elem
            per_set = kv_bytes + KV_HEADS * t_tokens * 2
            sets = rotation_sets(per_set, l2)
            kvs, qs = [], []
            for _ in range(sets):
                kv = torch.randn(t_tokens, LATENT, device=dev, dtype=torch.bfloat16)
                q = torch.randn(KV_HEADS, LATENT, device=dev, dtype=torch.bfloat16)
                kvs.append(kv if dtype == "bf16" else kv.to(torch.float8_e4m3fn))
                qs.append(q if dtype == "bf16" else q.to(torch.float8_e4m3fn))
            one = torch.ones((), device=dev)

            def fn(i: int, kvs: list = kvs, qs: list = qs, dtype: str = dtype, one: Any = one) -> Any:
                j = i % len(kvs)
                if dtype == "bf16":
                    return torch.mm(qs[j], kvs[j].t())
                return torch._scaled_mm(qs[j], kvs[j].t(), one, one, out_dtype=torch.bfloat16)

            base = {
                "kind": "kv_read",
                "dtype": dtype,
                "layout": "flat",
                "tokens": t_tokens,
                "seqs": 1,
                "heads": KV_HEADS,
                "bytes": kv_bytes,
            }
            try:
                t = bench.time(fn)
            except (RuntimeError, ValueError, NotImplementedError) as exc:
                rec.add({**base, "error": f"unsupported: {str(exc).splitlines()[0][:300]}"})
                continue
            tb_s = kv_bytes / t["seconds"] / 1e12
            rec.add(
                {
                    **base,
                    **t,
                    "tb_s": tb_s,
                    "sets": sets,
                    "error": ceiling_error("KV read", per_set / t["seconds"] / 1e12, hbm, "TB/s"),
                }
            )
            del kvs, qs
    # Batched layout (bf16): many sequences of one context length, one bmm as a paged decode step would do.
    for seqs, ctx in batched:
        progress(f"kv_read bf16 batched {seqs}x{ctx}")
        kv_bytes = seqs * ctx * LATENT * 2
        per_set = kv_bytes + seqs * KV_HEADS * ctx * 2
        sets = rotation_sets(per_set, l2)
        kvs = [torch.randn(seqs, ctx, LATENT, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
        qs = [torch.randn(seqs, KV_HEADS, LATENT, device=dev, dtype=torch.bfloat16) for _ in range(sets)]

        def bmm(i: int, kvs: list[Any] = kvs, qs: list[Any] = qs) -> Any:
            return torch.bmm(qs[i % len(qs)], kvs[i % len(kvs)].transpose(1, 2))

        t = bench.time(bmm)
        tb_s = kv_bytes / t["seconds"] / 1e12
        rec.add(
            {
                "kind": "kv_read",
                "dtype": "bf16",
                "layout": "batched",
                "tokens": seqs * ctx,
                "seqs": seqs,
                "heads": KV_HEADS,
                "bytes": kv_bytes,
                **t,
                "tb_s": tb_s,
                "sets": sets,
                "error": ceiling_error("KV read", per_set / t["seconds"] / 1e12, hbm, "TB/s"),
            }
        )
        del kvs, qs


def measure_gpu_checks(
    torch: Any, bench: Bench, rec: Recorder, sheet: dict[str, float] | None, n_gpus: int, size: int
) -> None:
    """One square bf16 GEMM on every GPU: a slow card shows up here."""
    for g in range(n_gpus):
        dev = torch.device("cuda", g) if bench.cuda else torch.device("cpu")
        with torch.cuda.device(g) if bench.cuda else contextlib.nullcontext():
            a = [torch.randn(size, size, device=dev, dtype=torch.bfloat16) for _ in range(2)]
            b = [torch.randn(size, size, device=dev, dtype=torch.bfloat16) for _ in range(2)]
            sub = Bench(torch, dev, bench.samples, bench.dry)

            def mm(i: int, a: list[Any] = a, b: list[Any] = b) -> Any:
                return torch.mm(a[i % 2], b[i % 2])

            t = sub.time(mm, target_s=5e-3)
            tflops = 2 * size**3 / t["seconds"] / 1e12
            ceiling = sheet["bf16_tflops"] if sheet else None
            rec.add(
                {
                    "kind": "gpu_check",
                    "gpu": g,
                    "dtype": "bf16",
                    "m": size,
                    "k": size,
                    "n": size,
                    **t,
                    "tflops": tflops,
                    "error": ceiling_error("GEMM rate", tflops, ceiling, "TFLOPS"),
                }
            )
            del a, b


def clocks_under_load(torch: Any, dev: Any, seconds: float = 0.6) -> list[dict[str, str]]:
    """nvidia-smi read while GPU 0 runs square GEMMs (clocks and power as they are under load)."""
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    for _ in range(int(seconds / 1.5e-3)):
        torch.mm(a, b)
    time.sleep(0.15)
    rows = smi_query()
    torch.cuda.synchronize(dev)
    return rows


# ---------------------------------------------------------------- all-reduce (one process per GPU)
def allreduce_inner(nbytes: int) -> int:
    """All-reduces queued per sample: the same on every rank (a count that differs between ranks deadlocks)."""
    estimate_s = 2e-5 + nbytes / 150e9
    return int(min(32, max(1, math.ceil(2e-3 / estimate_s))))


def _time_collective_queued(
    torch: Any, dist: Any, dev: Any, x: Any, pristine: Any, n_inner: int, samples: int
) -> dict[str, Any]:
    """Median seconds per all-reduce with n_inner of them queued behind a spin kernel. Every rank makes the
    same calls in the same order; a barrier before each sample aligns the ranks."""
    for _ in range(3):
        x.copy_(pristine)
        dist.all_reduce(x)
    torch.cuda.synchronize(dev)
    spin_cycles = int((3e-4 + n_inner * 1e-4) * 2.0e9)
    ts: list[float] = []
    starved = 0
    for _ in range(samples):
        x.copy_(pristine)  # sums grow `world`-fold per call: at most 32 calls from a fresh input
        dist.barrier()
        torch.cuda.synchronize(dev)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(spin_cycles)
        start.record()
        for _ in range(n_inner):
            dist.all_reduce(x)
        end.record()
        starved += int(start.query())
        end.synchronize()
        ts.append(start.elapsed_time(end) / 1e3 / n_inner)
    return {"seconds": median(ts), "spread": spread(ts), "n_inner": n_inner, "starved_samples": starved}


def _allreduce_worker(
    rank: int, world: int, port: int, sizes: list[int], samples: int, out_dir: str, dry_run: bool
) -> None:
    import torch
    import torch.distributed as dist

    for k, v in SAFE_ENV.items():
        os.environ[k] = v
    cuda = not dry_run
    if cuda:
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
        dist.init_process_group(
            "nccl",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            device_id=dev,
            timeout=_dt.timedelta(seconds=60),
        )
    else:
        dev = torch.device("cpu")
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results: list[dict[str, Any]] = []
    try:
        check = torch.full((1024,), float(rank + 1), device=dev, dtype=torch.bfloat16)
        dist.all_reduce(check)
        expect = world * (world + 1) / 2
        if not bool((check.float() == expect).all()):
            raise RuntimeError(f"all-reduce check failed: got {check[0].item()}, expected {expect}")
        bench = Bench(torch, dev, samples, dry_run)
        for nbytes in sizes:
            if rank == 0:
                print(f"  all-reduce w{world} {nbytes} B", flush=True)
            pristine = torch.randn(nbytes // 2, device=dev, dtype=torch.bfloat16) * 1e-3
            x = pristine.clone()

            dist.barrier()
            eager: list[float] = []
            if cuda:
                for i in range(max(5, samples)):
                    dist.barrier()
                    torch.cuda.synchronize(dev)
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    x.copy_(pristine)
                    s.record()
                    dist.all_reduce(x)
                    e.record()
                    e.synchronize()
                    if i >= 2:
                        eager.append(s.elapsed_time(e) / 1e3)
            dist.barrier()
            if cuda:
                t = _time_collective_queued(torch, dist, dev, x, pristine, allreduce_inner(nbytes), samples)
            else:

                def all_reduce(i: int, x: Any = x) -> Any:
                    return dist.all_reduce(x)

                def restore(x: Any = x, p: Any = pristine) -> Any:
                    return x.copy_(p)

                t = bench.time(all_reduce, reset=restore)
            results.append(
                {
                    "bytes": nbytes,
                    "queued": t["seconds"],
                    "spread": t["spread"],
                    "n_inner": t["n_inner"],
                    "starved_samples": t.get("starved_samples", 0),
                    "eager": median(eager) if eager else None,
                }
            )
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_allreduce(
    world: int,
    sizes: list[int],
    samples: int,
    rec: Recorder,
    link: float | None,
    tmp: Path,
    dry_run: bool,
    timeout_s: float = 100.0,
) -> None:
    import torch.multiprocessing as mp

    run_dir = tmp / f"allreduce-w{world}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = mp.start_processes(
        _allreduce_worker,
        args=(world, _free_port(), sizes, samples, str(run_dir), dry_run),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            raise TimeoutError(
                f"all-reduce over {world} GPUs did not finish in {timeout_s:.0f} s (workers killed)"
            )
    per_rank = [json.loads((run_dir / f"rank{r}.json").read_text()) for r in range(world)]
    for i, nbytes in enumerate(sizes):
        rows = [pr[i] for pr in per_rank]
        for method in ("queued", "eager"):
            vals = [r[method] for r in rows if r[method] is not None]
            if not vals:
                continue
            secs = statistics.fmean(vals)  # mean over ranks of each rank's median, as nccl-tests reports
            bw = bus_gb_s(nbytes, world, secs)
            rec.add(
                {
                    "kind": "allreduce",
                    "world": world,
                    "bytes": nbytes,
                    "method": method,
                    "seconds": secs,
                    "seconds_ranks": [min(vals), max(vals)],
                    "bus_gb_s": bw,
                    "alg_gb_s": nbytes / secs / 1e9,
                    "n_inner": rows[0]["n_inner"] if method == "queued" else 1,
                    "spread": max(r["spread"] for r in rows) if method == "queued" else None,
                    "starved_samples": sum(r.get("starved_samples", 0) for r in rows)
                    if method == "queued"
                    else 0,
                    "error": ceiling_error("all-reduce bus bandwidth", bw, link, "GB/s"),
                }
            )


# ---------------------------------------------------------------- main
class NoCuda(RuntimeError):
    pass


def require_cuda() -> Any:
    """torch, or NoCuda with a message that says what is missing and what to do."""
    host = socket.gethostname()
    try:
        import torch
    except ImportError as exc:
        raise NoCuda(
            f"r1lab calibrate needs PyTorch with CUDA; {sys.executable} on {host} cannot import torch ({exc}). "
            "Run it on a GPU pod (r1lab calibrate --pod ...; the vllm/vllm-openai image has PyTorch) "
            "or on a CUDA machine with torch installed."
        ) from exc
    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        raise NoCuda(
            f"r1lab calibrate needs a CUDA GPU; torch {torch.__version__} on {host} sees none "
            f"(torch.cuda.is_available() is False, CUDA build {torch.version.cuda}). "
            "Run it on a GPU pod (r1lab calibrate --pod ...) or on a machine with an NVIDIA GPU and driver."
        )
    return torch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="new directory for records.jsonl and the profile")
    p.add_argument("--gpus", type=int, default=0, help="GPUs to use (default: all visible)")
    p.add_argument("--samples", type=int, default=15, help="timed samples per measurement (median reported)")
    p.add_argument("--quick", action="store_true", help="fewer shapes and sizes (a smoke run)")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["copy", "gemm", "kv", "allreduce"],
        help="leave a section out (repeatable)",
    )
    p.add_argument(
        "--dry-run-cpu",
        action="store_true",
        help="tests only: tiny shapes on the CPU (gloo for all-reduce); measures nothing real",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for k, v in SAFE_ENV.items():
        os.environ[k] = v
    if args.dry_run_cpu:
        import torch
    else:
        try:
            torch = require_cuda()
        except NoCuda as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    rec = Recorder(args.out)
    t_start = time.monotonic()

    def progress(text: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {text}", flush=True)

    dry = args.dry_run_cpu
    if dry:
        n_gpus = max(2, args.gpus or 2)
        dev = torch.device("cpu")
        device_name, l2 = "CPU (dry run)", 1 << 20
    else:
        n_gpus = min(args.gpus or torch.cuda.device_count(), torch.cuda.device_count())
        dev = torch.device("cuda", 0)
        torch.cuda.set_device(dev)
        props = torch.cuda.get_device_properties(0)
        device_name, l2 = props.name, int(getattr(props, "L2_cache_size", 64 << 20))
    gpu_key = identify_gpu(device_name)
    sheet = DATASHEET.get(gpu_key or "")
    date = _dt.datetime.now(_dt.UTC).date().isoformat()
    smi_rows = smi_query()
    topo = smi(["topo", "-m"]) or ""
    if topo:
        (args.out / "topology.txt").write_text(topo)
    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if not dry else None
    except (AttributeError, RuntimeError):
        nccl = None
    first = smi_rows[0] if smi_rows else {}
    rec.add(
        {
            "kind": "meta",
            "schema_version": SCHEMA_VERSION,
            "date": date,
            "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "device_name": device_name,
            "gpu": gpu_key,
            "gpus": n_gpus,
            "l2_bytes": l2,
            "dry_run": dry,
            "versions": {
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "nccl": nccl,
                "driver": first.get("driver_version"),
                "python": platform.python_version(),
            },
            "clocks_mhz": {
                "sm_at_start": _num(first.get("clocks.sm")),
                "mem": _num(first.get("clocks.mem")),
                "sm_max": _num(first.get("clocks.max.sm")),
                "mem_max": _num(first.get("clocks.max.mem")),
                "sm_application": _num(first.get("clocks.applications.graphics")),
            },
            "power_limit_w": _num(first.get("power.limit")),
            "datasheet": {"key": gpu_key, **(sheet or {})},
            "topology": topo.strip(),
            "smi": smi_rows,
            "env": {k: os.environ.get(k) for k in SAFE_ENV},
        }
    )
    progress(
        f"{n_gpus} x {device_name} ({gpu_key or 'no datasheet entry: rates unchecked'}), torch "
        f"{torch.__version__}, CUDA {torch.version.cuda}, NCCL {nccl}"
    )
    bench = Bench(torch, dev, 5 if dry else args.samples, dry)
    quick = args.quick or dry
    scale = 64 if dry else 1

    if "copy" not in args.skip:
        progress("copy bandwidth")
        for g in range(1 if dry else n_gpus):
            try:
                d = dev if dry else torch.device("cuda", g)
                sub = Bench(torch, d, bench.samples, dry)
                measure_copy(
                    torch, sub, rec, d, sheet["hbm_tb_s"] if sheet else None, (1 << 20) if dry else 1 << 30
                )
            except RuntimeError as exc:
                rec.error(f"copy gpu{g}", exc)
        try:
            measure_gpu_checks(torch, bench, rec, sheet, 1 if dry else n_gpus, 256 if dry else 8192)
        except RuntimeError as exc:
            rec.error("gpu_check", exc)
        if not dry:
            try:
                under = clocks_under_load(torch, dev)
            except RuntimeError as exc:
                rec.error("clocks_under_load", exc)
                under = []
            if under:
                rec.add({"kind": "smi_under_load", "smi": under})
    if "gemm" not in args.skip:
        shapes = gemm_shapes()
        if dry:
            shapes = [
                GemmShape(s.name, max(128, s.k // scale), max(16, s.n // scale), s.tp, s.max_m)
                for s in shapes[:4]
            ]
        m_values = (1, 16, 64) if dry else ((1, 64, 1024, 8192) if quick else M_VALUES)
        try:
            measure_gemms(torch, bench, rec, dev, l2, sheet, shapes, m_values, GEMM_DTYPES, progress)
        except Exception as exc:  # noqa: BLE001 - keep the other sections' measurements
            rec.error("gemm", exc)
    if "kv" not in args.skip:
        try:
            measure_kv_read(
                torch,
                bench,
                rec,
                dev,
                l2,
                sheet["hbm_tb_s"] if sheet else None,
                (1024, 4096) if dry else KV_TOKENS,
                ((4, 256),) if dry else KV_BATCHED,
                progress,
            )
        except Exception as exc:  # noqa: BLE001
            rec.error("kv_read", exc)
    if "allreduce" not in args.skip and n_gpus >= 2:
        sizes = [4096, 65536] if dry else list(ALLREDUCE_BYTES)
        worlds = [w for w in (2, 4, 8) if w <= n_gpus]
        if n_gpus not in worlds:
            worlds.append(n_gpus)
        if dry:
            worlds = [2]
        for world in worlds:
            progress(f"all-reduce over {world} GPUs, {len(sizes)} sizes")
            try:
                with tempfile.TemporaryDirectory(prefix="r1lab-allreduce-") as tmp:
                    measure_allreduce(
                        world,
                        sizes,
                        bench.samples,
                        rec,
                        sheet["link_gb_s"] if sheet else None,
                        Path(tmp),
                        dry,
                    )
            except Exception as exc:  # noqa: BLE001
                rec.error(f"allreduce w{world}", exc)
    # Clocks after the work, as found (never changed).
    if not dry:
        rec.add({"kind": "smi_after", "smi": smi_query()})
    profile = build_profile(rec.records)
    slug = profile_slug(gpu_key, device_name, n_gpus, date)
    (args.out / f"{slug}.json").write_text(json.dumps(profile, indent=1) + "\n")
    rec.close()
    bad = [r for r in rec.records if r.get("error") and not str(r["error"]).startswith("unsupported")]
    print_summary(rec.records, progress)
    progress(f"wrote {args.out / (slug + '.json')} and {rec.path}")
    if bad:
        print(
            f"error: {len(bad)} measurement(s) failed their check (see 'error' in {rec.path}):",
            file=sys.stderr,
        )
        for r in bad[:20]:
            print(
                f"  {r.get('kind')} {r.get('name', '')} {r.get('dtype', '')} m={r.get('m')}: {r['error']}",
                file=sys.stderr,
            )
        return 3
    return 0


def print_summary(records: list[dict[str, Any]], out: Callable[[str], None]) -> None:
    """A short table of the headline figures (the device tool returns the end of the output)."""
    ok = [r for r in records if not r.get("error")]
    for r in ok:
        if r["kind"] == "copy":
            out(f"copy gpu{r['gpu']}: {r['tb_s']:.2f} TB/s")
        if r["kind"] == "gpu_check":
            out(f"bf16 8192^3 gpu{r['gpu']}: {r['tflops']:.0f} TFLOPS")
    for dtype in GEMM_DTYPES:
        rows = [r for r in ok if r["kind"] == "gemm" and r["dtype"] == dtype]
        if rows:
            best = max(rows, key=lambda r: r["tflops"])
            big = [r["tflops"] for r in rows if r["m"] >= 4096]
            m1 = [r for r in rows if r["m"] == 1]
            line = (
                f"gemm {dtype}: max {best['tflops']:.0f} TFLOPS ({best['name']} tp{best['tp']} m={best['m']})"
            )
            line += f", median m>=4096 {median(big):.0f}" if big else ", m>=4096 not measured"
            if m1:
                line += f", m=1 best weight stream {max(r['weight_tb_s'] for r in m1):.2f} TB/s"
            else:  # a shape the library cannot run is skipped with its reason, never summarised as NaN
                why = sorted({str(r["error"]) for r in records if r.get("kind") == "gemm" and r.get("dtype") == dtype
                              and r.get("m") == 1 and str(r.get("error", "")).startswith("unsupported")})  # fmt: skip
                line += f", m=1 skipped ({why[0][:120] if why else 'not measured'})"
            out(line)
    for r in ok:
        if r["kind"] == "kv_read":
            out(f"kv_read {r['dtype']} {r['layout']} {r['tokens']} tok: {r['tb_s']:.2f} TB/s")
    for r in ok:
        if (
            r["kind"] == "allreduce"
            and r["method"] == "queued"
            and r["bytes"] in (4096, 14336, 1 << 20, 1 << 28)
        ):
            out(
                f"allreduce w{r['world']} {r['bytes']} B: {r['seconds'] * 1e6:.1f} us, {r['bus_gb_s']:.1f} GB/s bus"
            )


if __name__ == "__main__":
    sys.exit(main())
