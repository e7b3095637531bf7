"""r1lab.teardown owns a registry, not a table of upper modules: each ledger entry names its handler (#19)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import r1lab.serve.launch  # noqa: F401  (registers pod-process and serve-daemons, as on import in a run)
from r1lab import teardown


def test_entries_name_their_handler_and_a_fresh_process_tears_down_through_it(tmp_path: Path) -> None:
    ledger = teardown.Ledger(tmp_path)
    e = ledger.record("serve-daemons", "ray@local", "ray", "twin", host="local@127.0.0.1",
                      stop=f"echo stopped >> {tmp_path / 'stopped'}", env={})  # fmt: skip
    assert e["handler"] == "r1lab.serve.launch:run_stop_command"
    marker = ledger.record("test-marker", "m1", "m", "local", path=str(tmp_path / "marker"))
    assert marker["handler"] == "r1lab.teardown:touch_marker"
    code = (
        "import sys; from r1lab import teardown\n"
        "assert 'serve-daemons' not in teardown._HANDLERS, 'a fresh process has not imported r1lab.serve'\n"
        "r = teardown.teardown_run(sys.argv[1]); print(r); sys.exit(0 if r.ok else 1)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / "stopped").read_text() == "stopped\n"
    assert (tmp_path / "marker").read_text() == "torn down m1\n"
    assert teardown.Ledger(tmp_path).live() == []


def test_unknown_kind_without_handler_fails_clearly(tmp_path: Path) -> None:
    ledger = teardown.Ledger(tmp_path)
    ledger.record("no-such-kind", "x1", "x", "local")
    report = teardown.teardown_run(tmp_path)
    assert not report.ok
    assert "no teardown handler registered for resource kind 'no-such-kind'" in report.failed[0][1]
    assert "import the module that creates such resources" in report.failed[0][1]


def test_a_handler_name_outside_r1lab_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ledger.jsonl").write_text(
        '{"event": "created", "kind": "evil", "id": "e", "name": "e", "provider": "x", "time": "t", "meta": {},'
        ' "handler": "os:system"}\n'
    )
    report = teardown.teardown_run(tmp_path)
    assert not report.ok and "not an r1lab 'module:function'" in report.failed[0][1]
