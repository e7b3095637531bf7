"""`PodExecutor`: the `r1lab.execution.Executor` protocol over an SSH connection to a pod (`r1lab.cloud.pods.PodSSH`,
duck-typed so serve does not import cloud): what `Launcher` and `deploy` take for real and twin pods.

Environment (secrets included) travels in the SSH channel's command text as `export K=V;` (PodSSH.run does it and
never logs it), never on a command line that `ps` or a command file would show.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r1lab.execution import Background, CommandError, LineSink, Result


class PodExecutor:
    """Executor for one pod reached over SSH. `address` defaults to the SSH host (the twin's namespace IP)."""

    def __init__(
        self, pod: Any, name: str | None = None, address: str | None = None, provider: str = "runpod"
    ) -> None:
        self.pod = pod
        self.name = name or pod.name
        self.address = address or pod.host
        self.provider = provider  # ledger provider of the processes it starts: "runpod" | "twin"

    def run(
        self,
        command: str,
        *,
        env: dict[str, str] | None = None,
        timeout: float | None = 600,
        on_line: LineSink | None = None,
        check: bool = True,
    ) -> Result:
        sink = (lambda _stream, line: on_line(line)) if on_line else False
        res = self.pod.run(command, timeout_s=timeout, check=False, stream=sink, env=env)
        output = res.stdout + (("\n" if res.stdout and res.stderr else "") + res.stderr if res.stderr else "")
        code = res.exit_code if res.exit_code is not None else -1
        if check and code != 0:
            raise CommandError(self.name, command, code, output)
        return Result(code, output)

    def start(self, command: str, *, log: str, env: dict[str, str] | None = None) -> Background:
        """Detached in its own session (pid = process group id), output appended to `log` on the pod."""
        script = (
            f"mkdir -p {shlex.quote(str(Path(log).parent))} || exit 1; "  # not &&: `&` would take the list along
            f"setsid nohup bash -c {shlex.quote('exec ' + command)} >>{shlex.quote(log)} 2>&1 </dev/null & echo $!"
        )
        res = self.run(script, env=env, timeout=60)
        pid = int(res.output.strip().splitlines()[-1])
        return Background(self.name, pid, log, command)

    def alive(self, pid: int) -> bool:
        return bool(self.pod.is_running(pid))

    def stop(self, pid: int, *, grace: float = 10.0) -> None:
        from types import SimpleNamespace

        self.pod.stop_background(SimpleNamespace(pid=pid, log="", name=""), grace_s=grace)

    def put(self, local: Path, remote: str) -> None:
        self.pod.upload(local, remote)

    def get(self, remote: str, local: Path) -> None:
        self.pod.download(remote, local)

    @contextmanager
    def forward(self, remote_port: int, remote_host: str = "127.0.0.1") -> Iterator[int]:
        fwd = self.pod.forward(remote_port, remote_host=remote_host)
        try:
            yield fwd.local_port
        finally:
            fwd.close()
