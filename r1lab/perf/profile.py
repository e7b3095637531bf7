"""Hardware profiles: measured ceilings of one GPU type, and the efficiency constants derived from them.

File format (schema_version 1, docs/architecture.md "Hardware profiles"): `r1lab/data/profiles/<slug>.json`
(reference profiles, shipped) or `<run_dir>/calibration/<slug>.json` (written by `r1lab calibrate`):
  {"schema_version": 1, "gpu": <short name or RunPod id in r1lab.perf.hardware>, "device_name", "gpus",
   "measured": "YYYY-MM-DD", "versions": {"torch", "cuda", "driver"}, "clocks_mhz", "power_limit_w", "topology",
   "copy_tb_s", "kv_read_tb_s" (optional), "gemm": [{"dtype","name","m","k","n","seconds","tflops"}],
   "allreduce": [{"world","bytes","seconds","bus_gb_s"}], "source": free text}

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1lab.perf import hardware

PROFILE_DIR = Path(__file__).resolve().parent.parent / "data" / "profiles"
SCHEMA_VERSION = 1
COMPUTE_MIN_M = 256  # smallest GEMM m whose measured rate is taken as the compute roof
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
    clocks_mhz: dict[str, Any] = field(default_factory=dict)
    power_limit_w: float | None = None
    topology: str = ""
    source: str = ""
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        d = {"schema_version": SCHEMA_VERSION, **self.__dict__}
        d.pop("path")
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
        if g["dtype"] not in ("fp8", "bf16"):
            raise _err(path, f"gemm[{i}].dtype", f"expected 'fp8' or 'bf16', got {g['dtype']!r}")
        if not g["seconds"] > 0:
            raise _err(path, f"gemm[{i}].seconds", f"expected > 0, got {g['seconds']!r}")
    for i, a in enumerate(data.get("allreduce", [])):
        for k in ("world", "bytes", "seconds"):
            if k not in a:
                raise _err(path, f"allreduce[{i}].{k}", "required key is missing")
    if not data["copy_tb_s"] > 0:
        raise _err(path, "copy_tb_s", f"expected > 0, got {data['copy_tb_s']!r}")
    known = set(Profile.__dataclass_fields__) - {"path"}
    extra = set(data) - known - {"schema_version"}
    if extra:
        raise _err(path, sorted(extra)[0], f"unknown key; allowed: {sorted(known)}")
    return Profile(**{k: v for k, v in data.items() if k != "schema_version"}, path=path)


def load_profile(slug_or_path: str | Path) -> Profile:
    """A reference profile by slug (r1lab/data/profiles/<slug>.json) or any profile file by path."""
    p = Path(slug_or_path)
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
@dataclass(frozen=True)
class Efficiency:
    """Constants the performance model uses for one GPU type, each computed from a profile:

    - weight_tb_s: best weight-streaming rate of a small-m fp8 GEMM (m <= 64) in the profile;
    - kv_tb_s: KV-cache read rate (profile kv_read_tb_s, else its device-to-device copy rate);
    - fp8_curve / bf16_curve: (m, TFLOPS) with the best rate measured at each m >= 256 (the GEMM roofline's
      compute leg; flat below 256, where measured GEMMs are bound by weight streaming instead);
    - launch_floor_us: the smallest GEMM time measured (eager launch + a tiny kernel), which CUDA graphs remove;
    - ar_points: {world: [(bytes, seconds)]} measured all-reduces, less the launch floor;
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

    @classmethod
    def from_profile(cls, prof: Profile, target: hardware.GPU | str | None = None) -> Efficiency:
        src = hardware.gpu(prof.gpu)
        dst = src if target is None else (hardware.gpu(target) if isinstance(target, str) else target)
        bw_scale = dst.hbm_tb_s / src.hbm_tb_s
        fl_scale = dst.fp8_tflops / src.fp8_tflops
        fp8 = [g for g in prof.gemm if g["dtype"] == "fp8"]
        small = [g for g in fp8 if g["m"] <= 64]
        if not small:
            raise ValueError(
                f"{prof.path}: gemm: no fp8 record with m <= 64 to derive the weight-streaming rate"
            )

        def wbytes(g: dict[str, Any]) -> float:
            return g["k"] * g["n"] * (1 if g["dtype"] == "fp8" else 2)

        weight_tb_s = max(wbytes(g) / g["seconds"] / 1e12 for g in small) * bw_scale
        kv = (prof.kv_read_tb_s or prof.copy_tb_s) * bw_scale

        def curve(dtype: str, scale: float) -> tuple[tuple[float, float], ...]:
            best: dict[int, float] = {}
            for g in prof.gemm:
                if g["dtype"] != dtype:
                    continue
                tf = 2.0 * g["m"] * g["k"] * g["n"] / g["seconds"] / 1e12
                best[g["m"]] = max(best.get(g["m"], 0.0), tf)
            # below m=256 the measured rates are bound by weight streaming and launch (the other roofline
            # leg), not by compute: the compute leg uses the m >= 256 points and stays flat below them
            pts = sorted((m, tf) for m, tf in best.items() if m >= COMPUTE_MIN_M) or sorted(best.items())
            # monotone non-decreasing in m (a larger batch never computes slower per flop)
            out, run = [], 0.0
            for m, tf in pts:
                run = max(run, tf)
                out.append((float(m), run * scale))
            return tuple(out)

        floor_us = min(g["seconds"] for g in prof.gemm) * 1e6
        ar: dict[int, list[tuple[float, float]]] = {}
        for a in prof.allreduce:
            ar.setdefault(int(a["world"]), []).append(
                (float(a["bytes"]), max(a["seconds"] - floor_us * 1e-6, 2e-6))
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
            fp8_curve=curve("fp8", fl_scale),
            bf16_curve=curve("bf16", fl_scale),
            launch_floor_us=floor_us,
            ar_points={w: tuple(sorted(v)) for w, v in ar.items()},
            scaled_from=None if dst is src else src.short,
        )

    def tflops(self, m: float, dtype: str = "fp8") -> float:
        """Best GEMM rate at m rows, log-linear between measured m (clamped at the ends)."""
        pts = self.fp8_curve if dtype == "fp8" else self.bf16_curve
        if m <= pts[0][0]:
            return pts[0][1]
        if m >= pts[-1][0]:
            return pts[-1][1]
        ms = [p[0] for p in pts]
        i = bisect.bisect_right(ms, m)
        (m0, t0), (m1, t1) = pts[i - 1], pts[i]
        f = (math.log(m) - math.log(m0)) / (math.log(m1) - math.log(m0))
        return t0 + f * (t1 - t0)

    def gemm_s(
        self, m: float, k: float, n: float, weight_bytes: float | None = None, dtype: str = "fp8"
    ) -> float:
        """Roofline of one GEMM inside a CUDA graph: max(weights / streaming rate, flops / rate at m)."""
        if m <= 0:
            return 0.0
        wb = k * n * (1 if dtype == "fp8" else 2) if weight_bytes is None else weight_bytes
        return max(wb / (self.weight_tb_s * 1e12), 2.0 * m * k * n / (self.tflops(m, dtype) * 1e12))

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
        bs = [p[0] for p in pts]
        if nbytes <= bs[0]:
            return pts[0][1]
        if nbytes >= bs[-1]:
            b, t = pts[-1]
            return t * (nbytes / b) * ring
        i = bisect.bisect_right(bs, nbytes)
        (b0, t0), (b1, t1) = pts[i - 1], pts[i]
        f = (nbytes - b0) / (b1 - b0)
        t = t0 + f * (t1 - t0)
        lat = pts[0][1]
        return lat + (t - lat) * ring


# ---------------------------------------------------------------------------------------------------------
def _jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
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
    recs = _jsonl(d / "gemm.jsonl")
    if (d / "ar.jsonl").exists():
        recs += _jsonl(d / "ar.jsonl")
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
