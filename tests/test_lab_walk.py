"""Stepping through 00 -> 06 by hand, as in JupyterLab: each notebook in its own kernel, cwd notebooks/, no
parameter changed. They all join one run (each says so first), 05 finds the endpoint 04 left, 06 builds the report;
the run's teardown then leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_notebooks_stepped_by_hand_chain_into_one_run(tmp_path: Path, monkeypatch) -> None:
    if os.geteuid() != 0:
        pytest.fail("the twin needs root: run the test suite as root (CI does)")
    import papermill as pm

    from r1lab.runner import kernel_config
    from r1lab.teardown import Ledger

    outputs, twin_dir = tmp_path / "outputs", tmp_path / "twin"
    monkeypatch.setenv("R1LAB_OUTPUTS", str(outputs))
    monkeypatch.setenv("R1LAB_TWIN_DIR", str(twin_dir))
    for var in ("PAPERMILL_EXECUTION", "RUNPOD_API_BASE", "RUNPOD_API_KEY", "CI"):
        monkeypatch.delenv(var, raising=False)
    firsts = {}
    try:
        for nb in NOTEBOOKS:
            out = tmp_path / nb.name
            # no parameters: the notebook's own defaults, as when pressing "run all" in Lab
            pm.execute_notebook(str(nb), str(out), kernel_name="r1lab", cwd=str(REPO / "notebooks"),
                                progress_bar=False, config=kernel_config())  # fmt: skip
            cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
            firsts[nb.stem] = "".join(
                o.get("text", "") for o in cells[1].outputs if o.get("name") == "stdout"
            )
    finally:
        runs = list(outputs.glob("twin/*/run.json"))
        for r in runs:  # what the user does after stepping through: `r1lab teardown RUN_DIR`
            res = subprocess.run([str(REPO / ".venv" / "bin" / "r1lab"), "teardown", str(r.parent)],
                                 capture_output=True, text=True, env={**os.environ}, timeout=600)  # fmt: skip
            print(res.stdout, res.stderr)
    assert len(runs) == 1, runs  # one run, not one per notebook
    run_dir = runs[0].parent
    assert firsts["00_plan"].startswith(f"00_plan: new run twin/{run_dir.name}")
    for name, said in firsts.items():
        if name != "00_plan":
            assert said.startswith(
                f"{name}: joined the current run of params/twin.yaml: twin/{run_dir.name}"
            ), said
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["points"] and all(
        p["requests"] > 0 and p["source"] == "measured-twin" for p in summary["points"]
    )
    assert (run_dir / "report.html").exists()
    assert Ledger(run_dir).live() == []
    runs_out = subprocess.run([str(REPO / ".venv" / "bin" / "r1lab"), "runs"], capture_output=True, text=True,
                              env=os.environ, timeout=60).stdout  # fmt: skip
    assert f"* twin/{run_dir.name}" in runs_out
    assert "torn down; notebooks: " + ", ".join(p.stem for p in NOTEBOOKS) in runs_out, runs_out
    left = subprocess.run(["pgrep", "-af", str(twin_dir)], capture_output=True, text=True).stdout.strip()
    assert not left, f"processes left: {left}"

    # the executed notebooks, rendered as the runner renders them, read well at 1,400 px offline
    from r1lab.report.render import check_layout
    from r1lab.runner import HIDE_CODE, render_html

    screens = Path(os.environ.get("R1LAB_SCREENS") or tmp_path)
    for nb in NOTEBOOKS:
        html = render_html(tmp_path / nb.name, nb.stem in HIDE_CODE)
        info = check_layout(html, screens / f"lab-{nb.stem}.png", width=1400)
        assert info["stderr_blocks"] == 0 and info["external_scripts"] == [], (nb.stem, info)
        assert info["scroll_width"] <= 1400 and not info["wide"], (nb.stem, info)
