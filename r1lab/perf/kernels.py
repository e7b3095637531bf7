"""Kernel times measured on the GPU itself (r1lab/calibrate/layer_bench.py), used where they beat the profile.

The reference profiles time block-FP8 GEMMs through cuBLAS, which at decode sizes (m <= 64) streams a thin TP8
shard's weights at 0.2-1.5 TB/s (and cannot run m=1). Engines pick a faster kernel per shape (split-K Triton,
CUTLASS, DeepGEMM); `layer_bench.py --tuned-only` measured the fastest of 15 split-K Triton configurations per shape
and m on the lent H200 (2026-12-01): that time, where measured, caps the profile's. The routed experts' grouped
GEMMs (a vLLM-style fused MoE: one launch per projection over a grid padded for every expert) were measured at the
TP8-slice shape (256 experts x 2I/8) and the EP8 whole-expert shape; their time is, by least squares over the
stream-bound points (m <= 64), `fixed + experts touched x expert bytes / rate`.

Other GPUs: times scale by the HBM datasheet ratio (the measured regimes are bandwidth-bound), stated as such.

Also kept: the prefill layer forwards' GEMM and attention times (`.prefill`, PREFILL_GROUPS), which the step model
uses as the rate prefill runs at (our block-FP8 Triton GEMMs ~600 TFLOPS, PyTorch SDPA; the profile's cuBLAS plateau
and the bf16 peak are ~1.9x faster), and the MLA decode kernel's batch-1 latency (`.mla_decode_floor_s`).

Public interface: `KernelTable.for_gpu(gpu_short) -> KernelTable | None`, `.gemm_s(m, k, n)`, `.moe_s(...)`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from importlib import resources
from typing import Any

from r1lab.perf import hardware
from r1lab.perf.curve import Curve


class TunedGemm:
    """One block-FP8 GEMM shape as `layer_bench.py --tuned-only` measured it: its time at m rows."""

    __slots__ = ("curve",)

    def __init__(self, curve: Curve) -> None:
        self.curve = curve

    def seconds(self, m: float) -> float | None:
        """Log-log between measured m, the smallest m's time below them, None beyond the largest."""
        c = self.curve
        xs = c.xs
        if m > xs[-1]:
            return None
        if m == xs[-1]:
            return c.ys[-1]
        if m <= xs[0]:
            return c.ys[0]
        return c.log_log(m)


_UNSEEN = TunedGemm(Curve(()))  # a memo's "not asked yet"

MEASURED = {"H200": "h200-kernels-2026-12-01.json"}
# the layer forward's prefill attention at longer prompts (r1lab/calibrate/prefill_attention_bench.py)
MEASURED_ATTENTION = {"H200": "h200-attention-prefill-2026-12-02.json"}
# parts of layer_bench's prefill forward that run the same algorithm as the engines' kernels (block-FP8 GEMMs; causal
# attention through PyTorch SDPA, a FlashAttention-2-class kernel): their measured time stands for the engines'.
# Left out: grouped top-k, sort/align, top-k sum and the per-group quantisation, which this script runs as unfused or
# slow kernels (0.26 TB/s) where engines fuse them; the model keeps its rooflines there.
PREFILL_GROUPS = {
    "gemm": (
        "GEMM fused q_a/kv_a",
        "GEMM q_b",
        "GEMM kv_b",
        "GEMM o_proj",
        "shared expert gate_up GEMM",
        "shared expert down GEMM",
        "router GEMM (bf16)",
    ),
    "attention": ("MLA prefill attention (SDPA, causal)",),
}
STREAM_MAX_M = (
    64  # measured points used for the MoE stream fit (above it the grouped GEMMs turn compute-bound)
)


