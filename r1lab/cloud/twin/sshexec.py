"""`SshExecutor`: the `r1lab.execution.Executor` protocol over `r1lab.cloud.pods.PodSSH`.

The serving layer runs its commands through an Executor; on a RunPod pod and on a twin pod that is this one
(the same SSH code: the twin changes what answers, never which code runs). Output lines are interleaved in
arrival order; background processes are started detached (`setsid nohup`) with their log on the pod.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r1lab.cloud.pods import CommandTimeout, HostKeyStore, PodSSH, SshKey
from r1lab.cloud.runpod import ssh_endpoint
from r1lab.execution import Background, CommandError, LineSink, Result, env_prefix


class SshExecutor:
    """Runs commands on one pod over SSH. `address` is the pod's private address (what other pods use)."""

    def __init__(self, ssh: PodSSH, name: str, address: str) -> None:
        self.ssh, self.name, self.address = ssh, name, address

    @classmethod
    def for_pod(
        cls,
        pod: dict[str, Any],
        key: SshKey,
        known_hosts: HostKeyStore,
        name: str,
        log_path: Path | None = None,
    ) -> SshExecutor:
        """From a RUNNING pod record of the RunPod API (its direct SSH endpoint and private address)."""
        ep = ssh_endpoint(pod)
        if ep is None:
            raise ValueError(f"pod {pod.get('id')} has no direct SSH endpoint yet: wait_ready() first")
        gn = pod.get("globalNetworking") or {}
        address = gn.get("ip") or ep.host
        ssh = PodSSH(ep.host, ep.port, ep.username, key, known_hosts, pod["id"], name=name, log_path=log_path)
        return cls(ssh, name, address)

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
        # not execution.detach_command: its `mkdir && setsid ... &` backgrounds the whole `&&` list, whose
        # subshell keeps the SSH channel's stdout open until the process ends (the session never returns)
        inner = shlex.quote(f"exec {'env ' + env_prefix(env) if env else ''}{command}")
        script = (
            f"mkdir -p {shlex.quote(str(Path(log).parent))}; "
            f"setsid nohup sh -c {inner} >>{shlex.quote(log)} 2>&1 </dev/null & echo $!"
        )
        res = self.run(script, timeout=60)
        pid = int(res.output.strip().splitlines()[-1])
        return Background(self.name, pid, log, command)

    def alive(self, pid: int) -> bool:
        out = self.run(f"ps -o stat= -p {int(pid)}", timeout=30, check=False).output.strip()
        return bool(out) and not out.startswith("Z")

    def stop(self, pid: int, *, grace: float = 10.0) -> None:
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
