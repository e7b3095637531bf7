"""Download onto the volume through a pod: send the self-contained pod script, stream its events, check the result.

The pod side is `podscript.py` (standard library + huggingface_hub). This side needs only a way to run a command on
the pod with an environment and stream its output: the `PodExec` protocol, `(command, env, on_line) -> exit code`.
`LocalExec` runs the command here (tests, the twin's host, a machine that has the volume mounted); `ssh_exec(PodSSH)`
runs it on a pod through r1lab.cloud.pods.
"""

from __future__ import annotations

import base64
import json
import shlex
import subprocess
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from r1lab.execution import kill_child_group
from r1lab.hub.plan import DownloadPlan, HubError, fmt_bytes, plan_download
from r1lab.progress import Progress, say
from r1lab.secrets import SECRET_ENV_VARS, get_secret, redact, scrubbed_env

PREFIX = "@r1lab "
PODSCRIPT = Path(__file__).with_name("podscript.py")
MANIFEST_PATH = ".r1lab/manifest.json"  # relative to dest, on the volume (written by the pod script)


class PodExec(Protocol):
    """Run `command` (a bash command line) on the pod with `env` added to its environment; call `on_line` with each
    line of its merged stdout/stderr as it arrives (without the newline); return the exit code. If `on_line` raises,
    stop the command and re-raise."""

    def __call__(self, command: str, env: Mapping[str, str], on_line: Callable[[str], None]) -> int: ...


@dataclass
class LocalExec:
    """PodExec on this machine: `bash -c command` in its own process group, secrets scrubbed from the inherited
    environment (only what `env` passes reaches the command), killed with its group if the caller stops."""

    cwd: Path | None = None

    def __call__(self, command: str, env: Mapping[str, str], on_line: Callable[[str], None]) -> int:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.cwd,
            env={**scrubbed_env(), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
            bufsize=1,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                on_line(line.rstrip("\n"))
            return proc.wait()
        except BaseException:
            kill_child_group(proc, grace=5.0)
            raise


def ssh_exec(pod: Any, *, timeout_s: float | None = None) -> PodExec:
    """PodExec over an r1lab.cloud.pods.PodSSH (anything with its `run(command, timeout_s, check, stream, env,
    stdin)`). Secrets in `env` (HF_TOKEN...) go through the SSH channel's stdin into the remote shell's
    environment (`read -r`), never into the command line, which the pod's process list and logs would show."""

    def run(command: str, env: Mapping[str, str], on_line: Callable[[str], None]) -> int:
        secret = {k: v for k, v in env.items() if k in SECRET_ENV_VARS}
        plain = {k: v for k, v in env.items() if k not in secret}
        prefix = "".join(f"IFS= read -r {k} && export {k}; " for k in secret)
        stdin = "".join(f"{v}\n" for v in secret.values()) or None
        result = pod.run(
            prefix + command,
            timeout_s=timeout_s,
            check=False,
            stream=lambda _stream, line: on_line(line),
            env=plain or None,
            stdin=stdin,
        )
        return 255 if result.exit_code is None else int(result.exit_code)

    return run


@dataclass(frozen=True)
class Manifest:
    """What the volume holds, as the pod verified it (also at `<dest>/.r1lab/manifest.json` on the volume)."""

    repo_id: str
    revision: str
    commit: str
    dest: str
    files: tuple[dict[str, Any], ...]
    total_bytes: int
    downloaded_files: int
    downloaded_bytes: int
    complete: bool
    path: str
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, m: dict[str, Any], path: str) -> Manifest:
        return cls(
            m["repo_id"],
            m["revision"],
            m["commit"],
            m["dest"],
            tuple(m["files"]),
            int(m["total_bytes"]),
            int(m["downloaded_files"]),
            int(m["downloaded_bytes"]),
            bool(m["complete"]),
            path,
            m,
        )

    def summary(self) -> str:
        head = f"{self.repo_id}@{self.commit[:12]} on {self.dest}: {len(self.files)} files, {fmt_bytes(self.total_bytes)}"
        if self.downloaded_files == 0:
            return f"{head}, all verified; the volume is complete, nothing downloaded"
        return (
            f"{head}, all verified; downloaded {self.downloaded_files} files ({fmt_bytes(self.downloaded_bytes)}), "
            f"{len(self.files) - self.downloaded_files} were already there"
        )