@functools.lru_cache(maxsize=8)
def _load(name: str) -> dict[str, Any]:
    """A measured data file, read once per process (every GPU's table is made from the same H200 files; read
    only)."""
    return json.loads(resources.files("r1lab").joinpath("data", "kernels", name).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class MoeFit:
    """Grouped routed-expert GEMMs (gate_up + down) of one layout: fixed_s + touched x bytes / (tb_s 1e12)."""

    layout: str
    expert_bytes: float  # one expert's weights as one GPU holds them (fp8)
    fixed_s: float
    tb_s: float
    rows_s: tuple[
        tuple[float, float], ...
    ] = ()  # (token-expert rows, seconds of gate_up + down) at prefill sizes
    rows_curve: Curve = dataclasses.field(
        init=False, repr=False, compare=False
    )  # rows_s, ready to interpolate

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows_curve", Curve(self.rows_s))

    def seconds(self, touched: float, expert_bytes: float, scale: float) -> float:
        return self.fixed_s + touched * expert_bytes / (self.tb_s * scale * 1e12)


@dataclass(frozen=True)
class KernelTable:
    gpu: str
    source: str
    scale: float  # HBM ratio target / measured GPU
    flops_scale: float  # FP8 datasheet ratio target / measured GPU (for the compute-bound prefill points)
    gemm: dict[tuple[int, int], tuple[tuple[float, float], ...]]  # (k, n) -> ((m, seconds), ...)
    moe: tuple[MoeFit, ...]
    # one-prompt prefill layer forwards: config ("tp8" | "dp8ep8") -> ((m, {group: seconds}), ...), groups of
    # PREFILL_GROUPS (the dense GEMMs; the MLA prefill attention)
    prefill: dict[str, tuple[tuple[int, dict[str, float]], ...]] = dataclasses.field(default_factory=dict)
    # the absorbed-MLA decode kernel (split-KV over the SMs + log-sum-exp combine, two launches) at batch 1: its
    # latency, whatever the heads (16 or 128 per GPU measured alike), the least a decode step's attention takes
    mla_decode_floor_s: float | None = None
    # causal prefill attention measured alone: (heads, m, seconds), at sizes the layer forwards did not reach
    prefill_attention: tuple[tuple[int, int, float], ...] = ()
    # `gemm`'s shapes ready to interpolate, by (k, n) (None: unmeasured), kept as tuned_gemm is asked for them
    _gemm_curves: dict[tuple[float, float], TunedGemm | None] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _fits: dict[float, MoeFit] = dataclasses.field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def for_gpu(gpu_short: str) -> KernelTable | None:
        """The measured table for this GPU, or one measured on another Hopper part scaled by HBM bandwidth."""
        dst = hardware.gpu(gpu_short)
        name = MEASURED.get(dst.short)
        src_short = dst.short
        if name is None:
            if not dst.short.startswith(("H100", "H200")):
                return None
            src_short, name = next(iter(MEASURED.items()))
        data = _load(name)
        scale = dst.hbm_tb_s / hardware.gpu(src_short).hbm_tb_s
        gemm: dict[tuple[int, int], dict[float, float]] = {}
        for r in data["records"]:
            if r["kind"] == "gemm_tuned" and r.get("rel_error", 1.0) < 1e-2:
                d = gemm.setdefault((r["k"], r["n"]), {})
                d[r["m"]] = min(d.get(r["m"], math.inf), r["seconds"] / scale)  # same shape measured twice
        moe = []
        for layout, inter_split in (("tp8-slice", 8), ("ep8-whole", 1)):
            pts = [r for r in data["records"] if r["kind"] == "moe_tuned" and r["shape"] == layout]
            pts = [r for r in pts if r["m"] <= STREAM_MAX_M]
            if len(pts) < 2:
                continue
            eb = 3 * 7168 * 2048 / inter_split
            xs = [r["experts_touched"] * eb for r in pts]
            ys = [r["gate_up_s"] + r["down_s"] for r in pts]
            n = len(xs)
            mx, my = sum(xs) / n, sum(ys) / n
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
                (x - mx) ** 2 for x in xs
            )
            # prefill sizes: the layer forwards' grouped GEMMs (tp8: m tokens x 8 experts; ep8: 8 ranks' rows)
            cfg = {"tp8-slice": "tp8", "ep8-whole": "dp8ep8"}[layout]
            rows = sorted(
                [
                    (r["m"] * 8, r["parts"]["moe gate_up grouped GEMM"] + r["parts"]["moe down grouped GEMM"])
                    for r in data["records"]
                    if r["kind"] == "layer" and r["config"] == cfg and r["mode"] == "prefill" and "parts" in r
                ]
                + [  # the tuned decode sweep where it turns compute-bound (m >= 64)
                    (r["rows"], r["gate_up_s"] + r["down_s"])
                    for r in data["records"]
                    if r["kind"] == "moe_tuned" and r["shape"] == layout and r["m"] >= STREAM_MAX_M
                ]
            )
            moe.append(MoeFit(layout, eb, max(0.0, my - slope * mx), 1.0 / slope / 1e12, tuple(rows)))
        flops_scale = dst.fp8_tflops / hardware.gpu(src_short).fp8_tflops
        prefill: dict[str, list[tuple[int, dict[str, float]]]] = {}
        for r in data["records"]:
            if r["kind"] == "layer" and r["mode"] == "prefill" and "parts" in r:
                groups = {g: sum(r["parts"][k] for k in ks) / flops_scale for g, ks in PREFILL_GROUPS.items()}
                prefill.setdefault(r["config"], []).append((r["m"], groups))
        attention: list[tuple[int, int, float]] = []
        extra = MEASURED_ATTENTION.get(src_short)
        if extra and resources.files("r1lab").joinpath("data", "kernels", extra).is_file():
            layer_sizes = {(16, m) for m, _ in prefill.get("tp8", [])} | {
                (128, m) for m, _ in prefill.get("dp8ep8", [])
            }
            for r in _load(extra)["records"]:
                if r["kind"] == "attention_prefill" and (r["heads"], r["m"]) not in layer_sizes:
                    attention.append((r["heads"], r["m"], r["seconds"] / flops_scale))
        mla = [
            r["parts"]["MLA decode attention (split-KV + combine)"]
            for r in data["records"]
            if r["kind"] == "layer" and r["mode"] == "decode" and r["m"] == 1 and "parts" in r
        ]
        return KernelTable(
            dst.short,
            f"{data['source'].split(':')[0]} ({data['measured']})"
            + ("" if src_short == dst.short else f", scaled from {src_short} by HBM bandwidth x{scale:.2f}"),
            scale,
            flops_scale,
            {key: tuple(sorted(v.items())) for key, v in gemm.items()},
            tuple(moe),
            {cfg: tuple(sorted(v, key=lambda x: x[0])) for cfg, v in prefill.items()},
            min(mla) if mla else None,
            tuple(sorted(attention)),
        )

    def tuned_gemm(self, k: float, n: float) -> TunedGemm | None:
        """The block-FP8 GEMM (k, n) as measured, None if unmeasured (kept per shape)."""
        t = self._gemm_curves.get((k, n), _UNSEEN)
        if t is _UNSEEN:
            pts = self.gemm.get((round(k), round(n)))
            t = self._gemm_curves[(k, n)] = TunedGemm(Curve(pts)) if pts else None
        return t

    def gemm_s(self, m: float, k: float, n: float) -> float | None:
        """Measured time of the block-FP8 GEMM (k, n) at m rows (log-log between measured m), None if unmeasured
        or beyond the largest measured m."""
        t = self.tuned_gemm(k, n)
        return None if t is None else t.seconds(m)

    def moe_fit(self, expert_bytes: float) -> MoeFit | None:
        """The layout whose per-expert bytes are nearest (a TP-split slice or a whole expert), None without
        measurements (kept per expert_bytes)."""
        if not self.moe:
            return None
        fit = self._fits.get(expert_bytes)
        if fit is None:
            if len(self._fits) > 1024:  # (a handful of sizes in practice; bounded all the same)
                self._fits.clear()
            fit = self._fits[expert_bytes] = min(
                self.moe, key=lambda f: abs(math.log(f.expert_bytes / expert_bytes))
            )
        return fit

    def moe_rows_s(self, rows: float, expert_bytes: float) -> float | None:
        """Measured time of the routed experts' grouped GEMMs at `rows` token-expert rows (prefill sizes, log-log
        between measured points, proportional above), None below the smallest measured size."""
        fit = self.moe_fit(expert_bytes)
        if fit is None:
            return None
        c = fit.rows_curve
        if not c.xs or rows < c.xs[0]:
            return None
        scale = fit.expert_bytes / expert_bytes  # fewer bytes per expert slice: proportionally less work
        if rows >= c.xs[-1]:
            return c.ys[-1] * rows / c.xs[-1] / scale / self.flops_scale
        return c.log_log(rows) / scale / self.flops_scale

    def moe_s(self, touched: float, expert_bytes: float) -> float | None:
        """Stream time of the routed experts' grouped GEMMs: the fit of the layout whose per-expert bytes are
        nearest (a TP-split slice or a whole expert)."""
        fit = self.moe_fit(expert_bytes)
        return None if fit is None else fit.seconds(touched, expert_bytes, self.scale)
