"""Exporters r1lab starts next to the servers: node exporter (host CPU/memory/network) and, on GPU pods,
r1lab's nvidia-smi exporter (or dcgm-exporter where the image has it). Started through an Executor, so the same
code runs on this machine (the twin host) and on a pod."""

from __future__ import annotations

import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path

from r1lab.execution import Background, Executor, LocalExecutor
from r1lab.teardown import Ledger

NODE_EXPORTER_LOCAL = "/usr/bin/prometheus-node-exporter"
_FREE_PORT = (
    "python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])\""
)


def free_port(executor: Executor) -> int:
    """A port free on the executor's host right now (bind 0 there, release, report)."""
    return int(executor.run(_FREE_PORT, timeout=30).output.strip().splitlines()[-1])


def wait_metrics(executor: Executor, port: int, proc: Background, timeout: float = 30.0) -> None:
    """Until http://127.0.0.1:port/metrics answers 200 on that host (through the executor's forward)."""
    deadline = time.monotonic() + timeout
    with executor.forward(port) as local_port:
        while time.monotonic() < deadline:
            if not executor.alive(proc.pid):
                tail = executor.run(f"tail -n 20 {shlex.quote(proc.log)}", check=False).output
                raise RuntimeError(f"exporter `{proc.command}` on {executor.name} exited:\n{tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{local_port}/metrics", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
    raise RuntimeError(f"exporter `{proc.command}` on {executor.name}: no /metrics after {timeout:.0f}s")


def _record(ledger: Ledger | None, executor: Executor, proc: Background, name: str, port: int) -> None:
    if ledger is not None and isinstance(executor, LocalExecutor):
        ledger.record(
            "local-process", str(proc.pid), name, "local", pid=proc.pid, pgid=proc.pid, command=proc.command,
            port=port,
        )  # fmt: skip


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
    port = free_port(executor)
    cmd = f"{binary} --web.listen-address={host}:{port}"
    proc = executor.start(cmd, log=f"{workdir}/node-exporter.log")
    _record(ledger, executor, proc, name, port)
    wait_metrics(executor, port, proc)
    return proc, port


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
    port = free_port(executor)
    cmd = " ".join(shlex.quote(a) for a in (python, script, "--host", host, "--port", str(port),
                                            "--nvidia-smi", nvidia_smi))  # fmt: skip
    proc = executor.start(cmd, log=f"{workdir}/gpu-exporter.log")
    _record(ledger, executor, proc, name, port)
    wait_metrics(executor, port, proc)
    return proc, port