def build_command(
    plan: DownloadPlan,
    dest: str,
    *,
    max_workers: int = 8,
    verify: str = "full",
    interval: float = 2.0,
    attempts: int = 2,
    python: str = "python3",
    install_missing: bool = True,
) -> str:
    """The command line run on the pod: the pod script and its spec travel inside it (no file upload needed)."""
    if verify not in ("full", "fast"):
        raise ValueError(f"verify must be 'full' or 'fast', got {verify!r}")
    spec = {
        "repo_id": plan.repo_id,
        "revision": plan.revision,
        "commit": plan.commit,
        "dest": dest,
        "files": [f.spec() for f in plan.files],
        "max_workers": max_workers,
        "verify": verify,
        "interval": interval,
        "attempts": attempts,
    }
    blob = base64.b64encode(zlib.compress(json.dumps(spec).encode(), 9)).decode()
    code = base64.b64encode(zlib.compress(PODSCRIPT.read_bytes(), 9)).decode()
    boot = f"import base64,zlib;exec(compile(zlib.decompress(base64.b64decode('{code}')),'r1lab-podscript','exec'))"
    py = shlex.quote(python)
    run = f"{py} -c {shlex.quote(boot)} {blob}"
    if not install_missing:
        return run
    req = shlex.quote("huggingface_hub[hf_xet]>=0.34")
    install = (  # images without it (runpod/base): pip, or pip past PEP 668's guard on Debian-style pythons
        f"{py} -c 'import huggingface_hub' 2>/dev/null || {py} -m pip install -q {req} 1>&2 || "
        f"{py} -m pip install -q --break-system-packages {req} 1>&2 || exit 2"
    )
    return f"{install}; {run}"


class _Events:
    """Turns the pod's lines into progress bars, a redacted event log, and the final result."""

    def __init__(self, plan: DownloadPlan, log_path: Path | None, show: Callable[[str], None]) -> None:
        self.plan = plan
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115 - closed in close()
        self.show = show
        self.tail: deque[str] = deque(maxlen=40)
        self.errors: list[dict[str, Any]] = []
        self.done: dict[str, Any] | None = None
        self.start: dict[str, Any] | None = None
        self.planned: dict[str, Any] | None = None
        self.bar: Progress | None = None
        self.vbar: Progress | None = None
        self._last = 0.0
        self._vlast = 0.0

    def __call__(self, line: str) -> None:
        line = redact(line)
        if not line.startswith(PREFIX):
            if not line.strip():
                return
            self.tail.append(line)
            if self.log:
                self.log.write(json.dumps({"event": "output", "time": time.time(), "line": line}) + "\n")
                self.log.flush()
            return
        try:
            ev = json.loads(line[len(PREFIX) :])
        except json.JSONDecodeError:
            self.tail.append(line)
            return
        if self.log:
            self.log.write(json.dumps(ev) + "\n")
            self.log.flush()
        kind = ev.get("event")
        if kind == "start":
            self.start = ev
            self.show(
                f"pod: huggingface_hub {ev['huggingface_hub']}, hf_xet {ev['hf_xet'] or 'absent'}, "
                f"{ev['files']} files ({fmt_bytes(ev['total_bytes'])}) -> {ev['dest']}"
            )
        elif kind == "verify" and ev.get("phase") == "existing":
            if self.vbar is None:
                self.vbar = Progress("verifying files already on the volume", self.plan.total_bytes, "B")
            self.vbar.advance(ev["bytes"] - self._vlast)
            self._vlast = ev["bytes"]
        elif kind == "cleanup":
            self.show(f"pod: {ev['message']} ({fmt_bytes(ev['bytes'])})")
        elif kind == "plan":
            self.planned = ev
            if self.vbar is not None:
                self.vbar.close()
                self.vbar = None
            self.show(
                f"pod: {ev['present']} files already verified, {ev['fetch']} to fetch "
                f"({fmt_bytes(ev['fetch_bytes'])}), {fmt_bytes(ev['free_bytes'])} free"
            )
            if ev["fetch"]:
                self.bar = Progress(f"downloading {self.plan.repo_id}", ev["fetch_bytes"], "B")
        elif kind == "progress" and self.bar is not None:
            self.bar.advance(max(ev["bytes"] - self._last, 0))
            self._last = max(ev["bytes"], self._last)
        elif kind == "file" and not ev.get("ok"):
            self.show(f"pod: {ev['path']} attempt {ev.get('attempt')}: {ev.get('reason')}")
        elif kind == "error":
            self.errors.append(ev)
        elif kind == "done":
            self.done = ev

    def close(self) -> None:
        for bar in (self.bar, self.vbar):
            if bar is not None:
                bar.close()
        if self.log:
            self.log.close()


