"""Stage 06 (report): the run's report rebuilt from its directory's files alone (report.html, charts/).

`run(ctx)` is what notebook 06 calls; `r1lab report RUN_DIR` builds the same from any run directory."""

from __future__ import annotations

from r1lab.report.build import Report, build_report
from r1lab.rundir import RunContext


def run(ctx: RunContext) -> Report:
    """Build the report of the run (requests.parquet, summary.json, metrics.parquet, plan.json, run.json and the
    resolved deployment in its directory): no server needs to be running."""
    return build_report(ctx.run_dir)
