"""PID 1 of a twin pod: sets up the pod's private view of the machine, runs sshd, reaps orphans.

Two kinds of pod (`cfg["bare"]`):
- bare (`setup_bare`): the pod's own root filesystem, as on RunPod. An overlay over the cached base image that
  stands in for the params' image (`baseimage`), with its own /proc, /sys, a minimal /dev, /dev/shm, /run, the
  twin's /etc/hosts, the network volume at its mount path, apt and pip pointed at the twin's package sources;
  then `pivot_root` into it, so nothing of the host's files is left in view. The pod's `args` run as the
  container's command with the environment RunPod injects (r1lab's start script: sshd, watchdog); PID 1 stops
  the pod when that command exits, as a container does.
- host (`setup`, the older kind):

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


DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")


def setup_bare(cfg: dict) -> None:
    """Mount the pod's own root (overlay over the base image) and pivot into it; see the module docstring."""
    socket.sethostname(cfg["hostname"])
    root = cfg["root"]
    lower, upper, work = cfg["lower"], cfg["upper"], cfg["work"]
    _mount("-t", "overlay", "overlay", "-o", f"lowerdir={lower},upperdir={upper},workdir={work}", root)
    r = Path(root)
    _mount("-t", "proc", "-o", "nosuid,nodev,noexec", "proc", f"{root}/proc")
    _mount("-t", "sysfs", "-o", "ro,nosuid,nodev,noexec", "sysfs", f"{root}/sys")
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid", "tmpfs", f"{root}/dev")
    for node in DEV_NODES:
        (r / "dev" / node).touch()
        _mount("--bind", f"/dev/{node}", f"{root}/dev/{node}")
    for d in ("pts", "shm"):
        (r / "dev" / d).mkdir()
    _mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=0620", "devpts", f"{root}/dev/pts")
    os.symlink("pts/ptmx", f"{root}/dev/ptmx")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, f"{root}/dev/{name}")
    _mount("-t", "tmpfs", "-o", f"mode=1777,nosuid,nodev,size={cfg['shm_size']}", "tmpfs", f"{root}/dev/shm")
    _mount("-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", f"{root}/run")
    (r / "etc/hosts").touch()  # the bootstrapped base has none; a container runtime provides it
    _mount("--bind", cfg["hosts_file"], f"{root}/etc/hosts")
    (r / "etc/hostname").write_text(cfg["hostname"] + "\n")
    for rel, text in (cfg.get("files") or {}).items():  # apt/pip sources of the twin, resolv.conf
        f = r / rel.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    for rel in cfg.get("remove") or []:
        (r / rel.lstrip("/")).unlink(missing_ok=True)
    for src, dst in cfg.get("mounts", []):
        (r / dst.lstrip("/")).mkdir(parents=True, exist_ok=True)
        _mount("--bind", src, f"{root}/{dst.lstrip('/')}")
    # the twin's CPU engine (netns.engine_binds): files or directories
    for src, dst in cfg.get("ro_mounts", []):
        target = r / dst.lstrip("/")
        if os.path.isdir(src):
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        _mount("--bind", src, str(target))
        _mount("-o", "remount,bind,ro", str(target))
    os.chdir(root)
    os.makedirs(".oldroot", exist_ok=True)
    # the host's binary, resolved before the pivot
    subprocess.run(["pivot_root", ".", ".oldroot"], check=True)
    os.chdir("/")
    subprocess.run(["umount", "-l", "/.oldroot"], check=True)  # the pod's own umount from here on
    os.rmdir("/.oldroot")


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if cfg.get("bare"):
        return main_bare(cfg)
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


def main_bare(cfg: dict) -> int:
    """Bare pod: set up the root, run the pod's command (RunPod's `args`) as the container's, reap orphans."""
    setup_bare(cfg)
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    argv = ["/bin/sh", "-c", cfg["args"]] if cfg.get("args") else ["sleep", "infinity"]
    main_proc = subprocess.Popen(argv, env=cfg["env"], cwd="/", stdin=subprocess.DEVNULL)
    print(f"pod {cfg['hostname']}: own root, command pid {main_proc.pid}", flush=True)
    code, why = 0, ""
    while not stopping:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid, status = 0, 0
        if pid == main_proc.pid:
            code = os.waitstatus_to_exitcode(status)
            why = f"pod command exited {code};"
            break
        if pid == 0:
            time.sleep(0.2)
    if stopping:
        why = "SIGTERM to the pod's PID 1:"
    try:
        os.kill(-1, signal.SIGTERM)
        time.sleep(0.5)
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nothing of the pod runs on
    _reap_all(deadline_s=10)  # until the last of them has exited
    # said once nothing of the pod runs on (its sshd no longer answers), not before the processes were stopped
    print(f"{why} pod stops", flush=True)
    return code


def _reap_all(deadline_s: float) -> None:
    """Reap the pod's processes until none is left (PID 1 is every orphan's parent) or `deadline_s` passes."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
