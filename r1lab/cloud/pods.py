"""SSH to pods: exec with streamed output, background processes, upload/download, port forwards.

asyncssh rather than paramiko: one event loop carries many channels and forwards at once (a two-pod cluster
holds Ray's dashboard, the vLLM API and Prometheus forwards open while commands run), forwarding and SFTP are
native, and host-key checks are pluggable. Notebooks and teardown code are synchronous, so every call has a
sync form that runs on one private event-loop thread (`PodSSH.run(...)`); async code awaits `PodSSH.arun(...)`.

Host keys: a fresh pod's key cannot be known in advance, so the first connection to a pod pins its key
(trust on first use) in `<run_dir>/ssh/known_hosts.json`, keyed by pod id; any later connection to that pod
with another key is refused. Keys are pinned per pod, not per address, since RunPod reuses ip:port.

The researcher's key: a fresh ed25519 key per run in `<run_dir>/ssh/` (0600), or the one named by params
(`provider.ssh_public_key`, the private key next to it) or `R1LAB_SSH_KEY` (path to a private key).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from r1lab.cloud.errors import CloudError
from r1lab.secrets import redact

T = TypeVar("T")


class SSHError(CloudError):
    pass


class CommandFailed(SSHError):
    def __init__(self, pod: str, command: str, exit_code: int | None, stderr_tail: str) -> None:
        self.exit_code, self.stderr_tail = exit_code, stderr_tail
        super().__init__(
            f"on {pod}: `{_short(command)}` exited {exit_code}" + (f": {stderr_tail}" if stderr_tail else "")
        )


class CommandTimeout(SSHError):
    pass


class HostKeyMismatch(SSHError):
    pass


def _alive(pid: int) -> str:
    """A shell test: process `pid` exists and is not a zombie."""
    return f"[ -e /proc/{pid} ] && [ \"$(sed 's/.*) //' /proc/{pid}/stat | cut -d' ' -f1)\" != Z ]"


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _short(text: str, n: int = 120) -> str:
    text = redact(" ".join(text.split()))
    return text if len(text) <= n else text[: n - 3] + "..."


# --- one private event loop for the sync facade -------------------------------------------------------------

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> asyncio.AbstractEventLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="r1lab-ssh-loop", daemon=True).start()
            _LOOP = loop
        return _LOOP


def run_sync(coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
    """Run a coroutine on the SSH loop thread and wait for it (works inside Jupyter's running loop)."""
    fut = asyncio.run_coroutine_threadsafe(coro, _loop())
    try:
        return fut.result(timeout=timeout_s)
    except TimeoutError:
        fut.cancel()
        raise CommandTimeout(f"SSH operation did not finish within {timeout_s:.0f}s") from None
    except KeyboardInterrupt:
        fut.cancel()
        raise


# --- keys ---------------------------------------------------------------------------------------------------


@dataclass
class SshKey:
    private_path: Path
    public_line: str

    @classmethod
    def generate(cls, directory: Path, comment: str = "r1lab") -> SshKey:
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
        path = directory / "id_ed25519"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        public = key.export_public_key().decode().strip()
        (directory / "id_ed25519.pub").write_text(public + "\n", encoding="utf-8")
        return cls(path, public)

    @classmethod
    def load(cls, private_path: Path) -> SshKey:
        try:
            key = asyncssh.read_private_key(str(private_path))
        except (OSError, asyncssh.KeyImportError) as exc:
            raise SSHError(
                f"cannot read SSH private key {private_path}: {exc}. Fix: point provider.ssh_public_key (params) "
                "or R1LAB_SSH_KEY at an unencrypted key pair, or unset both to get a fresh key per run."
            ) from None
        return cls(Path(private_path), key.export_public_key().decode().strip())


def run_ssh_key(run_dir: Path, public_key_path: str | None = None, comment: str | None = None) -> SshKey:
    """The key this run uses: given by params (public key path, private key beside it), by R1LAB_SSH_KEY,
    else the run's own (generated once, reused on resume)."""
    if public_key_path:
        pub = Path(public_key_path).expanduser()
        private = pub.with_suffix("") if pub.suffix == ".pub" else pub
        return SshKey.load(private)
    if os.environ.get("R1LAB_SSH_KEY"):
        return SshKey.load(Path(os.environ["R1LAB_SSH_KEY"]).expanduser())
    d = Path(run_dir) / "ssh"
    if (d / "id_ed25519").exists():
        return SshKey.load(d / "id_ed25519")
    return SshKey.generate(d, comment=comment or f"r1lab-{Path(run_dir).name}-key")


class HostKeyStore:
    """Trust-on-first-use host keys, pinned per pod in a JSON file of the run directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        return json.loads(self.path.read_text(encoding="utf-8"))

    def check(self, pod_key: str, host: str, port: int, key: asyncssh.SSHKey) -> bool:
        line = key.export_public_key().decode().strip()
        with self._lock:
            pins = self._read()
            pinned = pins.get(pod_key)
            if pinned is None:
                pins[pod_key] = {"host": host, "port": port, "key": line, "pinned_at": time.time()}
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps(pins, indent=1), encoding="utf-8")
                tmp.replace(self.path)
                return True
            return pinned["key"].split()[:2] == line.split()[:2]


class _PinningClient(asyncssh.SSHClient):
    def __init__(self, store: HostKeyStore, pod_key: str) -> None:
        self.store, self.pod_key = store, pod_key
        self.rejected = False

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        ok = self.store.check(self.pod_key, addr or host, port, key)
        self.rejected = not ok
        return ok


# --- results ------------------------------------------------------------------------------------------------


@dataclass
class Result:
    command: str
    exit_code: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass
class Background:
    pid: int
    log: str
    name: str


class Forward:
    """A local port forwarded to host:port as seen from the pod; close() (or `with`) ends it."""

    def __init__(self, listener: asyncssh.SSHListener, remote: str) -> None:
        self._listener = listener
        self.local_port: int = listener.get_port()
        self.remote = remote

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    async def _aclose(self) -> None:
        self._listener.close()
        await self._listener.wait_closed()

    def close(self) -> None:
        # on the loop's own thread: asyncio servers are not thread-safe (closing from here raced the loop)
        run_sync(self._aclose(), 10)

    def __enter__(self) -> Forward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the connection -----------------------------------------------------------------------------------------


class PodSSH:
    """SSH to one pod. Connects lazily, reconnects once on a dropped connection."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        key: SshKey,
        known_hosts: HostKeyStore,
        pod_id: str,
        name: str | None = None,
        connect_timeout_s: float = 20.0,
        log_path: Path | None = None,
    ) -> None:
        self.host, self.port, self.username = host, port, username
        self.key, self.known_hosts, self.pod_id = key, known_hosts, pod_id
        self.name = name or pod_id
        self.connect_timeout_s = connect_timeout_s
        self.log_path = log_path
        self._conn: asyncssh.SSHClientConnection | None = None
        self._conn_lock: asyncio.Lock | None = None

    def _log(self, text: str) -> None:
        if self.log_path is None:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {self.name} {redact(text)}\n")

    async def connect(self) -> asyncssh.SSHClientConnection:
        if self._conn_lock is None:
            self._conn_lock = asyncio.Lock()
        async with self._conn_lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            client = _PinningClient(self.known_hosts, self.pod_id)
            try:
                conn, _ = await asyncio.wait_for(
                    asyncssh.create_connection(
                        lambda: client,
                        self.host,
                        self.port,
                        username=self.username,
                        client_keys=[str(self.key.private_path)],
                        known_hosts=([], [], []),  # every key goes through the pinning client
                        agent_path=None,
                        config=[],
                        keepalive_interval=15,
                        keepalive_count_max=4,
                    ),
                    self.connect_timeout_s,
                )
            except TimeoutError:
                raise SSHError(f"ssh to {self.name} ({self.host}:{self.port}): connect timed out") from None
            except (OSError, asyncssh.Error) as exc:
                if client.rejected:
                    raise HostKeyMismatch(
                        f"ssh to {self.name} ({self.host}:{self.port}): host key differs from the key pinned for "
                        f"pod {self.pod_id} in {self.known_hosts.path}; refusing (possible interception)"
                    ) from None
                raise SSHError(f"ssh to {self.name} ({self.host}:{self.port}): {exc}") from None
            self._conn = conn
            return conn

    async def aclose(self) -> None:
        if self._conn is not None:
            self._conn.close()
            await self._conn.wait_closed()
            self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            run_sync(self.aclose(), 10)

    def __enter__(self) -> PodSSH:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- exec -----------------------------------------------------------------------------------------------

    async def arun(
        self,
        command: str,
        timeout_s: float | None = 600.0,
        check: bool = True,
        on_line: Callable[[str, str], None] | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
    ) -> Result:
        """Run `command` in bash on the pod; `on_line(stream, line)` sees output as it arrives."""
        start = time.monotonic()
        conn = await self.connect()
        self._log(f"$ {command}")
        full = command
        if env:
            bad = [k for k in env if not _ENV_NAME.match(k)]
            if bad:
                raise SSHError(f"invalid environment variable name(s) {bad} for a command on {self.name}")
            full = "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items()) + command
        proc = await conn.create_process(
            f"bash -c {shlex.quote(full)}", stdin=asyncssh.PIPE if stdin else None
        )
        out: list[str] = []
        err: list[str] = []

        async def pump(reader: asyncssh.SSHReader[str], sink: list[str], stream: str) -> None:
            async for line in reader:
                sink.append(line)
                if on_line:
                    on_line(stream, line.rstrip("\n"))

        if stdin:
            proc.stdin.write(stdin)
            proc.stdin.write_eof()
        try:
            await asyncio.wait_for(
                asyncio.gather(
                    pump(proc.stdout, out, "stdout"), pump(proc.stderr, err, "stderr"), proc.wait()
                ),
                timeout_s,
            )
        except TimeoutError:
            proc.kill()
            proc.close()
            self._log(f"timeout after {timeout_s}s: {command}")
            raise CommandTimeout(
                f"on {self.name}: `{_short(command)}` still running after {timeout_s:.0f}s"
            ) from None
        result = Result(command, proc.exit_status, "".join(out), "".join(err), time.monotonic() - start)
        self._log(f"exit {result.exit_code} in {result.seconds:.1f}s")
        if check and result.exit_code != 0:
            raise CommandFailed(self.name, command, result.exit_code, redact(result.stderr[-400:].strip()))
        return result

    def run(
        self,
        command: str,
        timeout_s: float | None = 600.0,
        check: bool = True,
        stream: bool | Callable[[str, str], None] = False,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
    ) -> Result:
        """Sync form of `arun`. stream=True prints lines (redacted) as they arrive."""
        on_line: Callable[[str, str], None] | None
        if stream is True:

            def on_line(s: str, line: str) -> None:
                print(
                    f"[{self.name}] {redact(line)}",
                    file=sys.stderr if s == "stderr" else sys.stdout,
                    flush=True,
                )

        else:
            on_line = stream or None
        grace = None if timeout_s is None else timeout_s + self.connect_timeout_s + 10
        return run_sync(self.arun(command, timeout_s, check, on_line, env, stdin), grace)

    def check_ready(self, timeout_s: float = 20.0) -> None:
        """`ssh true`: the last step of wait-ready."""
        self.run("true", timeout_s=timeout_s)

    # --- background -----------------------------------------------------------------------------------------

    def start_background(self, command: str, name: str, log_dir: str = "/tmp/r1lab-pod/logs") -> Background:
        """Start `command` detached (own session, survives the SSH session); returns its pid and log path."""
        log = f"{log_dir}/{name}.log"
        script = (
            f"mkdir -p {shlex.quote(log_dir)} || exit 1; "  # not `&&`: the `&` would take the list along
            f"setsid nohup bash -c {shlex.quote(command)} > {shlex.quote(log)} 2>&1 < /dev/null & echo $!"
        )
        res = self.run(script, timeout_s=30)
        pid = int(res.stdout.strip().splitlines()[-1])
        self._log(f"background {name}: pid {pid}, log {log}")
        return Background(pid=pid, log=log, name=name)

    def is_running(self, pid: int) -> bool:
        """Alive and not a zombie (a container's PID 1 may never reap what it inherits)."""
        return self.run(_alive(int(pid)), timeout_s=20, check=False).exit_code == 0

    def stop_background(self, bg: Background, grace_s: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL after grace_s."""
        pid = int(bg.pid)
        self.run(
            f"kill -TERM -- -{pid} 2>/dev/null || kill -TERM {pid} 2>/dev/null; "
            f"for i in $(seq {int(grace_s * 10)}); do {_alive(pid)} || exit 0; sleep 0.1; done; "
            f"kill -KILL -- -{pid} 2>/dev/null || kill -KILL {pid} 2>/dev/null; true",
            timeout_s=grace_s + 20,
        )

    def tail(self, path: str, lines: int = 50) -> str:
        return self.run(f"tail -n {int(lines)} {shlex.quote(path)}", timeout_s=20, check=False).stdout

    # --- files ----------------------------------------------------------------------------------------------

    async def _sftp(self, op: str, src: str, dst: str) -> None:
        conn = await self.connect()
        async with conn.start_sftp_client() as sftp:
            if op == "put":
                await sftp.put(src, dst, recurse=Path(src).is_dir(), preserve=True)
            else:
                await sftp.get(src, dst, recurse=True, preserve=True)

    def upload(self, local: str | Path, remote: str, timeout_s: float = 600.0) -> None:
        self._log(f"upload {local} -> {remote}")
        run_sync(self._sftp("put", str(local), remote), timeout_s)

    def download(self, remote: str, local: str | Path, timeout_s: float = 600.0) -> None:
        self._log(f"download {remote} -> {local}")
        run_sync(self._sftp("get", remote, str(local)), timeout_s)

    # --- forwards -------------------------------------------------------------------------------------------

    async def _forward(self, remote_port: int, local_port: int, remote_host: str) -> asyncssh.SSHListener:
        conn = await self.connect()
        return await conn.forward_local_port("127.0.0.1", local_port, remote_host, remote_port)

    def forward(self, remote_port: int, local_port: int = 0, remote_host: str = "127.0.0.1") -> Forward:
        """Forward 127.0.0.1:<local_port> here to remote_host:remote_port as seen from the pod (keeps Ray's
        dashboard, the vLLM API and Prometheus off public ports)."""
        listener = run_sync(self._forward(remote_port, local_port, remote_host), self.connect_timeout_s + 10)
        self._log(f"forward 127.0.0.1:{listener.get_port()} -> {remote_host}:{remote_port}")
        return Forward(listener, f"{remote_host}:{remote_port}")


# --- the pod's start command --------------------------------------------------------------------------------
#
# Pod-side deadline (billing stops even if the researcher's machine dies). The start script runs a watchdog
# next to sshd that removes its own pod (`runpodctl remove pod $RUNPOD_POD_ID`; RunPod pods carry runpodctl with
# a pod-scoped key) when either the hard deadline (provider.pod_deadline_hours; movable through
# /tmp/r1lab-pod/deadline) passes or, if heartbeat_timeout_s > 0, no heartbeat (`heartbeat()`, sent by the
# BudgetGuard while this machine lives) came for that long. Fallbacks: `runpodctl stop pod` (compute billing
# stops, container disk billing goes on), then `kill -TERM 1` (ends the container; RunPod may restart it).
# Limits: it runs only if the image runs our `args` (an image with a fixed ENTRYPOINT, e.g. vllm/vllm-openai,
# passes them to that entrypoint instead: use an image without one, or one built FROM it with ENTRYPOINT reset);
# it needs runpodctl and RUNPOD_POD_ID in the pod; anything that kills the watchdog (OOM, `pkill bash`) disarms
# it; it polls every 30 s; the network volume is not deleted (its storage is cheap and the weights live there):
# `r1lab reap` removes it. The emulator does not run start scripts (the twin may); tests run the watchdog
# locally against a fake runpodctl.

WATCHDOG = r"""
# r1lab pod-side deadline: stop billing even if the researcher's machine is gone.
r1lab_watchdog() {
  local dir=${R1LAB_DIR:-/tmp/r1lab-pod}
  mkdir -p "$dir"; touch "$dir/heartbeat"
  [ -f "$dir/deadline" ] || echo "${R1LAB_DEADLINE_EPOCH:-0}" > "$dir/deadline"
  while true; do
    local now hb deadline why=""
    now=$(date +%s)
    hb=$(stat -c %Y "$dir/heartbeat" 2>/dev/null || echo "$now")
    deadline=$(cat "$dir/deadline" 2>/dev/null || echo 0)
    if [ "${deadline:-0}" -gt 0 ] && [ "$now" -ge "$deadline" ]; then why="deadline $deadline reached"; fi
    if [ "${R1LAB_HEARTBEAT_TIMEOUT_S:-0}" -gt 0 ] && [ $((now - hb)) -ge "$R1LAB_HEARTBEAT_TIMEOUT_S" ]; then
      why="no heartbeat for $((now - hb))s"
    fi
    if [ -n "$why" ]; then
      echo "r1lab watchdog: $why: removing pod ${RUNPOD_POD_ID:-?}" | tee -a "$dir/watchdog.log"
      runpodctl remove pod "$RUNPOD_POD_ID" >> "$dir/watchdog.log" 2>&1 \
        || runpodctl stop pod "$RUNPOD_POD_ID" >> "$dir/watchdog.log" 2>&1 \
        || { echo "r1lab watchdog: runpodctl failed; stopping the container" >> "$dir/watchdog.log"; kill -TERM 1; }
      sleep "${R1LAB_WATCHDOG_RETRY_S:-60}"
    fi
    sleep "${R1LAB_WATCHDOG_POLL_S:-30}"
  done
}
"""


def start_script(
    public_key: str,
    deadline_epoch: int = 0,
    heartbeat_timeout_s: int = 0,
    then: str = "sleep infinity",
) -> str:
    """The bash script a pod runs at start: sshd with the researcher's key, the watchdog, then `then`."""
    key = shlex.quote(public_key.strip())
    return f"""set -u
export R1LAB_DEADLINE_EPOCH={int(deadline_epoch)} R1LAB_HEARTBEAT_TIMEOUT_S={int(heartbeat_timeout_s)}
{WATCHDOG}
r1lab_watchdog &
mkdir -p ~/.ssh && chmod 700 ~/.ssh
grep -qxF {key} ~/.ssh/authorized_keys 2>/dev/null || echo {key} >> ~/.ssh/authorized_keys
chmod 600 ~/.ssh/authorized_keys
if ! command -v sshd >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server) >/tmp/r1lab-sshd-install.log 2>&1
fi
mkdir -p /run/sshd && ssh-keygen -A >/dev/null 2>&1
$(command -v sshd) -o PasswordAuthentication=no -o PermitRootLogin=prohibit-password -o AllowTcpForwarding=yes
exec {then}
"""


def start_command(script: str) -> str:
    """Wrap a script as the pod's `args`: base64 survives every layer of quoting between us and bash."""
    b64 = base64.b64encode(script.encode()).decode()
    return f"bash -c 'echo {b64} | base64 -d | bash'"


def heartbeat(ssh: PodSSH, extend_deadline_to: int | None = None) -> None:
    """Tell the pod's watchdog this machine is alive (and optionally move its deadline)."""
    cmd = "mkdir -p /tmp/r1lab-pod && touch /tmp/r1lab-pod/heartbeat"
    if extend_deadline_to:
        cmd += f" && echo {int(extend_deadline_to)} > /tmp/r1lab-pod/deadline"
    ssh.run(cmd, timeout_s=20)
