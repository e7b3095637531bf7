"""The report researchers share, rebuilt from a run directory's files alone.

Notebook API (06_report):
- `build_report(run_dir, out=None, png=True) -> Report` writes charts/ (HTML + PNG) and report.html;
  `Report.charts` (plotly figures to show inline), `.findings`, `.missing` (charts not drawn, and why);
- `load_run(run_dir) -> RunData`; `findings(data)`; `predicted_vs_measured(data)`; `summary_frame(data)`;
- `compare_runs([run_dir, ...], out)`; `check_report(report.html)` (headless Chromium: did every chart draw?).
"""

from r1lab.report.analysis import Finding, findings, predicted_vs_measured
from r1lab.report.build import Report, build_report
from r1lab.report.charts import summary_frame
from r1lab.report.compare import compare_runs
from r1lab.report.data import ReportError, RunData, load_run
from r1lab.report.render import check_report
from r1lab.report.tables import display_table

__all__ = [
    "Finding", "Report", "ReportError", "RunData", "build_report", "check_report", "compare_runs", "display_table", "findings",
    "load_run", "predicted_vs_measured", "summary_frame",
]  # fmt: skip
