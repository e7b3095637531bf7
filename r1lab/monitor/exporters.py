"""Exporters r1lab starts next to the servers: node exporter (host CPU/memory/network) and, on GPU pods,
r1lab's nvidia-smi exporter (or dcgm-exporter where the image has it). Started through an Executor, so the same
code runs on this machine (the twin host) and on a pod."""

from __future__ import annotations

import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from r1lab.execution import Background, Executor, LocalExecutor, free_port
from r1lab.teardown import Ledger

NODE_EXPORTER_LOCAL = "/usr/bin/prometheus-node-exporter"


def poll_ok(url: str, alive: Callable[[], bool], timeout: float, interval: float = 0.2) -> tuple[str, str]:
    """GET `url` every `interval` s until it answers 200 ("ok"), `alive()` turns false ("exited") or `timeout` s
    pass ("timeout"); returns that outcome and the last connection error."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not alive():
            return "exited", last
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return "ok", ""
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(interval)
    return "timeout", last


def wait_metrics(
    executor: Executor, port: int, proc: Background, timeout: float = 30.0, log_offset: int = 0
) -> None:
    """Until http://127.0.0.1:port/metrics answers 200 on that host (through the executor's forward). An exporter
    that exits is reported with the last lines of its log from byte `log_offset` on (what this start wrote)."""
    with executor.forward(port) as local_port:
        url = f"http://127.0.0.1:{local_port}/metrics"
        outcome, _ = poll_ok(url, lambda: executor.alive(proc.pid), timeout)
        if outcome == "exited":
            log = shlex.quote(proc.log)
            tail = executor.run(f"tail -c +{log_offset + 1} {log} | tail -n 20", check=False).output
            raise RuntimeError(f"exporter `{proc.command}` on {executor.name} exited:\n{tail}")
    if outcome != "ok":
        raise RuntimeError(f"exporter `{proc.command}` on {executor.name}: no /metrics after {timeout:.0f}s")


def _record(ledger: Ledger | None, executor: Executor, proc: Background, name: str, port: int) -> None:
    if ledger is not None and isinstance(executor, LocalExecutor):
        ledger.record(
            "local-process", str(proc.pid), name, "local", pid=proc.pid, pgid=proc.pid, command=proc.command,
            port=port,
        )  # fmt: skip


PORT_ATTEMPTS = 3


def _start_on_a_free_port(
    executor: Executor, command: Callable[[int], str], log: str, ledger: Ledger | None, name: str
) -> tuple[Background, int]:
    """Start `command(port)` on a port free when picked and wait for its /metrics. The port is free when picked,
    not held: a connection made before the exporter binds can take it (an ephemeral port), so an exporter that
    exits with "address already in use" is started again on another port, up to PORT_ATTEMPTS times. The log is
    shared by the attempts (appended to): each attempt's failure is judged by what that attempt wrote."""
    attempt = 1
    while True:
        port = free_port(executor)
        offset = _size(executor, log)
        proc = executor.start(command(port), log=log)
        _record(ledger, executor, proc, name, port)
        try:
            wait_metrics(executor, port, proc, log_offset=offset)
        except RuntimeError as exc:
            if attempt == PORT_ATTEMPTS or "address already in use" not in str(exc).lower():
                raise
            if ledger is not None and isinstance(executor, LocalExecutor):
                ledger.deleted("local-process", str(proc.pid), reason=f"port {port} was taken; started again")
            attempt += 1
            continue
        return proc, port


def _size(executor: Executor, path: str) -> int:
    """The size in bytes of `path` on the executor's host (0: none there yet)."""
    command = f"stat -c %s {shlex.quote(path)} 2>/dev/null || echo 0"
    return int(executor.run(command, check=False, timeout=30).output.strip().splitlines()[-1])


def start_node_exporter(
    executor: Executor,
    workdir: str,
    *,
    ledger: Ledger | None = None,
    host: str = "127.0.0.1",
    name: str = "r1lab-node-exporter",
) -> tuple[Background, int]:
    """Start prometheus-node-exporter bound to host:free-port; returns the process and the port."""
    binary = NODE_EXPORTER_LOCAL if isinstance(executor, LocalExecutor) else "prometheus-node-exporter"
    return _start_on_a_free_port(executor, lambda port: f"{binary} --web.listen-address={host}:{port}",
                                 f"{workdir}/node-exporter.log", ledger, name)  # fmt: skip


def start_gpu_exporter(
    executor: Executor,
    workdir: str,
    *,
    ledger: Ledger | None = None,
    host: str = "127.0.0.1",
    nvidia_smi: str = "nvidia-smi",
    python: str = "python3",
    name: str = "r1lab-gpu-exporter",
) -> tuple[Background, int]:
    """Copy r1lab's nvidia-smi exporter to the host and start it; returns the process and the port."""
    script = f"{workdir}/gpu_exporter.py"
    executor.run(f"mkdir -p {shlex.quote(workdir)}", timeout=30)
    executor.put(Path(__file__).with_name("gpu_exporter.py"), script)

    def cmd(port: int) -> str:
        return " ".join(shlex.quote(a) for a in (python, script, "--host", host, "--port", str(port),
                                                 "--nvidia-smi", nvidia_smi))  # fmt: skip

    return _start_on_a_free_port(executor, cmd, f"{workdir}/gpu-exporter.log", ledger, name)
