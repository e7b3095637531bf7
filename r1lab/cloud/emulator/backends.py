"""What stands behind an emulated pod.

`PodBackend` is the small protocol the emulator calls as a pod moves through its states:

- `start(pod, public_keys) -> PodHost`: called once the pod leaves STARTING (and again on `start` after
  `stop`). `pod` is the spec-shaped Pod dict (id, name, image, args, env, ports, gpu/cpu, mounts, cluster...);
  `public_keys` are the account's registered keys when the pod was created with `startSsh` (RunPod's
  PUBLIC_KEY convention), else []. Returns where the pod answers: `ip` and the public port of every exposed
  private port ("22/tcp" -> 2222, "8000/http" -> 8000...), plus an optional private (global networking) ip.
  Raising marks the pod ERROR.
- `stop(pod_id)`: the container stops (pod EXITED, disk kept).
- `terminate(pod_id)`: the pod is gone for good; free everything.
- `close()`: the emulator shuts down; terminate whatever is left.

Backends: `RecordOnlyBackend` (the default: pods are records, their addresses are in TEST-NET-1 192.0.2.0/24,
which nothing answers), `LocalSshdBackend` (a real sshd per pod on 127.0.0.1, as the current user, with the
registered keys in its authorized_keys: real SSH without namespaces). The twin's namespace hosts implement the
same protocol (select one with `--backend module:Class`).
"""

from __future__ import annotations

import getpass
import importlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from r1lab.execution import kill_child_group


@dataclass
class PodHost:
    ip: str
    ports: dict[str, int]  # "22/tcp" -> public port
    username: str = "root"
    private_ip: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class PodBackend(Protocol):
    def start(self, pod: dict[str, Any], public_keys: list[str]) -> PodHost: ...

    def stop(self, pod_id: str) -> None: ...

    def terminate(self, pod_id: str) -> None: ...

    def close(self) -> None: ...


class RecordOnlyBackend:
    """Pods are records only; addresses come from TEST-NET-1 (RFC 5737), ports from a counter."""

    def __init__(self) -> None:
        self._ports = itertools.count(40000)
        self._hosts = itertools.count(10)
        self._lock = threading.Lock()

    def start(self, pod: dict[str, Any], public_keys: list[str]) -> PodHost:
        with self._lock:
            ip = f"192.0.2.{next(self._hosts) % 250 + 1}"
            ports = {p: next(self._ports) for p in pod.get("ports") or []}
        return PodHost(ip=ip, ports=ports)

    def stop(self, pod_id: str) -> None:
        pass

    def terminate(self, pod_id: str) -> None:
        pass

    def close(self) -> None:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalSshdBackend:
    """One real OpenSSH sshd per pod on 127.0.0.1 (random port), running as the current user.

    The pod's authorized_keys are the registered account keys (startSsh), as on RunPod. HTTP ports map to
    free local port numbers nobody listens on (there is no container to serve them)."""

    def __init__(self, work_dir: str | Path | None = None, sshd: str | None = None) -> None:
        self.sshd = sshd or shutil.which("sshd") or "/usr/sbin/sshd"
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="r1lab-emu-sshd-"))
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def _pod_dir(self, pod_id: str) -> Path:
        d = self.work_dir / pod_id
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        return d

    def start(self, pod: dict[str, Any], public_keys: list[str]) -> PodHost:
        pod_id = pod["id"]
        self.stop(pod_id)
        d = self._pod_dir(pod_id)
        host_key = d / "ssh_host_ed25519_key"
        if not host_key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                check=True,
                capture_output=True,
            )
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir (as root)
        auth = d / "authorized_keys"
        auth.write_text("".join(k.strip() + "\n" for k in public_keys), encoding="utf-8")
        os.chmod(auth, 0o600)
        for attempt in range(5):
            port = free_port()
            cfg = d / "sshd_config"
            cfg.write_text(
                "\n".join(
                    [
                        "ListenAddress 127.0.0.1",
                        f"Port {port}",
                        f"HostKey {host_key}",
                        f"AuthorizedKeysFile {auth}",
                        f"PidFile {d / 'sshd.pid'}",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "PubkeyAuthentication yes",
                        "PermitRootLogin prohibit-password",
                        "StrictModes no",
                        "UsePAM no",
                        "AllowTcpForwarding yes",
                        "Subsystem sftp internal-sftp",
                        "LogLevel ERROR",
                        "",
                    ]
                ),
                encoding="utf-8",
            )
            log = open(d / "sshd.log", "ab")  # noqa: SIM115 - handed to the child
            proc = subprocess.Popen(
                [self.sshd, "-D", "-e", "-f", str(cfg)],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            log.close()
            if wait_sshd("127.0.0.1", port, proc, 5.0):
                with self._lock:
                    self._procs[pod_id] = proc
                ports = {"22/tcp": port}
                for p in pod.get("ports") or []:
                    if p != "22/tcp":
                        ports[p] = free_port()
                return PodHost(ip="127.0.0.1", ports=ports, username=getpass.getuser(), meta={"dir": str(d)})
            kill_child_group(proc, grace=3.0)
            if attempt == 4:
                raise RuntimeError(f"sshd for pod {pod_id} did not start: see {d / 'sshd.log'}")
        raise AssertionError("unreachable")

    def stop(self, pod_id: str) -> None:
        with self._lock:
            proc = self._procs.pop(pod_id, None)
        if proc is not None:
            kill_child_group(proc, grace=3.0)

    def terminate(self, pod_id: str) -> None:
        self.stop(pod_id)
        shutil.rmtree(self.work_dir / pod_id, ignore_errors=True)

    def running(self) -> list[str]:
        with self._lock:
            return [k for k, p in self._procs.items() if p.poll() is None]

    def close(self) -> None:
        with self._lock:
            ids = list(self._procs)
        for pod_id in ids:
            self.stop(pod_id)
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)


def wait_sshd(host: str, port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Until an SSH server greets on host:port (its `SSH-` banner) while `proc`, which starts it, still runs."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                if s.recv(4).startswith(b"SSH"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def make_backend(name: str, work_dir: str | Path | None = None) -> PodBackend:
    """'record' | 'local-sshd' | 'package.module:Class' (constructed without arguments)."""
    if name in ("record", "record-only"):
        return RecordOnlyBackend()
    if name == "local-sshd":
        return LocalSshdBackend(work_dir)
    module, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"unknown emulator backend {name!r}: use record, local-sshd or module:Class")
    return getattr(importlib.import_module(module), attr)()
