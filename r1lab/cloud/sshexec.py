"""`SshExecutor`: the `r1lab.execution.Executor` protocol over `r1lab.cloud.pods.PodSSH`.

The one Executor for pods: serving, monitoring and the remote load generator run their commands through it, on a
RunPod pod and on a twin pod alike (the same SSH code: the twin changes what answers, never which code runs).
Output lines are interleaved in arrival order; background processes are started detached
(`r1lab.execution.detach_command`) with their log on the pod. Environment (secrets included) travels as PodSSH
sends it: `export K=V;` in the SSH channel's command text, never logged.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r1lab.cloud.pods import CommandTimeout, HostKeyStore, PodSSH, SshKey
from r1lab.cloud.runpod import ssh_endpoint
from r1lab.execution import Background, CommandError, LineSink, Result, detach_command


class SshExecutor:
    """Runs commands on one pod over SSH. `name` defaults to the connection's name, `address` (what other pods
    use: the pod's private address) to the SSH host; `provider` ("runpod" | "twin") goes into the ledger entries
    of the processes it starts."""

    def __init__(
        self, ssh: PodSSH, name: str | None = None, address: str | None = None, provider: str = "runpod"
    ) -> None:
        self.ssh = ssh
        self.name = name or ssh.name
        self.address = address or ssh.host
        self.provider = provider

    @classmethod
    def for_pod(
        cls,
        pod: dict[str, Any],
        key: SshKey,
        known_hosts: HostKeyStore,
        name: str,
        log_path: Path | None = None,
        provider: str = "runpod",
    ) -> SshExecutor:
        """From a RUNNING pod record of the RunPod API (its direct SSH endpoint and private address)."""
        ep = ssh_endpoint(pod)
        if ep is None:
            raise ValueError(f"pod {pod.get('id')} has no direct SSH endpoint yet: wait_ready() first")
        gn = pod.get("globalNetworking") or {}
        address = gn.get("ip") or ep.host
        ssh = PodSSH(ep.host, ep.port, ep.username, key, known_hosts, pod["id"], name=name, log_path=log_path)
        return cls(ssh, name, address, provider)

    def run(
        self,
        command: str,
        *,
        env: dict[str, str] | None = None,
        timeout: float | None = 600,
        on_line: LineSink | None = None,
        check: bool = True,
    ) -> Result:
        lines: list[str] = []

        def sink(stream: str, line: str) -> None:
            lines.append(line)
            if on_line:
                on_line(line)

        try:
            res = self.ssh.run(command, timeout_s=timeout, check=False, stream=sink, env=env)
        except CommandTimeout:
            raise CommandError(self.name, command, None, "\n".join(lines)) from None
        output = "\n".join(lines)
        code = res.exit_code if res.exit_code is not None else 255
        if check and code != 0:
            raise CommandError(self.name, command, code, output)
        return Result(code, output)

    def start(self, command: str, *, log: str, env: dict[str, str] | None = None) -> Background:
        """Detached in its own session (pid = process group id), output appended to `log` on the pod."""
        res = self.run(detach_command(command, log), env=env, timeout=60)
        pid = int(res.output.strip().splitlines()[-1])
        return Background(self.name, pid, log, command)

    def alive(self, pid: int) -> bool:
        return self.ssh.is_running(pid)

    def stop(self, pid: int, *, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it once `grace` seconds pass with any member left."""
        pid = int(pid)
        self.run(
            f"kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null; "
            f"for i in $(seq {max(1, int(grace * 10))}); do kill -0 -- -{pid} 2>/dev/null || exit 0; sleep 0.1; done; "
            f"kill -KILL -- -{pid} 2>/dev/null; true",
            timeout=grace + 30,
        )

    def put(self, local: Path, remote: str) -> None:
        self.run(f"mkdir -p {shlex.quote(str(Path(remote).parent))}", timeout=30)
        self.ssh.upload(local, remote)

    def get(self, remote: str, local: Path) -> None:
        Path(local).parent.mkdir(parents=True, exist_ok=True)
        self.ssh.download(remote, local)

    @contextmanager
    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[int]:
        fwd = self.ssh.forward(remote_port, 0, remote_host)
        try:
            yield fwd.local_port
        finally:
            fwd.close()

    def close(self) -> None:
        self.ssh.close()
