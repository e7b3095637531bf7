"""Notebook 06 runs under papermill (as the runner runs it) against a run directory and renders to HTML
without code cells, with plotly.js embedded (no CDN)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_run import REPO, make_run  # noqa: E402


@pytest.mark.slow
def test_06_report_notebook_executes_and_renders(tmp_path: Path, monkeypatch) -> None:
    import papermill as pm

    from r1lab.runner import render_html

    rd = make_run(tmp_path)
    out = rd / "notebooks" / "06_report.ipynb"
    monkeypatch.setenv("PAPERMILL_EXECUTION", "1")
    monkeypatch.delenv("R1LAB_PLOTLY_CDN", raising=False)
    pm.execute_notebook(
        str(REPO / "notebooks" / "06_report.ipynb"), str(out),
        parameters={"params_path": str(REPO / "params" / "twin.yaml"), "run_dir": str(rd)},
        kernel_name="python3", cwd=str(REPO), progress_bar=False,
    )  # fmt: skip
    assert (rd / "report.html").exists() and (rd / "charts" / "throughput_vs_concurrency.png").exists()
    html = render_html(out, hide_code=True).read_text()
    assert "build_report" not in html  # code cells hidden
    assert "Bottleneck findings" in html and "kv-bound" in html
    assert html.count("Plotly.newPlot") >= 9
    assert not re.search(r"<script[^>]+src=\"https?://[^\"]*plotly", html), "plotly.js must be embedded"
    assert os.path.getsize(out.with_suffix(".html")) > 3_000_000  # plotly.js itself is inside
