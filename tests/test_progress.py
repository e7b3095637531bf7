"""Progress in human units through one interface: plain lines, an HTML bar in notebooks (stdout/display, never a
stderr block), and `r1lab run` relaying the kernel's progress live to its terminal, then the summary block."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import nbformat as nbf
import pytest

from r1lab.progress import describe, fmt_bytes, fmt_duration, progress

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params" / "runpod-1x8-h200.yaml"


def test_human_units() -> None:
    assert (
        fmt_duration(0.05) == "0.1 s"
        and fmt_duration(103) == "1 min 43 s"
        and fmt_duration(7500) == "2 h 05 min"
    )
    assert fmt_bytes(1.60443e7) == "16.0 MB" and fmt_bytes(689e9) == "689 GB" and fmt_bytes(512) == "512 B"
    line = describe("downloading deepseek-ai/DeepSeek-R1", 4e9, 16e9, "B", 20.0)
    assert (
        line
        == "downloading deepseek-ai/DeepSeek-R1: 4.0 GB / 16.0 GB (25%), 200 MB/s, 20 s elapsed, ETA 1 min 00 s"
    )
    assert (
        describe("waiting for /health", 0.0502885, 1800, "s", 0.05)
        == "waiting for /health: 0.1 s of 30 min 00 s allowed"
    )
    assert "e+0" not in describe("x", 0, 1.60443e7, "B", 0.0)


def test_plain_lines(monkeypatch, capsys) -> None:
    monkeypatch.setenv("R1LAB_PROGRESS", "plain")
    with progress("downloading", total=2e9, unit="B") as p:
        p.advance(1e9)
    err = capsys.readouterr().err
    assert "downloading: 0 B / 2.0 GB (0%)" in err and "downloading: 1.0 GB / 2.0 GB (50%)" in err


def test_relay_reads_only_whole_lines(tmp_path: Path) -> None:
    """A progress line the kernel is still writing is left for the next read, not skipped half-written."""
    from r1lab.progress import latest_line

    path = tmp_path / "progress.jsonl"
    first = json.dumps({"text": "one"}) + "\n"
    second = json.dumps({"text": "two"}) + "\n"
    path.write_text(first + second[:9])
    offset, last = latest_line(path, 0, "")
    assert (offset, last) == (len(first), "one")
    with open(path, "a") as f:
        f.write(second[9:])
    assert latest_line(path, offset, last) == (len(first) + len(second), "two")


def _notebook(path: Path, *sources: str) -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "r1lab", "display_name": "r1lab (.venv)", "language": "python"}
    params = nbf.v4.new_code_cell('params_path = ""\nrun_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *[nbf.v4.new_code_cell(s) for s in sources]]
    nbf.write(nb, path)


BARS = """
import time
from r1lab.progress import progress, step
with step("downloading weights"):
    with progress("downloading deepseek-ai/DeepSeek-R1", total=1.60443e7, unit="B") as p:
        for _ in range(8):
            time.sleep(0.4)
            p.advance(2e6)
"""


def test_notebook_bar_is_html_not_stderr(tmp_path: Path, monkeypatch) -> None:
    import papermill as pm

    from r1lab.runner import kernel_config

    monkeypatch.delenv("R1LAB_PROGRESS", raising=False)
    _notebook(tmp_path / "in.ipynb", BARS)
    pm.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="r1lab",
                        progress_bar=False, config=kernel_config())  # fmt: skip
    outputs = nbf.read(tmp_path / "out.ipynb", as_version=4).cells[-1].outputs
    assert not [o for o in outputs if o.get("name") == "stderr"], outputs
    html = [o["data"]["text/html"] for o in outputs if o.output_type == "display_data"]
    assert html and "r1lab-progress" in html[-1]
    assert "16.0 MB / 16.0 MB (100%)" in html[-1] or "16.0 MB (100%)" in html[-1], html[-1]
    text = "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")
    assert "✓ downloading weights (" in text and " s)" in text


def test_run_relays_kernel_progress_to_the_terminal_and_prints_the_summary(tmp_path: Path) -> None:
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "00_bars.ipynb", BARS.replace("0.4", "0.8"))
    master, slave = pty.openpty()
    env = {**os.environ, "R1LAB_OUTPUTS": str(tmp_path / "out"), "TERM": "xterm", "COLUMNS": "160"}
    env.pop("R1LAB_PROGRESS", None)
    env.pop("CI", None)
    proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "r1lab"), "run", str(PARAMS), "--notebooks", str(nbdir)],
                            stdout=subprocess.PIPE, stderr=slave, env=env, text=True)  # fmt: skip
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 1.0)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    # live: the runner's line carried the kernel's progress while the notebook ran
    assert "[1/1] 00_bars" in text and "downloading deepseek-ai/DeepSeek-R1:" in text and "MB/s" in text, (
        text[-3000:]
    )
    run_dir = Path(out.strip().splitlines()[-1])
    events = [json.loads(line) for line in (run_dir / "logs" / "progress.jsonl").read_text().splitlines()]
    assert events and events[-1]["final"]


@pytest.mark.parametrize("with_summary", [True])
def test_run_prints_the_summary_block(tmp_path: Path, with_summary: bool) -> None:
    """`r1lab run` ends with the same summary block as `make demo` when the run has a summary.json."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from report_run import make_run

    rd = make_run(tmp_path / "out", metrics=False)
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _notebook(nbdir / "06_noop.ipynb", "print('ok')")
    env = {**os.environ, "R1LAB_OUTPUTS": str(tmp_path / "out")}
    res = subprocess.run([str(REPO / ".venv" / "bin" / "r1lab"), "run", str(PARAMS), "--resume",
                          str(rd), "--notebooks", str(nbdir)], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        "saturation        sweep:" in res.stderr and f"report            {rd / 'report.html'}" in res.stderr
    )
