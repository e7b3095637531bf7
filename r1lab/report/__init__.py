"""The report researchers share, rebuilt from a run directory's files alone.

Notebook API (06_report):
- `build_report(run_dir, out=None, png=True) -> Report` writes charts/ (HTML + PNG) and report.html;
  `Report.charts` (plotly figures to show inline), `.findings`, `.missing` (charts not drawn, and why);
- `load_run(run_dir) -> RunData`; `findings(data)`; `predicted_vs_measured(data)`; `summary_frame(data)`;
- `compare_runs([run_dir, ...], out)`; `check_report(report.html)` (headless Chromium: did every chart draw?).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from r1lab.report.analysis import Finding, findings, predicted_vs_measured
    from r1lab.report.build import Report, build_report
    from r1lab.report.charts import summary_frame
    from r1lab.report.compare import compare_runs
    from r1lab.report.data import ReportError, RunData, load_run
    from r1lab.report.render import check_report
    from r1lab.report.tables import display_table

# Imported on first use (PEP 562): `from r1lab.report.tables import display_table`, which every stage's notebook
# runs, then costs pandas alone, not plotly and the charts (seconds of a kernel's start on a loaded machine).
_WHERE = {
    "Finding": "analysis", "findings": "analysis", "predicted_vs_measured": "analysis", "Report": "build",
    "build_report": "build", "summary_frame": "charts", "compare_runs": "compare", "ReportError": "data",
    "RunData": "data", "load_run": "data", "check_report": "render", "display_table": "tables",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'r1lab.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"r1lab.report.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Finding", "Report", "ReportError", "RunData", "build_report", "check_report", "compare_runs", "display_table", "findings",
    "load_run", "predicted_vs_measured", "summary_frame",
]  # fmt: skip
