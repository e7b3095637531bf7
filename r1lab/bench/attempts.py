"""Load points across attempts of one run (`r1lab run --resume` after a kill in the load test).

A point is complete when the generator wrote its line to `load/<scenario>/client.jsonl`, which it does only after
the point's last request was recorded. On resume the earlier attempt's `load/` is kept aside whole
(`attempts/05_load_test-<n>/load`); the points it completed are carried back (their records and client lines,
byte for byte), and the points it cut short are run again from their first request. Every point's records thus
come from exactly one attempt, and the resumed run measures exactly the planned requests (or duration) per point.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from r1lab.bench.loadgen import CLIENT_STATS

REQUESTS = "requests.jsonl"
CARRIED = ("knee.json",)  # a scenario's other files that depend only on its complete points


def complete_points(scenario_dir: str | Path) -> set[str]:
    """The points of one scenario whose every request is recorded (the point labels in client.jsonl)."""
    path = Path(scenario_dir) / CLIENT_STATS
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(json.loads(line)["point"])
        except (ValueError, KeyError, TypeError):  # a torn last line: that point is not complete
            continue
    return done


def _lines_of(path: Path, points: set[str]) -> list[bytes]:
    """The lines of a JSON-lines file whose `point` is in `points` (a torn line is nobody's)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines(keepends=True):
        try:
            if json.loads(line).get("point") in points:
                out.append(line if line.endswith(b"\n") else line + b"\n")
        except ValueError:
            continue
    return out


def carry_complete_points(aside_load: str | Path, load_dir: str | Path) -> dict[str, list[str]]:
    """Copy each point the earlier attempt (`aside_load`, its load/ dir kept aside) completed into this attempt's
    `load_dir`; returns {scenario: [points carried]}. The cut-short points stay only in the aside copy."""
    src_root, dst_root = Path(aside_load), Path(load_dir)
    carried: dict[str, list[str]] = {}
    if not src_root.is_dir():
        return carried
    for src in sorted(p for p in src_root.iterdir() if p.is_dir()):
        done = complete_points(src)
        if not done:
            continue
        dst = dst_root / src.name
        dst.mkdir(parents=True, exist_ok=True)
        for name in (REQUESTS, CLIENT_STATS):
            lines = _lines_of(src / name, done)
            if lines:
                with open(dst / name, "ab") as f:
                    f.writelines(lines)
        for name in CARRIED:
            if (src / name).exists():
                shutil.copy2(src / name, dst / name)
        carried[src.name] = sorted(done)
    return carried
