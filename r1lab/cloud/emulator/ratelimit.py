"""Per-key request quotas in fixed windows, as RunPod announces them in `RateLimit-Policy` / `RateLimit`.

Each authenticated request takes one unit from every window (minute, hour, day); when one is spent the answer is
429 with `Retry-After` = the seconds until that window resets, and the `RateLimit` header of every answer says
what is left (`r`) and when each window resets (`t`), so a client that reads them never meets the 429. Refused
requests take nothing. Time is the emulator's clock, so tests that advance it also move the windows.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

# The quota the emulator announces by default (q requests per w seconds)
DEFAULT_POLICY: tuple[tuple[str, int, int], ...] = (
    ("minute", 600, 60),
    ("hour", 30000, 3600),
    ("day", 500000, 86400),
)


@dataclass
class _Window:
    name: str
    quota: int
    seconds: int
    start: float = 0.0
    used: int = 0


class RateLimiter:
    """Fixed windows per (name, quota, seconds). `take()` -> (allowed, headers); thread safe."""

    def __init__(
        self, policy: tuple[tuple[str, int, int], ...] | list | None, now: Callable[[], float]
    ) -> None:
        self.policy = tuple(
            (str(n), int(q), int(w)) for n, q, w in (DEFAULT_POLICY if policy is None else policy)
        )
        for name, quota, seconds in self.policy:
            if quota < 1 or seconds < 1 or not name.isidentifier():
                raise ValueError(
                    f"bad rate-limit window {(name, quota, seconds)}: need a name, q >= 1, w >= 1"
                )
        self._now = now
        self._windows: dict[str, list[_Window]] = {}
        self._lock = threading.Lock()
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return bool(self.policy)

    def policy_header(self) -> str:
        return ", ".join(f'"{n}";q={q};w={w}' for n, q, w in self.policy)

    def take(self, key: str) -> tuple[bool, dict[str, str]]:
        """Count one request of `key`; (False, headers with Retry-After) when a window is spent."""
        if not self.policy:
            return True, {}
        now = self._now()
        with self._lock:
            windows = self._windows.setdefault(key, [_Window(n, q, w, now) for n, q, w in self.policy])
            for w in windows:
                if now >= w.start + w.seconds:  # the window reset: a new one starts now
                    w.start, w.used = now, 0
            spent = [w for w in windows if w.used >= w.quota]
            if not spent:
                for w in windows:
                    w.used += 1
            else:
                self.refused += 1
            state = ", ".join(
                f'"{w.name}";r={max(0, w.quota - w.used)};t={max(0, math.ceil(w.start + w.seconds - now))}'
                for w in windows
            )
        headers = {"RateLimit": state, "RateLimit-Policy": self.policy_header()}
        if spent:
            headers["Retry-After"] = str(max(1, max(math.ceil(w.start + w.seconds - now) for w in spent)))
            return False, headers
        return True, headers
