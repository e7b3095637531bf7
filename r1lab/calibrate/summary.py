"""Headline figures of a calibration run, measured against the datasheet and against earlier measurements.

`headline(records)` reduces records.jsonl (written by gpu_bench.py) to the figures a person compares;
`vs_reference(records, reference)` sets them beside the JSON-lines measurements in ../shared/calibration/<name>/
(same layer names, unsharded shapes); `lines(...)` formats both as a short plain-text table.
"""

from __future__ import annotations

import statistics
from typing import Any

from r1lab.calibrate.gpu_bench import DATASHEET
from r1lab.perf.profile import read_jsonl  # noqa: F401 - re-exported: calibrate.cli and the docs use it here


def _ok(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("kind") == kind and not r.get("error")]


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def headline(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Copy TB/s, GEMM plateau and small-m figures per dtype, KV read, all-reduce floor and bus bandwidth."""
    meta = next((r for r in records if r.get("kind") == "meta"), {})
    sheet = DATASHEET.get(meta.get("gpu") or "", {})
    out: dict[str, Any] = {
        "device": meta.get("device_name"),
        "gpu": meta.get("gpu"),
        "gpus": meta.get("gpus"),
        "datasheet": sheet,
        "clocks_mhz": meta.get("clocks_mhz", {}),
        "power_limit_w": meta.get("power_limit_w"),
    }
    copies = [r["tb_s"] for r in _ok(records, "copy")]
    out["copy_tb_s"] = _med(copies)
    out["square_bf16_tflops"] = [round(r["tflops"], 1) for r in _ok(records, "gpu_check")]
    gemm: dict[str, Any] = {}
    for dtype in ("bf16", "fp8", "fp8_block"):
        rows = _ok(records, "gemm")
        rows = [r for r in rows if r["dtype"] == dtype]
        if not rows:
            continue
        big = [r["tflops"] for r in rows if r["m"] >= 4096]
        m1 = [r for r in rows if r["m"] == 1]
        m64 = [r["tflops"] for r in rows if r["m"] == 64]
        gemm[dtype] = {
            "plateau_tflops_median_m_ge_4096": _med(big),
            "max_tflops": max(r["tflops"] for r in rows),
            "median_tflops_m64": _med(m64),
            "m1_weight_tb_s_max": max((r["weight_tb_s"] for r in m1), default=None),
            "m1_weight_tb_s_median": _med([r["weight_tb_s"] for r in m1]),
            "fastest_us": min(r["seconds"] for r in rows) * 1e6,
            "median_eager_over_queued": _med(
                [r["eager_seconds"] / r["seconds"] for r in rows if r["m"] <= 64]
            ),
            "failed": sum(
                1 for r in records if r.get("kind") == "gemm" and r["dtype"] == dtype and r.get("error")
            ),
        }
    out["gemm"] = gemm
    kv = _ok(records, "kv_read")
    out["kv_read_tb_s"] = {f"{r['dtype']}-{r['layout']}-{r['tokens']}": round(r["tb_s"], 3) for r in kv}
    ar: dict[str, Any] = {}
    for world in sorted({r["world"] for r in _ok(records, "allreduce")}):
        rows = [r for r in _ok(records, "allreduce") if r["world"] == world]
        q = [r for r in rows if r["method"] == "queued"]
        e = [r for r in rows if r["method"] == "eager"]
        largest = max(q, key=lambda r: r["bytes"]) if q else None
        ar[str(world)] = {
            "floor_us_queued": min(r["seconds"] for r in q) * 1e6 if q else None,
            "floor_us_eager": min(r["seconds"] for r in e) * 1e6 if e else None,
            "largest_bytes": largest["bytes"] if largest else None,
            "bus_gb_s_largest": largest["bus_gb_s"] if largest else None,
            "r1_hidden_us": {
                str(r["bytes"] // (7168 * 2)): round(r["seconds"] * 1e6, 1)
                for r in q
                if r["bytes"] % (7168 * 2) == 0
            },
        }
    out["allreduce"] = ar
    return out


def vs_reference(records: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios to an earlier run's records (shared/calibration format: kinds hbm_copy, gemm, allreduce).
    GEMMs are matched on (dtype, name, m) at full (tp=1) shapes; all-reduces on (world, bytes)."""
    ref_copy = [r["tb_s"] for r in reference if r.get("kind") == "hbm_copy"]
    ours = _med([r["tb_s"] for r in _ok(records, "copy")])
    ref_g = {(r["dtype"], r["name"], r["m"]): r for r in reference if r.get("kind") == "gemm"}
    ratios: dict[str, list[float]] = {}
    for r in _ok(records, "gemm"):
        key = (r["dtype"], "q_a_proj" if r["name"] == "qkv_a_proj" else r["name"], r["m"])
        if r["tp"] != 1 or key not in ref_g or r["name"] == "qkv_a_proj":
            continue  # qkv_a_proj (fused 2112 columns) is not the reference's q_a_proj (1536)
        band = "m<=64" if r["m"] <= 64 else ("m>=4096" if r["m"] >= 4096 else "64<m<4096")
        ratios.setdefault(f"{r['dtype']} {band}", []).append(ref_g[key]["seconds"] / r["seconds"])
    ref_ar = {(r["world"], r["bytes"]): r for r in reference if r.get("kind") == "allreduce"}
    ar: dict[str, list[tuple[int, float]]] = {}
    for r in _ok(records, "allreduce"):
        ref = ref_ar.get((r["world"], r["bytes"]))
        if ref:
            ar.setdefault(r["method"], []).append((r["bytes"], ref["seconds"] / r["seconds"]))
    return {
        "copy_ratio": ours / ref_copy[0] if ours and ref_copy else None,
        "gemm_speedup_median": {k: statistics.median(v) for k, v in sorted(ratios.items())},
        "gemm_matched": sum(len(v) for v in ratios.values()),
        "allreduce_speedup": {k: sorted(v) for k, v in ar.items()},
    }


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def lines(h: dict[str, Any], ref: dict[str, Any] | None = None) -> list[str]:
    """A short table: measured, datasheet, and measured/datasheet."""
    sheet = h.get("datasheet") or {}
    out = [f"{h['gpus']} x {h['device']} ({h['gpu'] or 'no datasheet entry'})"]

    def row(name: str, value: float | None, ceiling: float | None, unit: str) -> None:
        pct = f"{100 * value / ceiling:5.1f}% of datasheet {ceiling:g}" if value and ceiling else ""
        out.append(f"  {name:<34} {_f(value):>9} {unit:<7} {pct}")

    row("copy (read+write)", h.get("copy_tb_s"), sheet.get("hbm_tb_s"), "TB/s")
    kv = h.get("kv_read_tb_s", {})
    for key in sorted(kv, key=lambda k: (k.split("-")[0], k.split("-")[1], int(k.split("-")[2]))):
        if key.endswith(("-2097152", "-524288")):
            row(f"KV read {key}", kv[key], sheet.get("hbm_tb_s"), "TB/s")
    for dtype, g in h.get("gemm", {}).items():
        ceiling = sheet.get("bf16_tflops" if dtype == "bf16" else "fp8_tflops")
        row(
            f"{dtype} GEMM plateau (m>=4096, median)", g["plateau_tflops_median_m_ge_4096"], ceiling, "TFLOPS"
        )
        row(f"{dtype} GEMM best", g["max_tflops"], ceiling, "TFLOPS")
        row(f"{dtype} m=64 median", g["median_tflops_m64"], ceiling, "TFLOPS")
        row(f"{dtype} m=1 weight stream (best)", g["m1_weight_tb_s_max"], sheet.get("hbm_tb_s"), "TB/s")
        out.append(
            f"  {dtype + ' small-m eager/queued time':<34} {_f(g['median_eager_over_queued']):>9} x       "
            f"(Python launch overhead a CUDA graph removes); fastest {g['fastest_us']:.1f} us; {g['failed']} failed"
        )
    for world, a in h.get("allreduce", {}).items():
        out.append(
            f"  all-reduce over {world}: floor {_f(a['floor_us_queued'], '.1f')} us queued "
            f"({_f(a['floor_us_eager'], '.1f')} us eager), {_f(a['bus_gb_s_largest'], '.0f')} GB/s bus at "
            f"{(a['largest_bytes'] or 0) >> 20} MiB (datasheet link {sheet.get('link_gb_s', 'n/a')} GB/s one way)"
        )
    if ref:
        out.append(
            f"  vs reference: copy x{_f(ref['copy_ratio'], '.3f')}; GEMM reference time / ours (median):"
        )
        for k, v in ref["gemm_speedup_median"].items():
            out.append(f"    {k:<20} {v:.2f}")
        for method, pairs in ref["allreduce_speedup"].items():
            small = [r for b, r in pairs if b <= 1 << 20]
            big = [r for b, r in pairs if b >= 1 << 26]
            out.append(
                f"    all-reduce {method}: reference/ours {_f(_med(small))} (<= 1 MiB), {_f(_med(big))} (>= 64 MiB)"
            )
    return out
