"""The rendered notebooks researchers share, opened in headless Chromium at 1,400 px with no network: no stderr
blocks (progress is an HTML bar), no script from a CDN (no require.js, no MathJax), nothing wider than the page,
formatted tables with human headers, `$` left as a dollar. Screenshots land in the test's tmp dir."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_run import REPO, make_run  # noqa: E402

SCREENS = (
    Path(__import__("os").environ.get("R1LAB_SCREENS", ""))
    if __import__("os").environ.get("R1LAB_SCREENS")
    else None
)


def _execute(nb: str, run_dir: Path, out: Path) -> Path:
    import papermill as pm

    from r1lab.runner import HIDE_CODE, kernel_config, render_html

    pm.execute_notebook(
        str(REPO / "notebooks" / f"{nb}.ipynb"), str(out),
        parameters={"params_path": str(REPO / "params" / "twin.yaml"), "run_dir": str(run_dir)},
        kernel_name="r1lab", cwd=str(REPO), progress_bar=False, config=kernel_config(),
    )  # fmt: skip
    return render_html(out, nb in HIDE_CODE)


@pytest.mark.slow
@pytest.mark.parametrize("nb", ["00_plan", "06_report"])
def test_rendered_notebook_in_chromium(nb: str, tmp_path: Path, monkeypatch) -> None:
    from r1lab.report.render import check_layout
    from r1lab.rundir import new_run

    monkeypatch.delenv("R1LAB_PROGRESS", raising=False)  # as a researcher runs it (conftest sets plain)
    monkeypatch.delenv("R1LAB_PLOTLY_CDN", raising=False)
    rd = (
        make_run(tmp_path)
        if nb == "06_report"
        else new_run(REPO / "params" / "twin.yaml", root=tmp_path).run_dir
    )
    html = _execute(nb, rd, rd / "notebooks" / f"{nb}.ipynb")
    text = html.read_text()
    assert not re.search(r"<script[^>]+src=\"https?://", text), "a script from the network"
    assert "require.min.js" not in text and "cdnjs.cloudflare.com" not in text
    shot = (SCREENS or tmp_path) / f"notebook-{nb}.png"
    info = check_layout(html, shot, width=1400)
    assert info["external_scripts"] == [] and info["stderr_blocks"] == 0, info
    assert info["scroll_width"] <= 1400 and not info["wide"], info
    assert shot.exists() and shot.stat().st_size > 20_000
    executed = nbformat.read(rd / "notebooks" / f"{nb}.ipynb", as_version=4)
    outs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outs if o.get("name") == "stderr"], [
        o.get("text", "")[:200] for o in outs if o.get("name") == "stderr"
    ]
    tables = [
        o["data"]["text/html"]
        for o in outs
        if "text/html" in o.get("data", {}) and "<table" in o["data"]["text/html"]
    ]
    assert tables and all("tex2jax_ignore" in t for t in tables)  # JupyterLab leaves `$` in tables alone
    assert not re.search(r"<td>\d+\.\d{5,}</td>", "".join(tables)), "raw floats in a table"
    assert not re.search(r"<th>[a-z]+_[a-z_]+</th>", "".join(tables)), "snake_case headers"
    if nb == "06_report":
        assert "Bottleneck findings" in text and text.count("Plotly.newPlot") >= 9
    else:
        assert "r1lab-progress" in text  # the planner's progress bar, as HTML
        assert json.loads((rd / "plan.json").read_text())["topologies"]


def test_markdown_dollars_are_escaped() -> None:
    """JupyterLab typesets $...$ as math: a dollar in a notebook's narrative is written \\$."""
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                bare = re.findall(r"(?<!\\)\$", re.sub(r"`[^`]*`", "", cell.source))
                assert not bare, f"{path.name}: unescaped $ in {cell.source[:80]!r}"
