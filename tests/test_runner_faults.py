"""The runner under faults, with small notebooks: the budget guard stops and tears down a run at its cap; a run
that cannot succeed is refused before anything is rented; --resume keeps attempts apart; HF_TOKEN reaches only
the kernel that downloads weights; a kernel's own log never reaches the runner's terminal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat as nbf
import pytest

from r1lab.cloud.emulator import Emulator, Timings
from r1lab.outcome import run_outcome
from r1lab.runner import EXIT_BUDGET, run
from r1lab.teardown import Ledger

REPO = Path(__file__).resolve().parent.parent
PARAMS = REPO / "params" / "runpod-1x8-h200.yaml"
KEY = "rpa_RUNNERFAULTKEY0123456789abcdef"


def _nb(path: Path, *sources: str) -> None:
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbf.v4.new_code_cell('params_path = ""\nrun_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *[nbf.v4.new_code_cell(s) for s in sources]]
    nbf.write(nb, path)


def _params(tmp_path: Path, old: str, new: str) -> Path:
    text = PARAMS.read_text()
    assert old in text
    p = tmp_path / "runpod-1x8-h200.yaml"
    p.write_text(text.replace(old, new))
    return p


RENT_A_POD = """
import time
import r1lab
from r1lab.cloud import ledger as cl
from r1lab.cloud.runpod import PodSpec, RunPodClient
ctx = r1lab.open_run(params_path, run_dir)
client = RunPodClient()
pod = client.create_pod(PodSpec(name=ctx.resource_name("head"), image="img", gpu_type="NVIDIA H200", gpu_count=8))
cl.record(ctx.ledger, client, cl.KIND_POD, pod["id"], pod["name"], usd_per_hour=pod["cost"])
print("rented", pod["id"], pod["cost"])
time.sleep(120)
"""


def test_budget_guard_stops_the_run_at_its_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emu = Emulator(api_key=KEY, timings=Timings(0.1, 0.1, 0.1)).start()
    try:
        monkeypatch.setenv("RUNPOD_API_KEY", KEY)
        monkeypatch.setenv("RUNPOD_API_BASE", emu.url)
        monkeypatch.setenv("R1LAB_OUTPUTS", str(tmp_path / "outputs"))
        nbdir = tmp_path / "nbs"
        nbdir.mkdir()
        _nb(nbdir / "02_rent.ipynb", RENT_A_POD)
        _nb(nbdir / "03_never.ipynb", "print('should not run')")
        # $36.72/h for the pod: a $0.02 cap is reached within about 2 s; the time cap (72 s) is far
        params = _params(
            tmp_path, "budget_usd: 80\n  budget_hours: 2", "budget_usd: 0.02\n  budget_hours: 0.02"
        )
        t0 = time.monotonic()
        ctx, code = run(str(params), notebook_dir=nbdir)
        took = time.monotonic() - t0
        assert code == EXIT_BUDGET
        assert took < 100, took  # the notebook sleeps 120 s: the guard stopped it
        budget = json.loads((ctx.run_dir / "budget.json").read_text())
        assert budget["tripped"].startswith("cost $") and "reached the cap $0.02" in budget["tripped"]
        assert 0.02 <= budget["usd"] < 0.2 and budget["priced_by"] == "r1lab.cost.run_total"
        assert emu.pods == {} and Ledger(ctx.run_dir).live() == []
        assert not (ctx.run_dir / "notebooks" / "03_never.ipynb").exists()
        nb = nbf.read(ctx.run_dir / "notebooks" / "02_rent.ipynb", as_version=4)
        assert "budget guard tore the run down" in nb.cells[-1].source
        outcome = run_outcome(ctx.run_dir)
        assert outcome is not None and not outcome.complete and outcome.code == EXIT_BUDGET
        assert "stopped by the budget guard during 02_rent" in outcome.line()
        for f in ctx.run_dir.rglob("*"):
            if f.is_file():
                assert KEY.encode() not in f.read_bytes(), f
    finally:
        emu.stop()


@pytest.mark.parametrize(
    "params,old,new,expect",
    [
        ("runpod-1x8-h100nvl.yaml", "max_model_len: 8192", "max_model_len: 163840", "DOES NOT FIT"),
        ("runpod-1x8-h200.yaml", "\nload:\n", None, "is empty"),  # load: is its last key: cut there
    ],
)
def test_a_run_that_cannot_succeed_is_refused_before_renting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, params: str, old: str, new: str | None, expect: str
) -> None:
    text = (REPO / "params" / params).read_text()
    assert old in text
    if new is None:  # the scenario list cut out
        text = text[: text.index(old)] + "\nload:\n  scenarios: []\n"
    else:
        text = text.replace(old, new)
    p = tmp_path / params
    p.write_text(text)
    monkeypatch.setenv("R1LAB_OUTPUTS", str(tmp_path / "outputs"))
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    marker = tmp_path / "ran"
    for name in ("01_environment", "05_load_test"):
        _nb(nbdir / f"{name}.ipynb", f"open({str(marker)!r}, 'a').write('{name}')")
    ctx, code = run(str(p), notebook_dir=nbdir)
    assert code == 1 and not marker.exists()
    assert not (ctx.run_dir / "ledger.jsonl").exists() or Ledger(ctx.run_dir).entries() == []
    events = [json.loads(x) for x in (ctx.run_dir / "runner.jsonl").read_text().splitlines()]
    refused = [e for e in events if e["event"] == "run_refused"]
    assert len(refused) == 1 and expect in refused[0]["reason"], refused
    assert "notebook_started" not in {e["event"] for e in events}


WRITE_RECORDS = """
import json, os, r1lab
ctx = r1lab.open_run(params_path, run_dir)
out = ctx.run_dir / "load" / "sweep"
out.mkdir(parents=True, exist_ok=True)
attempt = len(list((ctx.run_dir / "attempts").glob("*"))) if (ctx.run_dir / "attempts").exists() else 0
with open(out / "requests.jsonl", "a") as f:
    for i in range(10):
        f.write(json.dumps({"request_id": f"r{i}", "attempt": attempt}) + "\\n")
        f.flush()
        if attempt == 0 and i == 4:
            os.kill(os.getppid(), 9)  # the runner dies mid-load: 5 records of this attempt are on disk
            os._exit(1)
