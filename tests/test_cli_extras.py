"""Small things a new user trips on: `r1lab --version`, a `calibrate --help` that is not cut off, the README naming
the hidden features, and the notebook output filter that bootstrap installs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
R1LAB = str(REPO / ".venv" / "bin" / "r1lab")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([R1LAB, *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_version() -> None:
    res = _run("--version")
    assert res.returncode == 0 and res.stdout.startswith("r1lab 0.1.0"), res.stdout + res.stderr


def test_calibrate_help_is_whole() -> None:
    out = _run("calibrate", "--help").stdout
    assert "bring\nits records" in out or "bring its records" in out.replace("\n", " ")
    assert "Exit codes: 0 measured" in out and "r1lab calibrate --local --out outputs/cal-h200" in out


def test_readme_names_the_hidden_features() -> None:
    readme = (REPO / "README.md").read_text()
    for needle in ("r1lab/monitor/grafana/r1lab.json", "gpu_exporter.py", "DCGM_FI_DEV_FB_USED", "r1lab bench locust",
                   "r1lab --version", "r1lab runs", "vllm_bench/"):  # fmt: skip
        assert needle in readme, needle


def test_notebook_output_filter_strips_what_lab_autosaves(tmp_path: Path) -> None:
    nb_path = REPO / "notebooks" / "05_load_test.ipynb"
    rel = nb_path.relative_to(REPO)
    attr = subprocess.run(
        ["git", "-C", str(REPO), "check-attr", "filter", str(rel)], capture_output=True, text=True
    )
    assert attr.stdout.strip().endswith("filter: r1lab-nbstrip"), attr.stdout
    clean = subprocess.run(["git", "-C", str(REPO), "config", "--get", "filter.r1lab-nbstrip.clean"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    assert clean, "bootstrap did not install the filter: run scripts/bootstrap.sh"
    nb = json.loads(nb_path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["execution_count"] = 7
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["x\n"] * 3000}]
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    dirty = tmp_path / "dirty.ipynb"
    dirty.write_text(json.dumps(nb, indent=1))

    def blob(path: Path, *extra: str) -> str:
        where = list(extra) or ["--path", str(rel)]  # with the path: the filter of notebooks/*.ipynb applies
        return subprocess.run(["git", "-C", str(REPO), "hash-object", *where, str(path)],
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip

    # what `git add` would store for the autosaved notebook is the committed, output-free one
    assert blob(dirty) == blob(nb_path, "--no-filters")
    assert blob(nb_path) == blob(nb_path, "--no-filters")  # a clean notebook passes unchanged
