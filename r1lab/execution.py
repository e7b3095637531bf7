"""Where commands run: the one small interface that serving, weight download and remote load generation use.

An `Executor` runs shell commands on one host: a RunPod pod over SSH (`r1lab.cloud.sshexec.SshExecutor`), a twin
pod (the same SSH code), or this machine (`LocalExecutor`, for tests and local tools). Background processes are
started detached in their own session, with their output in a log file on that host, so they outlive the
notebook kernel that launched them; they are stopped by process group.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from r1lab.secrets import redact

LineSink = Callable[[str], None]
ACCOUNT_SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "RUNPOD_API_KEY")


class CommandError(RuntimeError):
    """A command exited non-zero (or timed out); carries the host, command, code and output tail."""

    def __init__(self, host: str, command: str, code: int | None, tail: str) -> None:
        self.host, self.command, self.code, self.tail = host, command, code, tail
        what = "timed out" if code is None else f"exited {code}"
        super().__init__(f"[{host}] `{redact(command)[:200]}` {what}\n{redact(tail)[-2000:]}")


@dataclass
class Result:
    code: int
    output: str  # stdout and stderr interleaved


@dataclass
class Background:
    """A detached process on some host: its process-group id and log file there."""

    host: str
    pid: int
    log: str
    command: str


@runtime_checkable
class Executor(Protocol):
    """Runs commands on one host."""

    name: str  # e.g. the pod's role, or "local"
    address: str  # how this machine reaches the host (IP or hostname)

    def run(
        self,
        command: str,
        *,
        env: dict[str, str] | None = None,
        timeout: float | None = 600,
        on_line: LineSink | None = None,
        check: bool = True,
    ) -> Result:
        """Run to completion, streaming each output line to on_line; raise CommandError if check and non-zero."""
        ...

    def start(self, command: str, *, log: str, env: dict[str, str] | None = None) -> Background:
        """Start detached (own session, survives disconnects), output to `log` on the host."""
        ...

    def alive(self, pid: int) -> bool: ...

    def stop(self, pid: int, *, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL after grace seconds; gone already is fine."""
        ...

    def put(self, local: Path, remote: str) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...

    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> AbstractContextManager[int]:
        """Forward a local port to remote_host:remote_port on the host; yields the local port."""
        ...


def env_prefix(env: dict[str, str] | None) -> str:
    """`K=V ...` prefix for a shell command (values quoted). Secrets belong in env, never in the command text."""
    if not env:
        return ""
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " "


def detach_command(command: str, log: str) -> str:
    """Shell text that starts `command` detached in its own session, logging to `log`, and prints its pid."""
    inner = shlex.quote(f"exec {command}")
    return (
        f"mkdir -p {shlex.quote(str(Path(log).parent))} || exit 1; "  # not `&&`: `&` would background the list
        f"setsid nohup sh -c {inner} >>{shlex.quote(log)} 2>&1 </dev/null & echo $!"
    )


_FREE_PORT = (
    "python3 -c \"import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])\""
)


def free_port(executor: Executor) -> int:
    """A port free on the executor's host right now (bind 0 there, release, report)."""
    return int(executor.run(_FREE_PORT, timeout=30).output.strip().splitlines()[-1])


class LocalExecutor:
    """Runs commands on this machine (tests, local tools)."""

    def __init__(self, name: str = "local", address: str = "127.0.0.1") -> None:
        self.name, self.address = name, address

    def run(
        self,
        command: str,
        *,
        env: dict[str, str] | None = None,
        timeout: float | None = 600,
        on_line: LineSink | None = None,
        check: bool = True,
    ) -> Result:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            text=True,
            start_new_session=True,
        )
        lines: list[str] = []
        timer = threading.Timer(timeout, lambda: _kill_group(proc.pid)) if timeout else None
        if timer:
            timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                if on_line:
                    on_line(line)
            code = proc.wait()
        finally:
            if timer:
                timer.cancel()
        output = "\n".join(lines)
        timed_out = timer is not None and not timer.is_alive() and code < 0
        if check and (code != 0 or timed_out):
            raise CommandError(self.name, command, None if timed_out else code, output)
        return Result(code, output)

    def start(self, command: str, *, log: str, env: dict[str, str] | None = None) -> Background:
        """Detached (Prometheus, exporters, ...): without the account secrets of this process (HF_TOKEN,
        RUNPOD_API_KEY), which no background program needs; pass them in `env` where one does."""
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        inherited = {k: v for k, v in os.environ.items() if k not in ACCOUNT_SECRETS}
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**inherited, **(env or {})},
                start_new_session=True,
            )
        return Background(self.name, proc.pid, log, command)

    def alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie child of ours counts as gone
            done, _ = os.waitpid(pid, os.WNOHANG)
            return done == 0
        except ChildProcessError:
            return True

    def stop(self, pid: int, *, grace: float = 10.0) -> None:
        _kill_group(pid, grace)

    def put(self, local: Path, remote: str) -> None:
        Path(remote).parent.mkdir(parents=True, exist_ok=True)
        if Path(local).is_dir():
            shutil.copytree(local, remote, dirs_exist_ok=True)
        else:
            shutil.copy2(local, remote)

    def get(self, remote: str, local: Path) -> None:
        self.put(Path(remote), str(local))

    @contextmanager
    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[int]:
        yield remote_port  # same machine: nothing to forward


def kill_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM a local process group, SIGKILL it if any member is left after `grace` s; wait up to 2 s more for
    it to go. Gone already counts as done; a group owned by another user raises PermissionError."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:  # a child of this process stays a zombie (and killpg(0) succeeds) until reaped
                os.waitpid(pgid, os.WNOHANG)
            except ChildProcessError:
                pass
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def kill_child_group(proc: subprocess.Popen, grace: float) -> None:
    """`kill_group` for a child started with `start_new_session=True`; its exit is reaped (returncode set)."""
    kill_group(proc.pid, grace)
    proc.poll()


def _kill_group(pid: int, grace: float = 10.0) -> None:
    try:
        kill_group(pid, grace)
    except PermissionError:  # not ours (the pid was reused): nothing of ours to stop
        return
