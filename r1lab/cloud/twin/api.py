"""`Twin`: bring the local twin up, find a running one, point the RunPod client at it, take it down.

    twin = Twin.up()                 # or Twin.find() from another process / notebook kernel
    twin.activate()                  # RUNPOD_API_BASE / RUNPOD_API_KEY of this process -> the twin
    client = RunPodClient()          # the same client, the same calls as against api.runpod.io
    ...
    twin.down()                      # every pod, namespace, link, route, rule, mount and process gone

The state dir (default `$R1LAB_TWIN_DIR`, else `~/.local/state/r1lab/twin`) holds `twin.json` (url, instance,
subnet, daemon pid), `api_key` (0600, the twin's own token), `daemon.log`, the emulator's state, the pods' dirs
and the network volumes' directories.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1lab.cloud.twin import network
from r1lab.cloud.twin.netns import MOUNTPOINTS, kill_netns_processes, pod_kind, release_mountpoints
from r1lab.secrets import scrubbed_env


class TwinError(RuntimeError):
    """The twin cannot start or stop; the message says why and what to do."""


def default_state_dir() -> Path:
    env = os.environ.get("R1LAB_TWIN_DIR")
    return Path(env) if env else Path.home() / ".local" / "state" / "r1lab" / "twin"


def prepare_bare() -> None:
    """What bare pods need before the twin starts: every supported base image, and the filled package sources."""
    from r1lab.cloud.twin import baseimage, sources

    for image in sorted(baseimage.manifests()):
        baseimage.ensure(image)
    sources.ensure()


def check_root() -> None:
    """The twin makes network namespaces, a bridge, veths and tc/iptables rules: that needs root."""
    if os.geteuid() != 0:
        raise TwinError(
            "the twin needs root (network namespaces, a bridge, tc and iptables rules); you are uid "
            f"{os.geteuid()}. Fix: run `sudo -E .venv/bin/r1lab twin up` (or the notebook's kernel as root), "
            "or use a real RunPod account: provider.kind: runpod in the params file."
        )
    missing = [t for t in ("ip", "tc", "iptables", "unshare", "sshd", "ssh-keygen") if not _which(t)]
    if missing:
        raise TwinError(
            f"the twin needs {', '.join(missing)} on PATH. Fix: run scripts/bootstrap.sh "
            "(Debian: apt-get install iproute2 iptables util-linux openssh-server)."
        )


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Twin:
    state_dir: Path

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).absolute()

    # --- finding and starting ------------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        try:
            return json.loads((self.state_dir / "twin.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    @property
    def url(self) -> str:
        url = self.info.get("url")
        if not url:
            raise TwinError(f"the twin in {self.state_dir} is not up: run `r1lab twin up`")
        return url

    @property
    def host_ip(self) -> str:
        """This machine's address on the twin's bridge: where pods reach services run here (bind them to it,
        e.g. the fake Hub for the utility pod's download; 127.0.0.1 inside a pod is the pod itself)."""
        ip = self.info.get("host_ip")
        if not ip:
            raise TwinError(f"the twin in {self.state_dir} is not up: run `r1lab twin up`")
        return ip

    @property
    def api_key(self) -> str:
        return (self.state_dir / "api_key").read_text(encoding="utf-8").strip()

    def _daemon_pid(self) -> int | None:
        """The daemon's pid, if that process is alive and is this state dir's daemon (pids get reused)."""
        pid = int(self.info.get("pid", 0) or 0)
        if not pid or not _alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        ok = b"r1lab.cloud.twin.daemon" in cmdline and str(self.state_dir).encode() in cmdline
        return pid if ok else None

    def running(self) -> bool:
        return self.info.get("phase") == "up" and self._daemon_pid() is not None

    @classmethod
    def find(cls, state_dir: Path | str | None = None) -> Twin | None:
        """The twin running from `state_dir` (default dir if None), or None."""
        twin = cls(Path(state_dir) if state_dir else default_state_dir())
        return twin if twin.running() else None

    @classmethod
    def up(
        cls,
        state_dir: Path | str | None = None,
        network_kind: str = "global-networking",
        *,
        link_mbit: float | None = None,
        timeout_s: float = 60.0,
        pods: str | None = None,
    ) -> Twin:
        """Start the twin's daemon (detached: it outlives this process) or return the one already running.
        pods: "bare" (default: pods as bare as RunPod's) or "host" (`netns.pod_kind`)."""
        twin = cls(Path(state_dir) if state_dir else default_state_dir())
        if twin.running():
            return twin
        check_root()
        kind = pod_kind(pods)
        if kind == "bare":
            prepare_bare()  # base images and package sources, built once (minutes the first time) with progress
        twin.state_dir.mkdir(parents=True, exist_ok=True)
        with open(twin.state_dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two kernels starting the same twin at once: one daemon
            if twin.running():
                return twin
            return twin._start(network_kind, link_mbit, timeout_s, kind)

    def _start(self, network_kind: str, link_mbit: float | None, timeout_s: float, pods: str) -> Twin:
        twin = self
        if twin.info.get("instance"):
            twin.down()  # what a killed daemon left behind: its pods are gone, so is the emulator's record of them
        twin.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(twin.state_dir, 0o700)
        key_path = twin.state_dir / "api_key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("twin_" + secrets.token_urlsafe(24) + "\n")
        (twin.state_dir / "twin.json").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "r1lab.cloud.twin.daemon", "--state-dir", str(twin.state_dir)]
        cmd += ["--network", network_kind, "--pods", pods]
        if link_mbit is not None:
            cmd += ["--link-mbit", str(link_mbit)]
        env = scrubbed_env()  # the daemon and its pods see none of the researcher's secrets
        pkg_root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with open(twin.state_dir / "daemon.log", "ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, cwd="/",
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if twin.running():
                return twin
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = (twin.state_dir / "daemon.log").read_text(errors="replace")[-2000:]
        if proc.poll() is None:
            proc.terminate()
        twin._force_clean()
        raise TwinError(
            f"the twin did not come up within {timeout_s:.0f} s; {twin.state_dir}/daemon.log:\n{tail}"
        )

    # --- using it ------------------------------------------------------------------------------------------

    def client_env(self) -> dict[str, str]:
        """The settings that point r1lab's RunPod client at this twin (the same ones a real account uses)."""
        return {"RUNPOD_API_BASE": self.url, "RUNPOD_API_KEY": self.api_key}

    def activate(self) -> dict[str, str]:
        """Point this process's RunPod client at the twin; returns the previous values (for `deactivate`)."""
        env = self.client_env()
        previous = {k: os.environ.get(k, "") for k in env}
        os.environ.update(env)
        return previous

    @staticmethod
    def deactivate(previous: dict[str, str]) -> None:
        for k, v in previous.items():
            if v:
                os.environ[k] = v
            else:
                os.environ.pop(k, None)

    def status(self) -> dict[str, Any]:
        info = self.info
        pods_dir = self.state_dir / "pods"
        pods = sorted(p.name for p in pods_dir.iterdir()) if pods_dir.is_dir() else []
        inst = info.get("instance")
        return {
            "state_dir": str(self.state_dir),
            "running": self.running(),
            **{k: info.get(k) for k in ("url", "instance", "subnet", "host_ip", "network", "link_mbit", "pid")},
            "pods": pods,
            "netns": [n for n in network.sh("ip", "netns", "list", check=False).stdout.split()
                      if inst and n.startswith(f"r1lab-{inst}-")],
        }  # fmt: skip

    def leftovers(self) -> dict[str, list[str] | list[int]]:
        """Everything of this twin still on the machine (empty lists: nothing)."""
        info = self.info
        inst = info.get("instance")
        if not inst:
            return {}
        out: dict[str, list[str] | list[int]] = {**network.leftovers(inst, info.get("subnet"))}
        out["processes"] = _processes(self.state_dir, inst)
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        out["mounts"] = [m for m in mounts if str(self.state_dir) in m or f"r1lab-{inst}-" in m]
        out["mountpoint_records"] = (
            [str(p) for p in MOUNTPOINTS.glob(f"*/{inst}")] if MOUNTPOINTS.is_dir() else []
        )
        return out

    # --- taking it down ------------------------------------------------------------------------------------

    def down(self, timeout_s: float = 60.0) -> dict[str, list[str] | list[int]]:
        """Stop the daemon (which terminates every pod and removes the network), then sweep anything a crash
        left; return `leftovers()` (all empty on success) and raise TwinError if something stayed."""
        info = self.info
        pid = self._daemon_pid()
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self._force_clean()
        left = self.leftovers()
        if any(left.values()):
            raise TwinError(f"twin {info.get('instance')} left things behind: {left}")
        for name in ("emulator", "pods", "volumes", "hosts", "api_key"):
            p = self.state_dir / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return left

    def _force_clean(self) -> None:
        """Remove what a twin instance may have left (idempotent; safe when the daemon already cleaned)."""
        info = self.info
        inst = info.get("instance")
        if not inst:
            return
        for index in network.pod_indices(inst):
            kill_netns_processes(network.netns_name(inst, index))
        for pid in _processes(self.state_dir, inst):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        network.destroy_instance(inst, info.get("subnet"))
        release_mountpoints(inst)


def _processes(state_dir: Path, inst: str) -> list[int]:
    """Processes of this twin: in one of its network namespaces, or running with its state dir in argv."""
    pids: set[int] = set()
    for index in network.pod_indices(inst):
        out = network.sh("ip", "netns", "pids", network.netns_name(inst, index), check=False).stdout
        pids |= {int(p) for p in out.split() if p.isdigit()}
    needle = str(state_dir).encode()
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"r1lab.cloud.twin" in cmdline:
            pids.add(int(d.name))
    return sorted(pids)


# --- runs: automatic use when params say provider twin ---------------------------------------------------------


def twin_for_run(exp: Any, run_dir: Path | str, state_dir: Path | str | None = None) -> Twin | None:
    """For `provider.kind: twin`: find the running twin or start one, and point this process's RunPod client at
    it (RUNPOD_API_BASE/RUNPOD_API_KEY). A twin this call starts is recorded in the run's ledger (kind `twin`), so
    the run's teardown takes it down; a twin someone started with `r1lab twin up` is left running for them.
    Returns None for real providers (nothing to do)."""
    if exp.provider.kind != "twin":
        return None
    from r1lab.teardown import Ledger

    twin = Twin.find(state_dir)
    if twin is None:
        twin = Twin.up(state_dir, exp.provider.network)
        Ledger(Path(run_dir)).record(
            "twin", twin.info["instance"], f"r1lab-twin-{twin.info['instance']}", "twin",
            state_dir=str(twin.state_dir), url=twin.url,
        )  # fmt: skip
    twin.activate()
    return twin


def teardown_twin(entry: dict[str, Any], run_dir: Path) -> None:
    """Ledger handler for kind `twin`: take the twin down (gone already counts as done)."""
    twin = Twin(Path(entry["meta"]["state_dir"]))
    if twin.info.get("instance") not in (None, entry["id"]):
        return  # the state dir holds a newer twin: not the one this run started
    twin.down()