def download_to_volume(
    pod_exec: PodExec,
    repo_id: str,
    revision: str,
    dest: str,
    patterns: list[str],
    *,
    exclude: list[str] | None = None,
    endpoint: str | None = None,
    volume_size_gb: int | None = None,
    max_workers: int = 8,
    verify: str = "full",
    progress_interval: float = 2.0,
    high_performance: bool = True,
    python: str = "python3",
    install_missing: bool = True,
    log_path: Path | None = None,
    plan: DownloadPlan | None = None,
    show: Callable[[str], None] | None = None,
) -> Manifest:
    """Download `repo_id@revision` files matching `patterns` into `dest` on the pod, verified; return the manifest.

    Plans here first (file list with hashes at the resolved commit; every pattern must match; the volume must be
    big enough), then runs the pod script through `pod_exec` with HF_TOKEN (if set here) and HF_ENDPOINT in the
    command's environment only. A second call finds every file verified and downloads nothing; truncated or
    corrupted files are deleted and fetched again. `verify="fast"` trusts files unchanged (size, mtime) since the
    manifest recorded them; "full" re-hashes everything present (all 689 GB read back
    from the network volume: use "fast" to re-check a volume this code filled). Events go to `log_path` (JSON lines, redacted).
    Raises HubError (or PatternError) with the pod's reason.
    """
    show = show or say  # stdout in a notebook, stderr in a terminal
    if plan is None:
        plan = plan_download(repo_id, revision, patterns, exclude or (), endpoint=endpoint)
    show(plan.space_report(volume_size_gb))
    if volume_size_gb is not None:
        plan.check_volume(volume_size_gb)
    env = {"HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"}
    if high_performance:  # hf_xet may use the utility pod's cores and memory (it does nothing else)
        env["HF_XET_HIGH_PERFORMANCE"] = "1"
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    token = get_secret("HF_TOKEN")
    if token:
        env["HF_TOKEN"] = token
    command = build_command(
        plan,
        dest,
        max_workers=max_workers,
        verify=verify,
        interval=progress_interval,
        python=python,
        install_missing=install_missing,
    )
    events = _Events(plan, Path(log_path) if log_path else None, show)
    try:
        code = pod_exec(command, env, events)
    finally:
        events.close()
    if code != 0 or events.done is None:
        reason = "; ".join(f"{e.get('kind')}: {e.get('message')}" for e in events.errors) or "no error event"
        failures = [f for e in events.errors for f in e.get("failures", [])]
        detail = f" failed files: {failures[:5]}" if failures else ""
        tail = "\n  ".join(list(events.tail)[-8:])
        raise HubError(
            redact(
                f"download of {plan.repo_id}@{plan.commit[:12]} to {dest} failed (exit {code}): {reason}.{detail}"
                + (f"\n  last output:\n  {tail}" if tail else "")
            )
        )
    manifest = Manifest.from_dict(events.done["manifest"], events.done["manifest_path"])
    _check_against_plan(manifest, plan)
    show(manifest.summary())
    return manifest


def _check_against_plan(manifest: Manifest, plan: DownloadPlan) -> None:
    """The pod's manifest must list exactly the planned files with the planned sizes and sha256s."""
    got = {f["path"]: f for f in manifest.files}
    problems = [p.path for p in plan.files if p.path not in got]
    for p in plan.files:
        f = got.get(p.path)
        if f and (f["size"] != p.size or (p.sha256 is not None and f["sha256"] != p.sha256)):
            problems.append(p.path)
    if problems or manifest.commit != plan.commit or not manifest.complete:
        raise HubError(
            f"manifest {manifest.path} disagrees with the plan for {plan.repo_id}@{plan.commit[:12]}: {problems[:5]}"
        )
