"""The runner: run dirs, papermill execution, failure reporting, resume, and teardown after failure and signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat as nbf
import pytest

from r1lab.runner import run
from r1lab.teardown import Ledger

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params" / "runpod-1x8-h200.yaml"  # provider runpod: the runner itself starts nothing

RECORD = """
import r1lab
ctx = r1lab.open_run(params_path, run_dir)
ctx.ledger.record("test-marker", "{rid}", ctx.resource_name("{rid}"), "local", path={marker!r})
print("recorded {rid}")
"""


def _nb(path: Path, *sources: str) -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbf.v4.new_code_cell('params_path = ""\nrun_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *[nbf.v4.new_code_cell(s) for s in sources]]
    nbf.write(nb, path)


@pytest.fixture
def suite(tmp_path: Path) -> tuple[Path, Path]:
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    return nbdir, tmp_path / "marker.txt"


def test_failing_notebook_is_reported_and_torn_down(
    suite: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbdir, marker = suite
    _nb(nbdir / "00_first.ipynb", RECORD.format(rid="a", marker=str(marker)))
    _nb(
        nbdir / "01_second.ipynb",
        RECORD.format(rid="b", marker=str(marker)),
        "x = 1",
        "raise ValueError('boom')",
    )
    _nb(nbdir / "02_never.ipynb", "print('should not run')")
    monkeypatch.setenv("R1LAB_OUTPUTS", str(tmp_path / "outputs"))
    ctx, code = run(str(PARAMS), notebook_dir=nbdir)
    assert code == 1
    # both resources torn down, newest first; the ledger proves it
    assert marker.read_text().splitlines() == ["torn down b", "torn down a"]
    assert Ledger(ctx.run_dir).live() == []
    events = [json.loads(line) for line in (ctx.run_dir / "runner.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["event"] == "notebook_failed"]
    assert len(failed) == 1 and failed[0]["notebook"] == "01_second"
    assert "ValueError: boom" in failed[0]["error"] and "cell" in failed[0]["error"]
    # what was produced up to the failure stays: executed notebooks (the failing one too), HTML
    names = {p.name for p in (ctx.run_dir / "notebooks").iterdir()}
    assert {"00_first.ipynb", "00_first.html", "01_second.ipynb", "01_second.html"} <= names
    assert "02_never.ipynb" not in names
    run_json = json.loads((ctx.run_dir / "run.json").read_text())
    assert run_json["schema_version"] == 1 and run_json["params"]["name"] == "runpod-1x8-h200"
    assert {"python", "papermill", "ray"} <= set(run_json["versions"]) and run_json["host"]["cpus"]

    # --resume skips the completed notebook and retries the failed one, keeping the failed attempt
    (nbdir / "01_second.ipynb").unlink()
    _nb(nbdir / "01_second.ipynb", "print('fixed')")
    ctx2, code2 = run(str(PARAMS), resume_dir=str(ctx.run_dir), notebook_dir=nbdir)
    assert code2 == 0 and ctx2.run_dir == ctx.run_dir
    names = {p.name for p in (ctx.run_dir / "notebooks").iterdir()}
    assert "02_never.ipynb" in names and any(n.startswith("01_second.failed-") for n in names)
    started = [
        json.loads(x)["notebook"]
        for x in (ctx.run_dir / "runner.jsonl").read_text().splitlines()
        if json.loads(x)["event"] == "notebook_started"
    ]
    assert started.count("00_first") == 1


@pytest.mark.parametrize(
    "sig,expected_code",
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGQUIT, 131)],
)
def test_signal_tears_down(suite: tuple[Path, Path], tmp_path: Path, sig: int, expected_code: int) -> None:
    nbdir, marker = suite
    _nb(
        nbdir / "00_hold.ipynb", RECORD.format(rid="held", marker=str(marker)), "import time\ntime.sleep(120)"
    )
    out_root = tmp_path / "outputs"
    env = {**os.environ, "R1LAB_OUTPUTS": str(out_root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "r1lab.cli", "run", str(PARAMS), "--notebooks", str(nbdir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 90
    ledger_files: list[Path] = []
    while time.monotonic() < deadline:
        ledger_files = [p for p in out_root.glob("*/*/ledger.jsonl") if p.read_text().strip()]
        if ledger_files:
            break
        time.sleep(0.2)
    assert ledger_files, "the notebook never recorded its resource"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == expected_code, err
    assert marker.read_text().splitlines() == ["torn down held"]
    assert "teardown: 1 deleted, 0 failed" in err
    assert Ledger(ledger_files[0].parent).live() == []


KERNEL = """
import json, os, time
import psutil
p = psutil.Process()
open(os.path.join(run_dir, "kernel-{n}.json"), "w").write(json.dumps({{"pid": p.pid, "created": p.create_time(),
    "hf": os.environ.get("HF_TOKEN"), "cwd": os.getcwd()}}))
"""


def _started(run_dir: Path) -> dict[str, float]:
    from datetime import datetime

    events = [json.loads(x) for x in (run_dir / "runner.jsonl").read_text().splitlines()]
    return {
        e["notebook"][:2]: datetime.fromisoformat(e["time"]).timestamp()
        for e in events
        if e["event"] == "notebook_started"
    }


def _cmdline(p: Any) -> str:
    """A child's command line; "" once it has ended (gone, or a zombie: psutil raises for both), which no running
    kernel is. Another test's exited child left unreaped, or one ending during the scan, must not fail this one."""
    import psutil

    try:
        return " ".join(p.cmdline())
    except psutil.NoSuchProcess:  # ZombieProcess is one
        return ""


def test_the_next_kernel_is_started_beforehand_with_its_own_environment_and_none_is_left(
    suite: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    nbdir, _ = suite
    for n in ("00_a", "01_environment", "02_c"):
        _nb(nbdir / f"{n}.ipynb", KERNEL.format(n=n[:2]))
    _nb(nbdir / "03_fails.ipynb", KERNEL.format(n="03"), "raise ValueError('boom')")
    _nb(nbdir / "04_never.ipynb", KERNEL.format(n="04"))
    monkeypatch.setenv("R1LAB_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setenv("HF_TOKEN", "hf_PrestartedKernel0123456789abcd")
    ctx, code = run(str(PARAMS), notebook_dir=nbdir)
    assert code == 1
    started = _started(ctx.run_dir)
    k = {n: json.loads((ctx.run_dir / f"kernel-{n}.json").read_text()) for n in ("00", "01", "02", "03")}
    assert k["00"]["created"] > started["00"] - 1  # the first kernel is papermill's own
    for n in ("01", "02", "03"):  # each later one was up before its notebook started
        assert k[n]["created"] < started[n], (n, k[n]["created"], started[n])
    assert {n: k[n]["hf"] for n in k} == {
        "00": None,
        "01": "hf_PrestartedKernel0123456789abcd",
        "02": None,
        "03": None,
    }
    assert {x["cwd"] for x in k.values()} == {str(REPO)}
    assert not (ctx.run_dir / "kernel-04.json").exists()
    # no kernel outlives the run: the used ones, and the one started for 04, which never ran
    kids = [p for p in psutil.Process().children(recursive=True) if "ipykernel" in _cmdline(p)]
    assert not kids and not any(psutil.pid_exists(x["pid"]) for x in k.values())
    assert (
        ctx.run_dir / "logs" / "kernels" / "04_never.log"
    ).exists()  # its kernel did start, and logged there