open(ctx.run_dir / "env-05.json", "w").write(json.dumps({"hf": os.environ.get("HF_TOKEN")}))
"""

ENV_01 = """
import json, os, r1lab
ctx = r1lab.open_run(params_path, run_dir)
open(ctx.run_dir / "env-01.json", "w").write(json.dumps({"hf": os.environ.get("HF_TOKEN")}))
"""


def test_resume_keeps_attempts_apart_and_hf_token_stays_in_01(tmp_path: Path) -> None:
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    _nb(nbdir / "01_environment.ipynb", ENV_01)
    _nb(nbdir / "05_load_test.ipynb", WRITE_RECORDS)
    token = "hf_RunnerFault0123456789abcdefghij"
    env = {**os.environ, "R1LAB_OUTPUTS": str(tmp_path / "outputs"), "HF_TOKEN": token}
    cmd = [sys.executable, "-m", "r1lab.cli", "run", str(PARAMS), "--notebooks", str(nbdir)]
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == -signal.SIGKILL, first.stderr
    [run_dir] = [p.parent for p in (tmp_path / "outputs").glob("*/*/run.json")]
    outcome = run_outcome(run_dir)
    assert outcome is not None and not outcome.complete and "killed during 05_load_test" in outcome.line()
    second = subprocess.run(
        [*cmd, "--resume", str(run_dir)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    assert "= 01_environment: complete" in second.stderr and "kept aside" in second.stderr
    lines = (run_dir / "load" / "sweep" / "requests.jsonl").read_text().splitlines()
    assert [json.loads(x)["attempt"] for x in lines] == [1] * 10  # exactly one attempt's records
    aside = (run_dir / "attempts" / "05_load_test-1" / "load" / "sweep" / "requests.jsonl").read_text()
    assert [json.loads(x)["request_id"] for x in aside.splitlines()] == [f"r{i}" for i in range(5)]
    assert run_outcome(run_dir).complete
    # HF_TOKEN only in the kernel that downloads the weights
    assert json.loads((run_dir / "env-01.json").read_text())["hf"] == token
    assert json.loads((run_dir / "env-05.json").read_text())["hf"] is None
    # the kernels' own logs (IPKernelApp warnings, ZMQError on a kill) stay in logs/kernels/, never the terminal
    assert (
        "IPKernelApp" not in first.stderr + second.stderr and "Traceback" not in first.stderr + second.stderr
    )
    assert (run_dir / "logs" / "kernels" / "05_load_test.log").exists()


def test_background_programs_get_no_account_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prometheus and the exporters start through LocalExecutor.start: HF_TOKEN and RUNPOD_API_KEY stay out."""
    from r1lab.execution import LocalExecutor

    monkeypatch.setenv("HF_TOKEN", "hf_BackgroundSecret0123456789")
    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    monkeypatch.setenv("R1LAB_VISIBLE", "yes")
    ex = LocalExecutor()
    bg = ex.start("env", log=str(tmp_path / "env.log"), env={"GIVEN": "1"})
    deadline = time.monotonic() + 10
    while ex.alive(bg.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    text = (tmp_path / "env.log").read_text()
    assert "R1LAB_VISIBLE=yes" in text and "GIVEN=1" in text
    assert "HF_TOKEN" not in text and "RUNPOD_API_KEY" not in text and KEY not in text
