"""`r1lab compare`: never writes into the working directory, --out gets .html (or a directory), formatted table
(no None, no 1.14e+03), a diff of the runs' params, a page that fits 1,400 px with no CDN script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_run import REPO, make_run  # noqa: E402

R1LAB = str(REPO / ".venv" / "bin" / "r1lab")


@pytest.mark.slow
def test_compare_out_table_and_params_diff(tmp_path: Path) -> None:
    from r1lab.report.render import check_layout

    a = make_run(tmp_path / "runs", metrics=False)
    b = make_run(tmp_path / "runs", metrics=False, plan=False, seed=3)
    run = json.loads((b / "run.json").read_text())  # the second run used other params
    run["params"]["serving"]["max_num_seqs"] = 128
    run["params"]["load"]["slo"]["ttft_ms"] = 1500.0
    (b / "run.json").write_text(json.dumps(run))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "R1LAB_OUTPUTS": str(tmp_path / "outputs")}

    res = subprocess.run([R1LAB, "compare", str(a), str(b)], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=180)  # fmt: skip
    assert res.returncode == 0, res.stderr
    page = Path(res.stdout.strip())
    assert (
        list(cwd.iterdir()) == []
        and page.parent == tmp_path / "outputs" / "compare"
        and page.suffix == ".html"
    )
    res = subprocess.run([R1LAB, "compare", str(a), str(b), "--out", str(tmp_path / "mine")], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert res.returncode == 0 and Path(res.stdout.strip()) == tmp_path / "mine.html"
    (tmp_path / "dir").mkdir()
    res = subprocess.run([R1LAB, "compare", str(a), str(b), "--out", str(tmp_path / "dir")], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert res.returncode == 0 and Path(res.stdout.strip()).parent == tmp_path / "dir"

    text = page.read_text()
    assert "None" not in re.sub(r"<script.*?</script>", "", text, flags=re.S)
    assert not re.search(r"\d\.\d+e[+-]\d", re.sub(r"<script.*?</script>", "", text, flags=re.S))
    assert "<h2>Params that differ</h2>" in text
    row = re.search(r"<tr>\s*<td>serving\.max_num_seqs</td>(.*?)</tr>", text, re.S)
    assert row and "256" in row.group(1) and "128" in row.group(1), text[:3000]
    assert "load.slo.ttft_ms" in text and "seed" not in re.findall(r"<td>([a-z_.\[\]-]+)</td>", text)
    info = check_layout(page, tmp_path / "compare.png", width=1400)
    assert info["external_scripts"] == [] and info["scroll_width"] <= 1400 and not info["wide"], info
