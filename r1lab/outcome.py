"""How a run ended, read from its files alone: complete, or cut short (and why).

The runner logs every attempt in `runner.jsonl` (run_started ... run_finished with its exit code; run_interrupted
names the signal) and the budget guard writes `budget.json` when it stops a run. A run whose last attempt has no
`run_finished` was killed outright (SIGKILL, a machine that died). The summary and the report say so.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class Outcome:
    complete: bool
    reason: str | None  # None when complete
    attempts: int
    code: int | None  # the last attempt's exit code (None: it never finished)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One sentence for people (summary, report banner, notebook)."""
        if self.complete:
            return "complete"
        return f"CUT SHORT: {self.reason}"


def runner_events(run_dir: Path) -> list[dict[str, Any]]:
    """The runner's events (runner.jsonl) of a run; a line torn by a kill is skipped."""
    path = run_dir / "runner.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a kill
    return out


def run_outcome(run_dir: str | Path) -> Outcome | None:
    """The last attempt's outcome; None when the run was not made by `r1lab run` (no runner.jsonl)."""
    rd = Path(run_dir)
    events = runner_events(rd)
    starts = [i for i, e in enumerate(events) if e.get("event") == "run_started"]
    if not starts:
        return None
    last = events[starts[-1] :]
    finished = next((e for e in reversed(last) if e.get("event") == "run_finished"), None)
    budget = None
    if (rd / "budget.json").exists():
        try:
            budget = json.loads((rd / "budget.json").read_text(encoding="utf-8"))
        except ValueError:
            budget = {"tripped": "budget.json is damaged"}
    running = next((e.get("notebook") for e in reversed(last) if e.get("event") == "notebook_started"), None)
    where = f" during {running}" if running else ""
    if finished is None:
        reason = f"the runner was killed{where} and never finished (SIGKILL or a dead machine)"
        return Outcome(False, reason, len(starts), None)
    code = int(finished.get("code", 0))
    if code == 0:
        return Outcome(True, None, len(starts), 0)
    interrupted = next((e for e in last if e.get("event") == "run_interrupted"), None)
    if budget is not None and budget.get("tripped"):
        reason = f"stopped by the budget guard{where}: {budget['tripped']}"
    elif interrupted is not None:
        reason = f"interrupted by {interrupted.get('reason')}{where}"
    else:
        failed = next((e for e in reversed(last) if e.get("event") == "notebook_failed"), None)
        reason = f"failed: {failed.get('error')}" if failed else f"the runner exited {code}{where}"
    return Outcome(False, reason, len(starts), code)
