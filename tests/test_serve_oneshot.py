"""A one-shot command (`ray start`) is retried after its stop command only on the failure Ray gives when a busy
machine makes its raylet register later than Ray's fixed 30 s; any other failure is reported at once, and the
last transient one too after ONE_SHOT_ATTEMPTS. Every attempt's output stays in the command's log."""

from __future__ import annotations

from pathlib import Path

import pytest

from r1lab.execution import LocalExecutor
from r1lab.serve.commands import Command, Deployment
from r1lab.serve.launch import ONE_SHOT_ATTEMPTS, Launcher, ServeError
from r1lab.teardown import Ledger

TIMED_OUT = "Exception: The current node timed out during startup. This could happen because some of the raylet failed to startup or the GCS has become overloaded."  # noqa: E501


def _fake_ray(tmp_path: Path, outcomes: list[str], late: int = 10**6) -> Path:
    """A `ray` that answers `start` with the next of `outcomes` ('ok', 'timeout' or 'port') and logs each call."""
    calls, script = tmp_path / "calls", tmp_path / "ray"
    script.write_text(f"""#!/bin/bash
echo "$1" >> {calls}
[ "$1" = stop ] && {{ echo "Stopped all 3 Ray processes."; exit 0; }}
if [ "$1" = status ]; then  # the raylet registers at the {late}th status call after a timed-out start
  [ $(grep -c status {calls}) -ge {late} ] && echo " 0.0/8.0 GPU" || echo "No cluster status."; exit 0
fi
n=$(grep -c start {calls}); outcomes=({" ".join(outcomes)})
case ${{outcomes[$((n-1))]}} in
  ok) echo "Ray runtime started."; exit 0;;
  timeout) echo "{TIMED_OUT}"; exit 1;;
  port) echo "ValueError: Ray component gcs_server is trying to use a port number 6379 that is used by other components."; exit 1;;
esac
""")
    script.chmod(0o755)
    return script


def _start(tmp_path: Path, outcomes: list[str], late: int = 10**6) -> tuple[Launcher, list[str]]:
    ray = _fake_ray(tmp_path, outcomes, late)
    argv = ["ray", "start", "--head", "--node-ip-address", "10.0.0.1", "--port", "6379", "--num-gpus", "8"]
    c = Command("ray-head", "head", argv, background=False, stop_argv=["ray", "stop"])
    dep = Deployment("multi", "exp", "mocker", "Ray", [c], "head", 8000, "m")  # type: ignore[arg-type]
    launcher = Launcher(tmp_path / "run", {"head": LocalExecutor()}, programs={"ray": str(ray)})
    try:
        launcher.start(dep, c)
    finally:
        calls = (tmp_path / "calls").read_text().split()
    return launcher, calls


@pytest.fixture(autouse=True)
def _short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("r1lab.serve.launch.RAY_LATE_S", 7.0)  # about 3 status polls


def test_a_raylet_that_registers_after_rays_30_s_is_waited_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _start(tmp_path, ["timeout", "ok"], late=2)
    assert (tmp_path / "calls").read_text().split() == ["start", "status", "status"]  # no restart
    assert "registered" in capsys.readouterr().out
    log = (tmp_path / "run" / "logs" / "serve" / "multi" / "ray-head.log").read_text()
    assert "timed out during startup" in log and "0.0/8.0 GPU" in log


def test_ray_start_timed_out_under_load_is_retried_after_ray_stop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    launcher, calls = _start(tmp_path, ["timeout", "ok"])
    assert [x for x in calls if x != "status"] == ["start", "stop", "start"] and "status" in calls
    assert "attempt 1/3" in capsys.readouterr().out  # said, never silent
    log = (tmp_path / "run" / "logs" / "serve" / "multi" / "ray-head.log").read_text()
    assert "timed out during startup" in log and "# attempt 2" in log and "Ray runtime started." in log
    # recorded in the ledger (before it ran), so the run's teardown stops it
    assert [e["kind"] for e in Ledger(tmp_path / "run").live()] == ["serve-daemons"]


def test_another_ray_failure_is_never_retried(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="port"):
        _start(tmp_path, ["port", "ok"])
    assert (tmp_path / "calls").read_text().split() == ["start"]


def test_ray_start_timing_out_every_time_fails_with_rays_message(tmp_path: Path) -> None:
    with pytest.raises(ServeError) as err:
        _start(tmp_path, ["timeout"] * ONE_SHOT_ATTEMPTS + ["ok"])
    assert "timed out during startup" in str(err.value)
    calls = (tmp_path / "calls").read_text().split()
    assert calls.count("start") == ONE_SHOT_ATTEMPTS and calls.count("stop") == ONE_SHOT_ATTEMPTS - 1
