"""Budget guard: a run that reaches its cost or time cap is torn down.

`BudgetGuard(run_dir, exp)` prices the run from its ledger with r1lab.cost.run_total (the one function the report
prices a run with too) every `poll_s` on a daemon thread (or on demand with `check()`), against the params'
`provider.budget_usd` and `provider.budget_hours`. On a breach it tears the run down (r1lab.teardown), writes
`budget.json` (what was spent, the cap, the teardown) and calls `on_trip` (the runner stops the notebook that is
running); `raise_if_tripped()` raises BudgetExceededError. `r1lab run` runs one for every run that rents (RunPod
and the twin, whose pods are priced as the same pods on RunPod).

It runs on the researcher's machine, so it dies with it: the pod-side watchdog (r1lab.cloud.pods.start_script:
a hard deadline plus a heartbeat timeout) is the guard of last resort; `heartbeat` callables passed here are
called every poll to keep that watchdog fed while this machine lives.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from r1lab import resolve
from r1lab.cloud.errors import BudgetExceededError
from r1lab.cost import run_total
from r1lab.teardown import Ledger


@dataclass
class BudgetStatus:
    usd: float
    hours: float
    max_usd: float
    max_hours: float
    tripped: str | None = None


class BudgetGuard:
    def __init__(
        self,
        run_dir: Path | str,
        exp: Any,
        *,
        max_usd: float | None = None,
        max_hours: float | None = None,
        poll_s: float = 30.0,
        heartbeats: list[Callable[[], None]] | None = None,
        clock: Callable[[], float] = time.time,
        on_trip: Callable[[BudgetStatus], None] | None = None,
    ) -> None:
        self.run_dir, self.exp = Path(run_dir), exp
        self.max_usd = exp.provider.budget_usd if max_usd is None else max_usd
        self.max_hours = exp.provider.budget_hours if max_hours is None else max_hours
        self.poll_s = poll_s
        self.heartbeats = list(heartbeats or [])
        self.clock = clock
        self.on_trip = on_trip
        self.tripped: str | None = None
        self._started = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._resolved: resolve.ResolvedDeployment | None = None

    def status(self) -> BudgetStatus:
        cost = run_total(self.exp, Ledger(self.run_dir).entries(), now=self.clock(), quotes=self._quotes())
        hours = max(cost.hours, (self.clock() - self._started) / 3600)
        return BudgetStatus(cost.usd, hours, self.max_usd, self.max_hours, self.tripped)

    def _quotes(self) -> dict[str, Any] | None:
        """The run's resolved price quotes (resolved.json), as the report prices the run; None before it exists."""
        if self._resolved is None and (self.run_dir / resolve.FILENAME).exists():
            self._resolved = resolve.load(self.run_dir)
        return dict(self._resolved.prices) if self._resolved is not None else None

    def check(self) -> BudgetStatus:
        """Price the run now; tear it down if a cap is reached."""
        st = self.status()
        if self.tripped is None:
            if st.usd >= self.max_usd:
                self.tripped = f"cost ${st.usd:.2f} reached the cap ${self.max_usd:.2f}"
            elif st.hours >= self.max_hours:
                self.tripped = f"run time {st.hours:.2f} h reached the cap {self.max_hours:.2f} h"
            if self.tripped:
                st.tripped = self.tripped
                self._trip(st)
        return st

    def _trip(self, st: BudgetStatus) -> None:
        from r1lab.cloud.ledger import teardown

        report = teardown(self.run_dir)
        record = asdict(st) | {"time": time.time(), "teardown": str(report), "priced_by": "r1lab.cost.run_total",
                               "billed": self.exp.provider.kind == "runpod"}  # fmt: skip
        path = self.run_dir / "budget.json"
        path.write_text(json.dumps(record, indent=1), encoding="utf-8")
        if self.on_trip is not None:
            self.on_trip(st)

    def raise_if_tripped(self) -> None:
        if self.tripped:
            raise BudgetExceededError(f"budget guard tore the run down: {self.tripped}")

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            for beat in self.heartbeats:
                try:
                    beat()
                except Exception:  # noqa: BLE001 - a pod that misses one heartbeat has minutes of slack
                    pass
            if self.check().tripped:
                return

    def start(self) -> BudgetGuard:
        self._thread = threading.Thread(target=self._loop, name="r1lab-budget-guard", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> BudgetGuard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
