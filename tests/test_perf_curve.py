"""perf.curve.Curve interpolates bit for bit as the per-call expressions it replaced (the logs and segment
differences worked out once are the same floats), on the reference profile's and kernel table's own curves."""

from __future__ import annotations

import bisect
import math
import random

from r1lab.perf.curve import Curve
from r1lab.perf.kernels import KernelTable
from r1lab.perf.profile import load_profile

Points = tuple[tuple[float, float], ...]


def _log_lin(pts: Points, x: float) -> float:
    """Efficiency._interp as it was: linear in y over log x, clamped."""
    if x <= pts[0][0]:
        return pts[0][1]
    if x >= pts[-1][0]:
        return pts[-1][1]
    i = bisect.bisect_right([p for p, _ in pts], x)
    (m0, t0), (m1, t1) = pts[i - 1], pts[i]
    f = (math.log(x) - math.log(m0)) / (math.log(m1) - math.log(m0))
    return t0 + f * (t1 - t0)


def _log_log(pts: Points, x: float) -> float:
    """The measured-time interpolation as it was (x strictly inside the points)."""
    i = bisect.bisect_right([p for p, _ in pts], x)
    (m0, t0), (m1, t1) = pts[i - 1], pts[i]
    f = (math.log(x) - math.log(m0)) / (math.log(m1) - math.log(m0))
    return math.exp(math.log(t0) + f * (math.log(t1) - math.log(t0)))


def _curves() -> list[Points]:
    eff = load_profile("h200-x4-2026-11-27").efficiency()
    kt = KernelTable.for_gpu("H200")
    assert kt is not None
    out = [eff.fp8_curve, eff.bf16_curve, *eff.shapes.values(), *eff.shape_times.values(), *kt.gemm.values()]
    out += [fit.rows_s for fit in kt.moe if fit.rows_s]
    return [tuple((float(x), float(y)) for x, y in pts) for pts in out if len(pts) >= 2]


def test_curve_interpolates_bit_for_bit_as_the_points_do() -> None:
    rng = random.Random(18)
    curves = _curves()
    assert len(curves) > 20
    for pts in curves:
        c = Curve(pts)
        lo, hi = pts[0][0], pts[-1][0]
        xs = [lo, hi, *(x for x, _ in pts), lo / 2, hi * 2]
        xs += [math.exp(rng.uniform(math.log(lo), math.log(hi))) for _ in range(200)]
        xs += [float(rng.randint(int(lo), int(hi))) for _ in range(50)]
        for x in xs:
            assert c.log_lin(x) == _log_lin(pts, x), (pts, x)
            if lo < x < hi:
                assert c.log_log(x) == _log_log(pts, x), (pts, x)
