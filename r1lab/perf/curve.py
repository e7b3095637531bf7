"""Measured curves made ready to interpolate: `Curve(points)`, the logs and each segment's differences worked out
once, so that the step model's many lookups of the same GEMM, rate or kernel curve cost a bisect and a few float
operations (bit-identical to interpolating the points afresh)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def _log(v: float) -> float:
    return math.log(v) if v > 0 else math.nan  # a point no interpolation between positive sizes reaches


class Curve:
    """Points (x, y) in ascending x, ready to interpolate: the x to bisect, the logs of x and y and each segment's
    differences worked out once. They are the very floats the per-call expressions give, so interpolating here
    is bit-identical to interpolating the points afresh, at a fraction of the cost. Owners keep one per curve."""

    __slots__ = ("pts", "xs", "ys", "lx", "ly", "dlx", "dly", "dy")

    def __init__(self, pts: Sequence[tuple[float, float]]) -> None:
        self.pts = tuple(pts)
        self.xs = [x for x, _ in pts]
        self.ys = [y for _, y in pts]
        self.lx = [_log(x) for x in self.xs]
        self.ly = [_log(y) for y in self.ys]
        # segment i joins point i - 1 to point i (index 0 unused)
        self.dlx = [math.nan] + [b - a for a, b in zip(self.lx, self.lx[1:], strict=False)]
        self.dly = [math.nan] + [b - a for a, b in zip(self.ly, self.ly[1:], strict=False)]
        self.dy = [math.nan] + [b - a for a, b in zip(self.ys, self.ys[1:], strict=False)]

    def log_lin(self, x: float) -> float:
        """Linear in y over log x between the points either side of x, clamped at the ends."""
        xs = self.xs
        if x <= xs[0]:
            return self.ys[0]
        if x >= xs[-1]:
            return self.ys[-1]
        i = bisect.bisect_right(xs, x)  # the first point above x
        f = (math.log(x) - self.lx[i - 1]) / self.dlx[i]
        return self.ys[i - 1] + f * self.dy[i]

    def log_log(self, x: float) -> float:
        """Log-log between the points either side of x, for x strictly between the first and last points."""
        i = bisect.bisect_right(self.xs, x)  # the first point above x
        f = (math.log(x) - self.lx[i - 1]) / self.dlx[i]
        return math.exp(self.ly[i - 1] + f * self.dly[i])
