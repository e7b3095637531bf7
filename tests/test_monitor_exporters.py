"""An exporter's port is picked free, then bound by the exporter a moment later: a port taken in between (a
connection's ephemeral port, another server) makes it exit with "address already in use", and it is started again
on another port, the first attempt's ledger entry closed."""

from __future__ import annotations

import os
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from r1lab import monitor
from r1lab.execution import LocalExecutor
from r1lab.monitor import exporters
from r1lab.teardown import Ledger


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_node_exporter_whose_port_was_taken_starts_again_on_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()  # what took the port between the pick and the exporter's bind
    picks = iter([taken.getsockname()[1], _free()])
    monkeypatch.setattr(exporters, "free_port", lambda executor: next(picks))
    ledger = Ledger(tmp_path)
    proc = None
    try:
        proc, port = monitor.start_node_exporter(LocalExecutor(), str(tmp_path / "work"), ledger=ledger)
        assert port != taken.getsockname()[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"node_cpu_seconds_total" in r.read()
        assert "address already in use" in (tmp_path / "work" / "node-exporter.log").read_text()
        assert [e["meta"]["port"] for e in ledger.live()] == [port]  # the first attempt's entry is closed
    finally:
        taken.close()
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)


def test_another_failure_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    picks: list[int] = []
    monkeypatch.setattr(exporters, "free_port", lambda executor: picks.append(_free()) or picks[-1])
    with pytest.raises(RuntimeError, match="exited"):
        exporters._start_on_a_free_port(LocalExecutor(), lambda port: "echo no such exporter; exit 3",
                                        str(tmp_path / "x.log"), None, "x")  # fmt: skip
    assert len(picks) == 1


def test_a_failure_is_judged_by_what_this_attempt_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is appended to (an earlier run's exporter on the same host, an earlier attempt): an "address already
    in use" written before this attempt neither makes its other failure a retry nor shows in its error."""
    log = tmp_path / "x.log"
    log.write_text("listen tcp 127.0.0.1:9100: bind: address already in use\n")
    picks: list[int] = []
    monkeypatch.setattr(exporters, "free_port", lambda executor: picks.append(_free()) or picks[-1])
    with pytest.raises(RuntimeError, match="exited") as err:
        exporters._start_on_a_free_port(LocalExecutor(), lambda port: "echo no such exporter; exit 3", str(log),
                                        None, "x")  # fmt: skip
    assert len(picks) == 1
    assert "no such exporter" in str(err.value) and "already in use" not in str(err.value)
