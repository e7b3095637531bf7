"""PID 1 of a twin pod: sets up the pod's private view of the machine, runs sshd, reaps orphans.

Started by `netns.PodHosts` as
`ip netns exec <ns> unshare --pid --uts --mount --fork --mount-proc python -m r1lab.cloud.twin.podinit CFG`,
so it runs in the pod's own network, PID, UTS and mount namespaces. In the (private) mount namespace it mounts:
a tmpfs on /run (sshd's privilege-separation dir lives there) and on /dev/shm; the pod's own /tmp and home
(/root, with the directories the Python interpreter lives in bound through); the twin's /etc/hosts; the network
volume (a shared host directory) at its mount path. Nothing of this is visible outside the pod, and all of it
disappears with the pod's last process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

POD_DIR = "/run/r1lab-pod"  # staging mounts, in the pod's own tmpfs /run
POD_SSHD_DIR = f"{POD_DIR}/sshd"  # where the pod sees its sshd config and host key


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def setup(cfg: dict) -> None:
    """Mount the pod's view. Sources are staged under /run first: home and /tmp hide host paths (the state
    dir may live under either), so nothing is read from the host after the first of them is replaced."""
    socket.sethostname(cfg["hostname"])
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", "/run")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", "/dev/shm")
    home = Path(cfg["home"])
    for src in cfg.get("bind_through", []):
        dst = home / Path(src).relative_to(cfg["host_home"])
        dst.mkdir(parents=True, exist_ok=True)
        _mount("--bind", src, str(dst))
    stage = {"home": f"{POD_DIR}/home", "tmp": f"{POD_DIR}/tmp", "sshd": POD_SSHD_DIR}
    for path in stage.values():
        os.makedirs(path, exist_ok=True)
    _mount("--rbind", str(home), stage["home"])
    _mount("--bind", cfg["tmp"], stage["tmp"])
    for src in cfg.get("tmp_through", []):  # the venv / checkout under the host's /tmp, seen at the same path
        dst = Path(stage["tmp"]) / Path(src).relative_to("/tmp")
        dst.mkdir(parents=True, exist_ok=True)
        _mount("--bind", src, str(dst))
    _mount("--bind", cfg["sshd_dir"], stage["sshd"])
    _mount("--bind", cfg["hosts_file"], "/etc/hosts")
    for src, dst in cfg.get("mounts", []):
        _mount("--bind", src, dst)
    _mount("--rbind", stage["home"], cfg["host_home"])
    _mount("--rbind", stage["tmp"], "/tmp")


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    setup(cfg)
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    sshd = subprocess.Popen([cfg["sshd"], "-D", "-e", "-f", f"{POD_SSHD_DIR}/sshd_config"], env=env)
    print(f"pod {cfg['hostname']}: sshd pid {sshd.pid}", flush=True)
    while not stopping:
        try:  # PID 1 reaps every orphan of the pod (as a container's init does)
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = 0
        if pid == sshd.pid:
            print("sshd exited; pod stops", flush=True)
            return 1
        if pid == 0:
            time.sleep(0.2)
    for sig in (signal.SIGTERM, signal.SIGKILL):  # everything of the pod: PID 1 exiting kills the rest anyway
        try:
            os.kill(-1, sig)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
