"""Where a `dynamo.vllm` worker's start-up time goes, read from its own log: the seconds from launch to each
milestone (Dynamo's runtime up, vLLM's config resolved, the engine-core process up, weights loaded, the KV cache
registered with NIXL, the engine ready, the worker registered with the frontend's discovery).

Three timestamp forms appear in one log: Dynamo's (`2026-12-02T00:08:17.159596Z`, UTC), NIXL's
(`2026-12-02 00:12:15 NIXL ...`) and vLLM's (`INFO 12-02 00:09:16`), the last two in whole seconds on the pod's
clock and time zone (UTC on the twin and on RunPod's images).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

MILESTONES: tuple[tuple[str, str], ...] = (
    ("dynamo runtime up", "dynamo runtime configuration"),
    ("vLLM config resolved", "Resolved architecture"),
    ("engine core process up", "Initializing a V1 LLM engine"),
    ("NIXL agent up", "Initialized NIXL agent"),
    ("model loading", "Starting to load model"),
    ("weights loaded", "Loading weights took"),
    ("KV cache allocated, registering with NIXL", "Registering KV_Caches"),
    ("engine ready", "init engine (profile, create kv cache, warmup model) took"),
    ("registered (serving)", "Registered endpoint 'dynamo."),
)

_ISO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z")
_PLAIN = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ")  # NIXL's own logger
_VLLM = re.compile(r"\b(?:INFO|WARNING|DEBUG|ERROR) (\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)\b")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _stamp(line: str, year: int) -> datetime | None:
    m = _ISO.search(line)
    if m:
        return datetime.fromisoformat(m.group(1)).replace(tzinfo=UTC)
    p = _PLAIN.match(line)
    if p:
        return datetime.fromisoformat(p.group(1)).replace(tzinfo=UTC)
    v = _VLLM.search(line)
    if v:
        mo, d, h, mi, s = (int(x) for x in v.groups())
        return datetime(year, mo, d, h, mi, s, tzinfo=UTC)
    return None


def startup_phases(log: str, launched_at: datetime) -> dict[str, float]:
    """{milestone: seconds after `launched_at`} for each milestone found in `log` (first occurrence)."""
    out: dict[str, float] = {}
    for raw in log.splitlines():
        line = _ANSI.sub("", raw)
        for name, marker in MILESTONES:
            if name in out or marker not in line:
                continue
            t = _stamp(line, launched_at.year)
            if t is not None:
                out[name] = round((t - launched_at).total_seconds(), 1)
    return dict(sorted(out.items(), key=lambda kv: kv[1]))
