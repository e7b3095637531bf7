"""`r1lab teardown RUN_DIR`: tear down what a run directory's ledger still holds (e.g. after a notebook was run
on its own in JupyterLab, or after the runner was killed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import r1lab.cloud.ledger
import r1lab.cloud.twin
import r1lab.serve.launch
from r1lab.teardown import Ledger, teardown_run

# the modules that create resources register their teardown handlers when imported (r1lab.teardown's registry):
# imported here for ledgers written before each entry named its handler
_REGISTERING = (r1lab.cloud.ledger, r1lab.cloud.twin, r1lab.serve.launch)


def _attach_provider(run_dir: Path) -> None:
    """A twin run torn down from a plain shell: its RunPod client must talk to the twin, with the twin's key."""
    import json
    import os

    try:
        kind = json.loads((run_dir / "run.json").read_text())["params"]["provider"]["kind"]
    except (OSError, KeyError, ValueError):
        return
    if kind == "twin" and not os.environ.get("RUNPOD_API_BASE"):
        from r1lab.cloud.twin.runner_hooks import attach

        attach(run_dir)


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="r1lab teardown", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    args = parser.parse_args(argv)
    ledger = Ledger(args.run_dir)
    if not ledger.path.exists():
        print(f"{args.run_dir}: no ledger.jsonl: nothing was recorded for this run", file=sys.stderr)
        return 1
    live = ledger.live()
    for e in live:
        print(f"{'would delete' if args.dry_run else 'deleting'} {e['kind']} {e['name']} ({e['id']})")
    if args.dry_run or not live:
        print(f"{len(live)} live resource(s)")
        return 0
    _attach_provider(args.run_dir)
    report = teardown_run(args.run_dir)
    print(report)
    return 0 if report.ok else 2
