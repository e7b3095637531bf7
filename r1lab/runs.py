"""The runs of a params file: which one is current (the run notebooks stepped through by hand join), and each
run's state, read from its files alone (`runner.jsonl`, `ledger.jsonl`, `run.json`). `r1lab runs` lists them.

A run directory is `<outputs root>/<experiment>/<run_id>/`; `<outputs root>/<experiment>/current.json` maps each
params file (relative to the repo) to its current run id. `rundir.new_run` makes every new run current.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from r1lab.outcome import runner_events
from r1lab.teardown import Ledger

REPO_ROOT = Path(__file__).resolve().parent.parent
CURRENT = "current.json"


def outputs_root(configured: str | Path | None = None) -> Path:
    """R1LAB_OUTPUTS (tests, shared machines) wins over the params' `outputs.root`; relative to the repo."""
    root = Path(os.environ.get("R1LAB_OUTPUTS") or configured or "outputs")
    return root if root.is_absolute() else REPO_ROOT / root


def params_key(params_path: str | Path) -> str:
    """How a params file is named in current.json: relative to the repo when inside it."""
    p = Path(params_path).resolve()
    return str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)


def _locked_update(path: Path, key: str, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[key] = value
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        tmp.replace(path)


def set_current(run_dir: Path, params_path: str | Path) -> None:
    """Make run_dir the current run of its params file."""
    _locked_update(run_dir.parent / CURRENT, params_key(params_path), run_dir.name)


def current_run(experiment_dir: Path, params_path: str | Path) -> Path | None:
    """The current run directory of a params file, or None."""
    path = experiment_dir / CURRENT
    if not path.exists():
        return None
    try:
        run_id = json.loads(path.read_text()).get(params_key(params_path))
    except (json.JSONDecodeError, AttributeError):
        return None
    run_dir = experiment_dir / str(run_id)
    return run_dir if run_id and (run_dir / "run.json").exists() else None


@dataclass
class RunState:
    """What a run directory says about itself."""

    run_dir: Path
    created: str = ""
    params_file: str = ""
    state: str = "new"  # new | open | running | completed | failed | interrupted | torn down
    # completed (runner) or stepped through (Lab), in order
    notebooks: list[str] = field(default_factory=list)
    live: int = 0  # resources the ledger still holds
    detail: str = ""

    @property
    def joinable(self) -> bool:
        """Notebooks stepped through by hand can continue in it: nothing has torn it down."""
        return self.state in ("new", "open")

    def describe(self) -> str:
        nbs = ", ".join(self.notebooks) or "none yet"
        res = f"{self.live} live resource(s)" if self.live else "no live resources"
        return f"{self.state}; notebooks: {nbs}; {res}" + (f"; {self.detail}" if self.detail else "")


def run_state(run_dir: str | Path) -> RunState:
    """The state of one run, from its files alone."""
    rd = Path(run_dir)
    st = RunState(rd)
    try:
        meta = json.loads((rd / "run.json").read_text())
        st.created, st.params_file = meta.get("created", ""), meta.get("params_file", "")
    except (OSError, json.JSONDecodeError):
        st.detail = "no readable run.json"
    events = runner_events(rd)
    ledger = Ledger(rd)
    entries = ledger.entries()
    st.live = len(ledger.live())
    for e in events:
        nb = e.get("notebook")
        if e.get("event") in ("notebook_completed", "notebook_joined") and nb and nb not in st.notebooks:
            st.notebooks.append(nb)
    kinds = [e.get("event") for e in events]
    if "run_finished" in kinds:
        code = next(e.get("code") for e in reversed(events) if e.get("event") == "run_finished")
        failed = [e for e in events if e.get("event") == "notebook_failed"]
        if "run_interrupted" in kinds:
            st.state = "interrupted"
        elif code == 0:
            st.state = "completed"
        else:
            st.state = "failed"
            if failed:
                st.detail = str(failed[-1].get("error", ""))[:160]
    elif "run_started" in kinds:
        st.state = "running"  # by `r1lab run` (or killed before it could say otherwise)
    elif entries and not st.live:
        st.state = "torn down"
    elif st.notebooks or entries:
        st.state = "open"
    if st.live and st.state in ("completed", "failed", "interrupted"):
        st.detail = (st.detail + "; " if st.detail else "") + f"`r1lab teardown {rd}` deletes what is left"
    return st


def record_join(run_dir: Path, notebook: str, how: str) -> None:
    """runner.jsonl: a notebook stepped through by hand joined this run (what `r1lab runs` shows)."""
    entry = {"time": _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds"), "event": "notebook_joined",
             "notebook": notebook, "how": how}  # fmt: skip
    with open(run_dir / "runner.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def list_runs(root: Path) -> list[tuple[RunState, bool]]:
    """Every run under root (oldest first) with whether it is the current run of its params file."""
    out = []
    for run_json in sorted(root.glob("*/*/run.json"), key=lambda p: (p.parent.name, p.parent.parent.name)):
        rd = run_json.parent
        st = run_state(rd)
        cur = current_run(rd.parent, REPO_ROOT / st.params_file) if st.params_file else None
        out.append((st, cur == rd))
    return out


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="r1lab runs", description="List run directories with their state.")
    ap.add_argument("params", nargs="?", help="only the runs of this params file")
    ap.add_argument("--root", help="outputs root (default: $R1LAB_OUTPUTS or outputs/)")
    a = ap.parse_args(argv)
    root = outputs_root(a.root)
    rows = list_runs(root)
    if a.params:
        key = params_key(a.params)
        rows = [(st, cur) for st, cur in rows if st.params_file == key]
    if not rows:
        print(f"no runs under {root}" + (f" for {a.params}" if a.params else ""))
        return 0
    print(f"runs under {root} (* = the current run of its params file; notebooks opened by hand join it)")
    for st, cur in rows:
        name = f"{st.run_dir.parent.name}/{st.run_dir.name}"
        print(f"{'*' if cur else ' '} {name:<36} {st.created[:19].replace('T', ' '):<19}  {st.params_file}")
        print(f"    {st.describe()}")
    return 0
