"""The current run of a params file: notebooks stepped through by hand (run_dir empty, as in JupyterLab) join it,
00_plan starts one, a torn-down run is not joined (06_report still reads it); `r1lab runs` lists each run's state."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from r1lab.rundir import open_run
from r1lab.runs import run_state
from r1lab.teardown import teardown_run

REPO = Path(__file__).resolve().parent.parent
PARAMS = "params/runpod-1x8-h200.yaml"  # provider runpod: joining starts nothing


def test_notebooks_by_hand_join_the_current_run(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("R1LAB_OUTPUTS", str(tmp_path / "out"))
    monkeypatch.chdir(REPO / "notebooks")  # JupyterLab's cwd: params_path is relative to the repo
    first = open_run(PARAMS, "", step="00_plan")
    assert "00_plan: new run" in capsys.readouterr().out
    second = open_run(PARAMS, "", step="01_environment")
    said = capsys.readouterr().out
    assert second.run_dir == first.run_dir
    assert said.startswith("01_environment: joined the current run of params/runpod-1x8-h200.yaml")
    assert first.run_id in said and "notebooks: 00_plan" in said
    marker = tmp_path / "marker"
    second.ledger.record("test-marker", "v", second.resource_name("volume"), "local", path=str(marker))
    third = open_run(PARAMS, "", step="05_load_test")
    assert third.run_dir == first.run_dir and "1 live resource" in capsys.readouterr().out
    st = run_state(first.run_dir)
    assert (
        st.state == "open" and st.notebooks == ["00_plan", "01_environment", "05_load_test"] and st.live == 1
    )

    # 00_plan again starts a new run and says what the previous one still holds
    again = open_run(PARAMS, "", step="00_plan")
    said = capsys.readouterr().out
    assert again.run_dir != first.run_dir and f"r1lab teardown {first.run_dir}" in said
    # a torn-down run is not joined by a notebook that needs live resources; 06 reads any run
    teardown_run(again.run_dir)
    assert open_run(PARAMS, "", step="06_report").run_dir == again.run_dir
    teardown_run(first.run_dir)
    assert run_state(first.run_dir).state == "torn down"
    again.ledger.record("test-marker", "x", "x", "local", path=str(marker))
    teardown_run(again.run_dir)
    fresh = open_run(PARAMS, "", step="02_single_node")
    assert fresh.run_dir not in (first.run_dir, again.run_dir)
    assert f"the current run {again.run_id} is torn down" in capsys.readouterr().out

    # an explicit run_dir (the runner's) is that run, and the notebook says so
    explicit = open_run(PARAMS, str(first.run_dir), step="03_multi_node")
    assert explicit.run_dir == first.run_dir
    assert capsys.readouterr().out.startswith(f"03_multi_node: run runpod-1x8-h200/{first.run_id}")


def test_r1lab_runs_lists_states(tmp_path: Path) -> None:
    env = {**os.environ, "R1LAB_OUTPUTS": str(tmp_path / "out")}
    # a run by the runner (completed), then one stepped through by hand (open, current)
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    (nbdir / "00_x.ipynb").write_text(json.dumps({
        "cells": [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": 'params_path = ""\nrun_dir = ""',
                   "outputs": [], "execution_count": None}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }))  # fmt: skip
    r1lab = str(REPO / ".venv" / "bin" / "r1lab")
    res = subprocess.run([r1lab, "run", PARAMS, "--notebooks", str(nbdir)], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    done = Path(res.stdout.strip().splitlines()[-1])
    os.environ["R1LAB_OUTPUTS"] = env["R1LAB_OUTPUTS"]
    try:
        by_hand = open_run(REPO / PARAMS, "", step="00_plan")
    finally:
        del os.environ["R1LAB_OUTPUTS"]
    out = subprocess.run([r1lab, "runs"], env=env, capture_output=True, text=True, timeout=60).stdout
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if done.name in line)
    assert not lines[row].startswith("*") and lines[row + 1].strip().startswith("completed; notebooks: 00_x")
    row = next(i for i, line in enumerate(lines) if by_hand.run_id in line)
    assert lines[row].startswith("* ") and PARAMS in lines[row]
    assert lines[row + 1].strip().startswith("open; notebooks: 00_plan; no live resources")


@pytest.mark.parametrize("event", ["run_interrupted"])
def test_state_interrupted(tmp_path: Path, monkeypatch, event: str) -> None:
    monkeypatch.setenv("R1LAB_OUTPUTS", str(tmp_path))
    ctx = open_run(REPO / PARAMS, "", step="00_plan")
    with open(ctx.run_dir / "runner.jsonl", "a") as f:
        for e in ({"event": "run_started"}, {"event": event}, {"event": "run_finished", "code": 130}):
            f.write(json.dumps(e) + "\n")
    ctx.ledger.record("test-marker", "p", "p", "local", path=str(tmp_path / "m"))
    st = run_state(ctx.run_dir)
    assert st.state == "interrupted" and "r1lab teardown" in st.detail and not st.joinable
