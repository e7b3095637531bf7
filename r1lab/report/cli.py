"""`r1lab report RUN_DIR` and `r1lab compare RUN...`."""

from __future__ import annotations

import argparse
import sys

from r1lab.report.data import ReportError


def report_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="r1lab report", description="Rebuild a run's report from its files alone."
    )
    ap.add_argument("run_dir")
    ap.add_argument(
        "--out", help="output directory (default: the run dir, or run_dir/rebuilt-<time> if it has one)"
    )
    ap.add_argument("--no-png", action="store_true", help="skip PNG export (kaleido + chromium)")
    ap.add_argument(
        "--check", action="store_true", help="open the report in headless Chromium; fail if a chart is blank"
    )
    ap.add_argument(
        "--recover-metrics",
        action="store_true",
        help="first rebuild metrics.parquet from run_dir/prometheus/data (a run killed before it saved them)",
    )
    a = ap.parse_args(argv)
    from r1lab.report.build import build_report

    try:
        if a.recover_metrics:
            from r1lab.monitor import recover

            print(recover(a.run_dir))
        rep = build_report(a.run_dir, a.out, png=not a.no_png)
    except (ReportError, FileExistsError, ValueError, RuntimeError) as exc:
        print(f"r1lab report: {exc}", file=sys.stderr)
        return 1
    print(rep.path)
    for name, why in rep.missing.items():
        print(f"  not drawn: {name}: {why}")
    if a.check:
        from r1lab.report.render import check_report

        checks, _ = check_report(rep.path)
        bad = [c for c in checks if not c.ok]
        for c in checks:
            print(f"  {'ok ' if c.ok else 'BLANK'} {c.id}: {c.traces} traces, ink {c.ink:.2%}")
        return 1 if bad else 0
    return 0


def compare_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="r1lab compare", description="Compare several runs side by side.")
    ap.add_argument("runs", nargs="+")
    ap.add_argument(
        "--out",
        help="an .html file, or a directory for compare-<time>.html (default: the outputs root's compare/)",
    )
    a = ap.parse_args(argv)
    from r1lab.report.compare import compare_runs

    try:
        path = compare_runs(a.runs, a.out)
    except (ReportError, FileExistsError, ValueError) as exc:
        print(f"r1lab compare: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
