"""Servers that tests start die with the test process, however it dies (SIGTERM from a CI timeout, SIGKILL, ^C).

`start()` (called once by conftest.py) tags the test process's environment with a fresh token, which every server
a test starts inherits (the emulator, its sshd per pod, local sshd, HTTP fixtures...), and starts a watchdog in
its own session that waits for the test process to end (a pidfd), then SIGTERMs every process still carrying the
token, SIGKILLs what is left after a grace period, and removes the state directories of the emulator's sshd
backend (`r1lab-emu-sshd-*`) whose sshd it had to kill. A process started with an environment of its own that
drops the token is out of its reach.

Run as a script it is the watchdog: `python procguard.py PID TOKEN`.
"""

from __future__ import annotations

import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENV = "R1LAB_TEST_SESSION"
GRACE_S = 10.0
_started: dict[int, str] = {}


def start() -> str:
    """Tag this process's environment and start its watchdog (once per process); returns the token."""
    if os.getpid() in _started:
        return _started[os.getpid()]
    token = secrets.token_hex(8)
    os.environ[ENV] = token
    env = {k: v for k, v in os.environ.items() if k != ENV}
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), str(os.getpid()), token],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the test's process group does not reach the watchdog
        env=env,
    )
    _started[os.getpid()] = token
    return token


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1]), int(fields[19])


def tagged(token: str) -> list[int]:
    """Live processes (not this one) whose environment carries the token."""
    needle = f"{ENV}={token}".encode()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(entry.path, "environ").read_bytes()
        except OSError:
            continue
        st = _stat(int(entry.name))
        if st and st[0] != "Z" and needle in environ.split(b"\0"):
            out.append(int(entry.name))
    return out


class Descendants:
    """The processes started under a root process: its children and theirs (by parent pid, recorded while the
    root lives, since orphans are re-parented), plus any carrying the token (some servers, e.g. sshd, rewrite
    their environment when they set their process title; those are caught by parentage)."""

    def __init__(self, root: int, token: str) -> None:
        self.root, self.token = root, token
        self.known: dict[int, int] = {}  # pid -> start time
        self._seen: set[tuple[int, int]] = set()

    def scan(self) -> None:
        needle = f"{ENV}={self.token}".encode()
        procs: dict[int, tuple[int, int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                st = _stat(int(entry.name))
                if st and st[0] != "Z":
                    procs[int(entry.name)] = (st[1], st[2])
        for pid, (_, started) in procs.items():
            if (pid, started) in self._seen:
                continue
            self._seen.add((pid, started))
            try:
                if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    self.known[pid] = started
            except OSError:
                pass
        grew = True
        while grew:
            grew = False
            for pid, (ppid, started) in procs.items():
                if self.known.get(pid) != started and (ppid == self.root or ppid in self.known):
                    self.known[pid] = started
                    grew = True

    def alive(self) -> list[int]:
        out = []
        for pid, started in self.known.items():
            st = _stat(pid)
            if st and st[0] != "Z" and st[2] == started:
                out.append(pid)
        return out


def _sshd_dirs(pid: int) -> list[Path]:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []
    found = []
    for arg in argv:
        m = re.search(rb"(/\S*/r1lab-emu-sshd-[^/\s]+)/", arg)
        if m:
            found.append(Path(m.group(1).decode()))
    return found


def reap(token: str, grace_s: float = GRACE_S, tree: Descendants | None = None) -> list[int]:
    """SIGTERM every tagged (or recorded) process, SIGKILL those left after `grace_s`; remove the sshd backend
    dirs of the sshd among them. Returns their pids."""

    def targets() -> list[int]:
        return sorted(set(tagged(token)) | set(tree.alive() if tree else []))

    pids = targets()
    dirs = {d for p in pids for d in _sshd_dirs(p)}
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and targets():
        time.sleep(0.1)
    for pid in targets():
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    return pids


def scans_path(token: str) -> Path:
    """Where the watchdog of `token` counts its completed scans (a test waits on it, never on a fixed time)."""
    return Path(tempfile.gettempdir()) / f"r1lab-procguard-{token}.scans"


def scans(token: str) -> int:
    """How many scans the watchdog of `token` has completed (0 before the first)."""
    try:
        return int(scans_path(token).read_text())
    except (OSError, ValueError):
        return 0


def _watch(pid: int, token: str, interval_s: float = 1.0) -> None:
    tree = Descendants(pid, token)
    try:
        fd = os.pidfd_open(pid)
    except OSError:  # already gone
        reap(token)
        return
    count, path = 0, scans_path(token)
    try:
        while not select.select([fd], [], [], interval_s)[0]:
            tree.scan()
            count += 1
            tmp = path.with_suffix(".tmp")
            tmp.write_text(str(count))
            tmp.replace(path)
        reap(token, tree=tree)
    finally:
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _watch(int(sys.argv[1]), sys.argv[2])


def pytest_configure(config: object) -> None:
    """As a plugin (`-p procguard`): guard this test session."""
    start()
