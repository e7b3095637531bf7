"""mypy is clean on r1lab: the configuration is pyproject.toml's [tool.mypy] (files, plugins, per-module
overrides for untyped third-party modules); `make lint` runs the same check."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_reports_no_error_on_r1lab() -> None:
    # the cache under .mypy_cache (ignored by git) makes a second run incremental; a clean clone builds it once
    p = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, f"mypy found errors (fix them; run `make lint` locally):\n{p.stdout}{p.stderr}"
    assert "Success: no issues found" in p.stdout, p.stdout
