"""Load shapes: fixed concurrency (closed loop) or Poisson/gamma arrivals (open loop, optionally capped), bounded
by a request count or a duration, with a warm-up excluded from results; or a trace's own send times (open loop).
Step ramps are sequences of shapes. `loop_of` says which loop a shape runs: every record and summary point states it."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Shape:
    """One load point.

    kind "concurrency": `concurrency` requests always in flight (closed loop). kind "poisson": requests arrive at
    `rate`/s (gamma inter-arrivals with `burstiness`, 1.0 = Poisson), at most `concurrency` in flight if given
    (open loop). kind "trace": request k is sent at `offsets[k]` s from the start (a replayed trace, open loop).
    Bounded by `requests` or `duration_s` (the first reached). Requests sent before `warmup_s` into the point,
    or among its first `warmup_requests`, are flagged warm-up and left out of the metrics.
    """

    kind: Literal["concurrency", "poisson", "trace"]
    concurrency: int | None = None
    rate: float | None = None
    requests: int | None = None
    duration_s: float | None = None
    warmup_s: float = 0.0
    warmup_requests: int = 0
    burstiness: float = 1.0
    offsets: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind == "concurrency" and not (self.concurrency and self.concurrency > 0):
            raise ValueError("a concurrency shape needs concurrency >= 1")
        if self.kind == "poisson" and not (self.rate and self.rate > 0):
            raise ValueError("a poisson shape needs rate > 0 (requests/s)")
        if self.kind == "trace":
            offsets = self.offsets
            if not offsets:
                raise ValueError("a trace shape needs its send offsets (seconds from the start)")
            if any(b < a for a, b in zip(offsets, offsets[1:], strict=False)):
                raise ValueError("a trace's send offsets must not decrease")
            if self.requests is None:
                object.__setattr__(self, "requests", len(offsets))
        if self.requests is None and self.duration_s is None:
            raise ValueError("bound the shape by requests or duration_s")
        if self.burstiness <= 0:
            raise ValueError("burstiness must be > 0")

    @property
    def loop(self) -> str:
        return loop_of(self.kind)

    @property
    def label(self) -> str:
        if self.kind == "trace":
            cap = f"-c{self.concurrency}" if self.concurrency else ""
            return f"trace{len(self.offsets or ())}{cap}"
        if self.kind == "concurrency":
            return f"c{self.concurrency}"
        cap = f"-c{self.concurrency}" if self.concurrency else ""
        return f"r{self.rate:g}{cap}"


def loop_of(kind: str) -> str:
    """ "closed" (a fixed number of users, each sending when its last answer ended) or "open" (arrivals on a
    clock, whatever the server does)."""
    return "closed" if kind == "concurrency" else "open"


def arrivals(
    rate: float, *, requests: int | None, duration_s: float | None, seed: int, burstiness: float = 1.0
) -> np.ndarray:
    """Send offsets (s from the start) of a gamma-renewal process with mean rate `rate` (Poisson at burstiness 1),
    as `vllm bench serve` draws them; cut at `requests` arrivals and/or `duration_s`."""
    rng = np.random.default_rng(seed)
    theta = 1.0 / (rate * burstiness)
    if requests is not None:
        n = requests
    elif duration_s is not None:
        n = int(rate * duration_s * 1.2 + 10 * math.sqrt(rate * duration_s) + 10)
    else:
        raise ValueError("bound the arrivals by requests or duration_s")
    while True:
        t = np.cumsum(rng.gamma(shape=burstiness, scale=theta, size=n))
        t = t - t[0]  # the first request goes at the start, like vLLM's
        if duration_s is not None:
            if requests is None and t[-1] < duration_s:
                n *= 2
                continue
            t = t[t < duration_s]
        return t[:requests] if requests is not None else t


def split(total: int, parts: int) -> list[int]:
    """`total` spread over `parts` as evenly as possible (first ones get the remainder)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def steps(base: Shape, values: list[float]) -> list[Shape]:
    """A step ramp: the same shape at each concurrency (or rate) in turn."""
    if base.kind == "concurrency":
        return [replace(base, concurrency=int(v)) for v in values]
    return [replace(base, rate=float(v)) for v in values]
