"""Hardware profiles: measured ceilings of one GPU type, and the efficiency constants derived from them.

File format (schema_version 1, docs/architecture.md "Hardware profiles"): `r1lab/data/profiles/<slug>.json`
(reference profiles, shipped) or `<run_dir>/calibration/<slug>.json` (written by `r1lab calibrate`):
  {"schema_version": 1, "gpu": <short name or RunPod id in r1lab.perf.hardware>, "device_name", "gpus",
   "measured": "YYYY-MM-DD", "versions": {"torch", "cuda", "driver"}, "clocks_mhz", "power_limit_w", "topology",
   "copy_tb_s", "kv_read_tb_s" (optional), "kv_read_fp8_tb_s" (optional),
   "gemm": [{"dtype": "bf16"|"fp8"|"fp8_block","name","tp" (optional),"m","k","n","seconds","tflops"}],
   "allreduce": [{"world","bytes","seconds","bus_gb_s"}], "source": free text or an object,
   "timing": "eager"|"queued" (optional)}
`timing` says what the times are: "eager" (each operation timed alone, so small ones carry the Python/launch
latency, ~25-100 us) or "queued" (operations queued behind a spin kernel: GPU time only, as under CUDA graphs).
Absent, it is "queued" when the source text says the operations were queued (r1lab calibrate), else "eager".
`fp8` rows are per-tensor scaled (`torch._scaled_mm`); `fp8_block` rows use DeepSeek's block scales (1x128
activations, 128x128 weights), the kernels R1 actually runs: where a profile has them, the model uses them.

Public interface:
- `load_profile(slug_or_path)` -> `Profile` (validated; errors name file and key).
- `Profile.efficiency(gpu)` -> `Efficiency`: the one set of constants per hardware the performance model uses,
  computed (never fitted per result) from the profile; a profile of another GPU type is scaled by datasheet ratios.
- `profile_from_calibration_dir(dir, gpu, measured)` converts the JSON-lines measurements in
  ../shared/calibration/<name>/ into a Profile; `python -m r1lab.perf.profile DIR GPU OUT.json` writes one.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

from r1lab.perf import hardware
from r1lab.perf.curve import Curve

_first = itemgetter(0)  # a measured point's size: the bisect key of (size, value) points


PROFILE_DIR = Path(__file__).resolve().parent.parent / "data" / "profiles"
SCHEMA_VERSION = 1
COMPUTE_MIN_M = 256  # smallest GEMM m whose measured rate is taken as the compute roof
GEMM_DTYPES = ("fp8", "bf16", "fp8_block")
_REQUIRED = ("gpu", "device_name", "gpus", "measured", "versions", "copy_tb_s", "gemm")


@dataclass
class Profile:
    gpu: str
    device_name: str
    gpus: int
    measured: str
    versions: dict[str, Any]
    copy_tb_s: float
    gemm: list[dict[str, Any]]
    allreduce: list[dict[str, Any]] = field(default_factory=list)
    kv_read_tb_s: float | None = None
    kv_read_fp8_tb_s: float | None = None
    clocks_mhz: dict[str, Any] = field(default_factory=dict)
    power_limit_w: float | None = None
    topology: str = ""
    source: str | dict[str, Any] = ""
    timing: str | None = None
    path: str = ""

    @property
    def timing_method(self) -> str:
        """'queued' (GPU time only) or 'eager' (launch latency included), stated or read from the source."""
        if self.timing:
            return self.timing
        return "queued" if "queued" in str(self.source).lower() else "eager"

    def to_json(self) -> dict[str, Any]:
        d = {"schema_version": SCHEMA_VERSION, **self.__dict__}
        d.pop("path")
        if d["timing"] is None:
            d.pop("timing")
        return d

    def efficiency(self, gpu: hardware.GPU | str | None = None) -> Efficiency:
        return Efficiency.from_profile(self, gpu)


def _err(path: str, key: str, msg: str) -> ValueError:
    return ValueError(f"{path}: {key}: {msg}")


def parse_profile(data: dict[str, Any], path: str = "<profile>") -> Profile:
    if data.get("schema_version") != SCHEMA_VERSION:
        raise _err(path, "schema_version", f"expected {SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    for k in _REQUIRED:
        if k not in data:
            raise _err(path, k, "required key is missing (see docs/architecture.md 'Hardware profiles')")
    try:
        hardware.gpu(data["gpu"])
    except KeyError as exc:
        raise _err(path, "gpu", str(exc)) from None
    if not re.match(r"^\d{4}-\d{2}-\d{2}$", str(data["measured"])):
        raise _err(path, "measured", f"expected a date YYYY-MM-DD, got {data['measured']!r}")
    for i, g in enumerate(data["gemm"]):
        for k in ("dtype", "m", "k", "n", "seconds"):
            if k not in g:
                raise _err(path, f"gemm[{i}].{k}", "required key is missing")
        if g["dtype"] not in GEMM_DTYPES:
            raise _err(path, f"gemm[{i}].dtype", f"expected one of {list(GEMM_DTYPES)}, got {g['dtype']!r}")
        if "tp" in g and not (isinstance(g["tp"], int) and g["tp"] >= 1):
            raise _err(path, f"gemm[{i}].tp", f"expected an integer >= 1, got {g['tp']!r}")
        if not g["seconds"] > 0:
            raise _err(path, f"gemm[{i}].seconds", f"expected > 0, got {g['seconds']!r}")
    for i, a in enumerate(data.get("allreduce", [])):
        for k in ("world", "bytes", "seconds"):
            if k not in a:
                raise _err(path, f"allreduce[{i}].{k}", "required key is missing")
    if data.get("timing") not in (None, "eager", "queued"):
        raise _err(path, "timing", f"expected 'eager' or 'queued', got {data['timing']!r}")
    if not data["copy_tb_s"] > 0:
        raise _err(path, "copy_tb_s", f"expected > 0, got {data['copy_tb_s']!r}")
    known = set(Profile.__dataclass_fields__) - {"path"}
    extra = set(data) - known - {"schema_version"}
    if extra:
        raise _err(path, sorted(extra)[0], f"unknown key; allowed: {sorted(known)}")
    return Profile(**{k: v for k, v in data.items() if k != "schema_version"}, path=path)


def load_profile(slug_or_path: str | Path) -> Profile:
    """A reference profile by slug (r1lab/data/profiles/<slug>.json), any profile file by path, or the raw
    measurements of `r1lab calibrate` (`*.records.jsonl`, block-scaled FP8 GEMMs included)."""
    p = Path(slug_or_path)
    if p.name.endswith(".records.jsonl"):
        return profile_from_records(p)
    if not p.suffix:
        p = PROFILE_DIR / f"{slug_or_path}.json"
    if not p.exists():
        known = sorted(x.stem for x in PROFILE_DIR.glob("*.json"))
        raise FileNotFoundError(f"{p}: no such hardware profile; reference profiles: {known}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None
    return parse_profile(data, str(p))


def reference_profiles() -> list[str]:
    return sorted(x.stem for x in PROFILE_DIR.glob("*.json"))


# ---------------------------------------------------------------------------------------------------------
class GemmShape:
    """`Efficiency.gemm_s` of one (k, n, dtype) shape, as a function of m: what does not depend on m worked out
    once (the measured times of the exact shape, the weights' streaming time, the rate curve)."""

    __slots__ = ("k", "n", "times", "stream_s", "rate")

    def __init__(self, k: float, n: float, times: Curve | None, stream_s: float, rate: Curve) -> None:
        self.k, self.n, self.times, self.stream_s, self.rate = k, n, times, stream_s, rate

    def seconds(self, m: float) -> float:
        """The measured time of the shape where a queued profile of this GPU has it (log-log between measured m,
        the smallest m's time below them, proportional to m above the largest: compute-bound there), else the
        roofline max(weights / streaming rate, flops / rate at m)."""
        if m <= 0:
            return 0.0
        times = self.times
        if times is not None:
            xs = times.xs
            if m <= xs[0]:
                return times.ys[0]
            if m >= xs[-1]:
                return times.ys[-1] * m / xs[-1]
            return times.log_log(m)
        return max(self.stream_s, 2.0 * m * self.k * self.n / (self.rate.log_lin(m) * 1e12))


@dataclass(frozen=True)
class Efficiency:
    """Constants the performance model uses for one GPU type, each computed from a profile:

    - fp8_kind: which FP8 rows the FP8 constants come from: "fp8_block" (DeepSeek's 128x128 block scales, the
      kernels R1 runs) where the profile measured them, else "fp8" (per-tensor scales);
    - weight_tb_s: best weight-streaming rate of a small-m FP8 GEMM (m <= 64) in the profile;
    - kv_tb_s: KV-cache read rate (profile kv_read_tb_s, else its device-to-device copy rate);
    - fp8_curve / bf16_curve: (m, TFLOPS) with the best rate measured at each m >= 256 over all shapes (the GEMM
      roofline's compute leg; flat below 256, where measured GEMMs are bound by weight streaming instead);
    - shapes: {(dtype, k, n): ((m, TFLOPS), ...)} the rate measured for that exact shape at m >= 256: a TP-sharded
      or thin GEMM (small k or n) runs far below the best large shape, so where the profile measured the shape
      the model asks for, its own curve is used instead of the all-shape best (only for profiles of this GPU);
    - timing: the profile's timing method ("eager" or "queued", see the module docstring);
    - shape_times: {(dtype, k, n): ((m, seconds), ...)} every measured time of that exact shape, kept only for
      queued profiles of this GPU: there a measured GEMM is the GPU time of that kernel (its small-m time carries
      the per-kernel floor a tiny TP8 shard really has, ~4.5 us), so `gemm_s` uses it directly;
    - launch_floor_us: the smallest GEMM time measured (eager: launch + a tiny kernel, which CUDA graphs remove;
      queued: the fastest kernel);
    - ar_points: {world: [(bytes, seconds)]} measured all-reduces (less the launch floor for eager profiles);
    - scale_*: datasheet ratios when the profile is of another GPU type (1.0 when it is the same).
    """

    gpu: str
    profile: str
    weight_tb_s: float
    kv_tb_s: float
    fp8_curve: tuple[tuple[float, float], ...]
    bf16_curve: tuple[tuple[float, float], ...]
    launch_floor_us: float
    ar_points: dict[int, tuple[tuple[float, float], ...]]
    scaled_from: str | None = None
    ar_from: str | None = None  # profile the all-reduce curve was borrowed from, if not this one
    fp8_kind: str = "fp8"
    shapes: dict[tuple[str, int, int], tuple[tuple[float, float], ...]] = field(default_factory=dict)
    timing: str = "eager"
    shape_times: dict[tuple[str, int, int], tuple[tuple[float, float], ...]] = field(default_factory=dict)
    # interpolation-ready curves of the fields above, kept by what asked for them (rate_curve, gemm_shape)
    _curves: dict[tuple[Any, ...], Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_profile(cls, prof: Profile, target: hardware.GPU | str | None = None) -> Efficiency:
        src = hardware.gpu(prof.gpu)
        dst = src if target is None else (hardware.gpu(target) if isinstance(target, str) else target)
        bw_scale = dst.hbm_tb_s / src.hbm_tb_s
        fl_scale = dst.fp8_tflops / src.fp8_tflops

        def rows(dtype: str) -> list[dict[str, Any]]:
            return [g for g in prof.gemm if g["dtype"] == dtype]

        # block-scaled FP8 where the profile covers both regimes (small m and the compute roof), else per-tensor
        block = rows("fp8_block")
        use_block = any(g["m"] <= 64 for g in block) and any(g["m"] >= COMPUTE_MIN_M for g in block)
        fp8_kind = "fp8_block" if use_block else "fp8"
        small = [g for g in rows(fp8_kind) if g["m"] <= 64]
        if not small:
            raise ValueError(
                f"{prof.path}: gemm: no fp8 record with m <= 64 to derive the weight-streaming rate"
            )

        def wbytes(g: dict[str, Any]) -> float:
            return g["k"] * g["n"] * (2 if g["dtype"] == "bf16" else 1)

        weight_tb_s = max(wbytes(g) / g["seconds"] / 1e12 for g in small) * bw_scale
        kv = (prof.kv_read_tb_s or prof.copy_tb_s) * bw_scale

        def tf(g: dict[str, Any]) -> float:
            return 2.0 * g["m"] * g["k"] * g["n"] / g["seconds"] / 1e12

        def monotone(pts: Sequence[tuple[float, float]], scale: float) -> tuple[tuple[float, float], ...]:
            # non-decreasing in m (a larger batch never computes slower per flop)
            out, run = [], 0.0
            for m, t in sorted(pts):
                run = max(run, t)
                out.append((float(m), run * scale))
            return tuple(out)

        def curve(dtype: str, scale: float) -> tuple[tuple[float, float], ...]:
            best: dict[int, float] = {}
            for g in rows(dtype):
                best[g["m"]] = max(best.get(g["m"], 0.0), tf(g))
            # below m=256 the measured rates are bound by weight streaming and launch (the other roofline
            # leg), not by compute: the compute leg uses the m >= 256 points and stays flat below them
            pts = [(m, t) for m, t in best.items() if m >= COMPUTE_MIN_M] or list(best.items())
            return monotone(pts, scale)

        def shape_key(g: dict[str, Any]) -> tuple[str, int, int]:
            return ("bf16" if g["dtype"] == "bf16" else "fp8", int(g["k"]), int(g["n"]))

        # per-shape data: the chosen FP8 kind's rows; a shape it lacks (cuBLAS refuses block scales when
        # k/128 is not a multiple of 4) keeps its per-tensor rows, a lower bound for the block-scaled kernel
        chosen = {shape_key(g) for g in rows(fp8_kind)}
        shape_rows = [
            g
            for g in prof.gemm
            if g["dtype"] in ("bf16", fp8_kind) or (g["dtype"] == "fp8" and shape_key(g) not in chosen)
        ]
        shapes: dict[tuple[str, int, int], tuple[tuple[float, float], ...]] = {}
        if dst is src:
            per: dict[tuple[str, int, int], dict[int, float]] = {}
            for g in shape_rows:
                if g["m"] < COMPUTE_MIN_M:
                    continue
                d = per.setdefault(shape_key(g), {})
                d[g["m"]] = max(d.get(g["m"], 0.0), tf(g))
            shapes = {key: monotone(list(d.items()), 1.0) for key, d in per.items()}
        timing = prof.timing_method
        shape_times: dict[tuple[str, int, int], tuple[tuple[float, float], ...]] = {}
        if dst is src and timing == "queued":
            per_t: dict[tuple[str, int, int], dict[int, float]] = {}
            for g in shape_rows:
                d = per_t.setdefault(shape_key(g), {})
                d[g["m"]] = min(d.get(g["m"], math.inf), float(g["seconds"]))
            for key, d in per_t.items():  # a larger m never finishes sooner: running minimum from the right
                pts = sorted(d.items())
                for i in range(len(pts) - 2, -1, -1):
                    pts[i] = (pts[i][0], min(pts[i][1], pts[i + 1][1]))
                shape_times[key] = tuple((float(m), t) for m, t in pts)

        floor_us = min(g["seconds"] for g in prof.gemm) * 1e6
        launch_us = floor_us if timing == "eager" else 0.0  # queued times carry no launch latency
        ar: dict[int, list[tuple[float, float]]] = {}
        for a in prof.allreduce:
            ar.setdefault(int(a["world"]), []).append(
                (float(a["bytes"]), max(a["seconds"] - launch_us * 1e-6, 2e-6))
            )
        for v in ar.values():  # a larger message never finishes sooner: running minimum from the right
            v.sort()
            for i in range(len(v) - 2, -1, -1):
                v[i] = (v[i][0], min(v[i][1], v[i + 1][1]))
        return cls(
            gpu=dst.short,
            profile=Path(prof.path).stem or prof.gpu,
            weight_tb_s=weight_tb_s,
            kv_tb_s=kv,
            fp8_curve=curve(fp8_kind, fl_scale),
            bf16_curve=curve("bf16", fl_scale),
            launch_floor_us=floor_us,
            ar_points={w: tuple(sorted(v)) for w, v in ar.items()},
            scaled_from=None if dst is src else src.short,
            fp8_kind=fp8_kind,
            shapes=shapes,
            timing=timing,
            shape_times=shape_times,
        )

    def rate_curve(self, dtype: str = "fp8", k: float | None = None, n: float | None = None) -> Curve:
        """The GEMM rate curve `tflops` interpolates: this exact (k, n) shape's where the profile measured it, else
        the best over all shapes (kept)."""
        key = ("rate", dtype, k, n)
        c = self._curves.get(key)
        if c is None:
            pts = self.shapes.get((dtype, round(k), round(n))) if k is not None and n is not None else None
            c = self._curves[key] = Curve(pts or (self.fp8_curve if dtype == "fp8" else self.bf16_curve))
        return c

    def tflops(self, m: float, dtype: str = "fp8", k: float | None = None, n: float | None = None) -> float:
        """GEMM rate at m rows: the measured curve of this exact (k, n) shape where the profile has it, else the
        best rate over all shapes, log-linear between measured m (clamped at the ends)."""
        return self.rate_curve(dtype, k, n).log_lin(m)

    def gemm_shape(
        self, k: float, n: float, dtype: str = "fp8", weight_bytes: float | None = None
    ) -> GemmShape:
        """One GEMM shape's `gemm_s` as a function of m alone (kept per shape)."""
        key = ("gemm", dtype, k, n, weight_bytes)
        g = self._curves.get(key)
        if g is None:
            times = None
            if weight_bytes is None and self.shape_times:
                pts = self.shape_times.get((dtype, round(k), round(n)))
                times = Curve(pts) if pts else None
            wb = k * n * (1 if dtype == "fp8" else 2) if weight_bytes is None else weight_bytes
            g = self._curves[key] = GemmShape(
                k, n, times, wb / (self.weight_tb_s * 1e12), self.rate_curve(dtype, k, n)
            )
        return g

    def gemm_s(
        self, m: float, k: float, n: float, weight_bytes: float | None = None, dtype: str = "fp8"
    ) -> float:
        """Roofline of one GEMM inside a CUDA graph: max(weights / streaming rate, flops / rate at m); a queued
        profile's measured time of the exact shape where it has one (GemmShape)."""
        return self.gemm_shape(k, n, dtype, weight_bytes).seconds(m)

    def allreduce_s(self, nbytes: float, world: int) -> float | None:
        """Measured all-reduce (launch floor removed), interpolated in bytes; rescaled for another world size
        by the ring factor 2(n-1)/n. None when the profile has no all-reduce data."""
        if world <= 1:
            return 0.0
        if not self.ar_points:
            return None
        w = world if world in self.ar_points else max(self.ar_points)
        pts = self.ar_points[w]
        ring = (2 * (world - 1) / world) / (2 * (w - 1) / w)
        if nbytes <= pts[0][0]:
            return pts[0][1]
        if nbytes >= pts[-1][0]:
            b, t = pts[-1]
            return t * (nbytes / b) * ring
        i = bisect.bisect_right(pts, nbytes, key=_first)
        (b0, t0), (b1, t1) = pts[i - 1], pts[i]
        f = (nbytes - b0) / (b1 - b0)
        t = t0 + f * (t1 - t0)
        lat = pts[0][1]
        return lat + (t - lat) * ring


# ---------------------------------------------------------------------------------------------------------
def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSON-lines file; a bad line is an error naming file and line."""
    out = []
    path = Path(path)
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not valid JSON ({exc})") from None
    return out


def profile_from_calibration_dir(directory: str | Path, gpu: str, measured: str, source: str = "") -> Profile:
    """Convert ../shared/calibration/<name>/ (gemm.jsonl, ar.jsonl, smi.txt) into a Profile."""
    d = Path(directory)
    recs = read_jsonl(d / "gemm.jsonl")
    if (d / "ar.jsonl").exists():
        recs += read_jsonl(d / "ar.jsonl")
    dev = next((r for r in recs if r.get("kind") == "device"), {})
    copy = next((r for r in recs if r.get("kind") == "hbm_copy"), None)
    if copy is None:
        raise ValueError(f"{d}/gemm.jsonl: no 'hbm_copy' record")
    smi = (d / "smi.txt").read_text(encoding="utf-8") if (d / "smi.txt").exists() else ""
    clocks = {"sm_max": int(m)} if (m := (re.findall(r"(\d+) MHz", smi) or [None])[0]) else {}
    power = re.findall(r"([\d.]+) W", smi)
    topo = smi.split("\n", 1 + dev.get("count", 1))[-1] if "GPU0" in smi else ""
    gemm = [
        {k: r[k] for k in ("dtype", "name", "m", "k", "n", "seconds", "tflops")}
        for r in recs
        if r.get("kind") == "gemm"
    ]
    ar = [
        {k: r[k] for k in ("world", "bytes", "seconds", "bus_gb_s")}
        for r in recs
        if r.get("kind") == "allreduce"
    ]
    torch_v = dev.get("torch", "")
    cuda = torch_v.split("+cu")[-1] if "+cu" in torch_v else ""
    cuda = f"{cuda[:-1]}.{cuda[-1]}" if cuda else ""
    prof = Profile(
        gpu=hardware.gpu(gpu).short,
        device_name=dev.get("name", ""),
        gpus=int(dev.get("count", 1)),
        measured=measured,
        versions={"torch": torch_v, "cuda": cuda, "driver": ""},
        copy_tb_s=float(copy["tb_s"]),
        gemm=gemm,
        allreduce=ar,
        clocks_mhz=clocks,
        power_limit_w=float(power[0]) if power else None,
        topology=topo.strip(),
        source=source or f"converted from {d}",
    )
    parse_profile(prof.to_json(), str(d))  # same validation as a loaded file
    return prof


def profile_from_records(path: str | Path) -> Profile:
    """A profile from the records `r1lab calibrate` writes (gpu_bench.py, one JSON object per measurement),
    keeping every GEMM that ran without error, block-scaled FP8 (`fp8_block`) included; times are queued."""
    p = Path(path)
    recs = [r for r in read_jsonl(p) if not r.get("error")]
    meta = next((r for r in recs if r.get("kind") == "meta"), None)
    if meta is None:
        raise ValueError(f"{p}: no 'meta' record (not a records file of r1lab calibrate)")
    copies = sorted(r["tb_s"] for r in recs if r.get("kind") == "copy")
    if not copies:
        raise ValueError(f"{p}: no 'copy' record")
    kv = [
        r for r in recs if r.get("kind") == "kv_read" and r.get("layout") == "flat" and r["dtype"] == "bf16"
    ]
    gemm = [
        {k: r[k] for k in ("dtype", "name", "tp", "m", "k", "n", "seconds", "tflops")}
        for r in recs
        if r.get("kind") == "gemm" and r.get("dtype") in GEMM_DTYPES
    ]
    ar = [
        {k: r[k] for k in ("world", "bytes", "seconds", "bus_gb_s")}
        for r in recs
        if r.get("kind") == "allreduce" and r.get("method", "queued") == "queued"
    ]
    raw_versions = meta.get("versions")
    versions = raw_versions if isinstance(raw_versions, dict) else {}
    prof = Profile(
        gpu=hardware.gpu(meta.get("gpu") or meta["device_name"]).short,
        device_name=meta["device_name"],
        gpus=int(meta.get("gpus", 1)),
        measured=meta["date"],
        versions=versions,
        copy_tb_s=copies[len(copies) // 2],
        gemm=gemm,
        allreduce=ar,
        kv_read_tb_s=max(kv, key=lambda r: r["tokens"])["tb_s"] if kv else None,
        power_limit_w=meta.get("power_limit_w"),
        source=f"converted from {p} (r1lab calibrate records; block-scaled FP8 GEMMs kept)",
        timing="queued",
        path=str(p),
    )
    parse_profile(prof.to_json(), str(p))  # same validation as a loaded file
    return prof


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m r1lab.perf.profile", description=__doc__.split("\n")[0])
    ap.add_argument("directory")
    ap.add_argument("gpu")
    ap.add_argument("out")
    ap.add_argument("--measured", required=True, help="date of the measurement, YYYY-MM-DD")
    ap.add_argument("--source", default="")
    a = ap.parse_args(argv)
    prof = profile_from_calibration_dir(a.directory, a.gpu, a.measured, a.source)
    Path(a.out).write_text(json.dumps(prof.to_json(), indent=1) + "\n", encoding="utf-8")
    print(
        f"wrote {a.out}: {prof.device_name} x{prof.gpus}, {len(prof.gemm)} GEMMs, {len(prof.allreduce)} all-reduces"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
