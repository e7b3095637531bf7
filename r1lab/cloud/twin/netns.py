"""Twin pods as hosts: the emulator's `PodBackend` whose pods are network namespaces with a real sshd.

Each pod gets its own network namespace on the twin's bridge (`network.TwinNet`), its own PID, UTS and mount
namespaces (`podinit` is PID 1 there), sshd on port 22 of its address for the registered keys, the network
volume (a shared directory under the twin's state dir) bound at the pod's mount path, a private /tmp and home,
and an SSH session environment with the project's venv on PATH and the pod's declared GPUs (`RUNPOD_GPU_COUNT`,
`R1LAB_GPU_TYPE`, as RunPod injects them). There is no nvidia-smi: GPUs are declared, never faked.

Two kinds of pod, chosen by `pods=` (default: $R1LAB_TWIN_PODS, else "bare"; `pod_kind`):
- "bare" (the default): as on RunPod. The pod's own root filesystem (an overlay over the base image standing in for its
  `image`, `baseimage`), RunPod's injected environment (PUBLIC_KEY, RUNPOD_*, PRIMARY_ADDR/NODE_RANK/... in
  Instant Clusters), its `args` run as the container's command (r1lab's start script: sshd, watchdog), apt and
  pip pointed at the twin's package sources (`sources`; uv with one cache shared by the pods, bound at
  UV_CACHE_IN_POD, as a package proxy next to them), the interface named as on RunPod (`ens1` in clusters);
- "host": the older kind, asked for explicitly (`R1LAB_TWIN_PODS=host`, `Twin.up(pods="host")`): a private /tmp
  and home over the host's root, with the project's venv on PATH and sshd run by the twin; setup lines are not
  run. For tests that drive the serving stack over SSH without a setup (they say why).

Layout under the state dir: `hosts` (the twin's /etc/hosts: `<ip> <podId> <podId>.runpod.internal`),
`volumes/<volumeId>/`, `pods/<podId>/{pod.json, home/, tmp/, sshd/, init.log}`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r1lab.cloud.twin.network import TwinNet, netns_name, pod_indices, pod_ip, sh
from r1lab.cloud.twin.podinit import POD_SSHD_DIR
from r1lab.cloud.twin.sources import HOST_NAME

# the emulator (and its jsonschema) loads only where pods are made: `r1lab twin status` stays fast
if TYPE_CHECKING:
    from r1lab.cloud.emulator.backends import PodHost

MOUNTPOINTS = Path("/run/r1lab-twin/mountpoints")
STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


POD_KINDS = ("bare", "host")


def pod_kind(pods: str | None = None) -> str:
    """The kind of twin pod: `pods` if given, else $R1LAB_TWIN_PODS, else "bare" (as bare as a RunPod pod)."""
    kind = pods or os.environ.get("R1LAB_TWIN_PODS") or "bare"
    if kind not in POD_KINDS:
        raise ValueError(f"R1LAB_TWIN_PODS / pods must be 'bare' or 'host', got {kind!r}")
    return kind


class PodStartError(RuntimeError):
    """A pod host did not come up; names the pod and its log."""


def project_venv() -> Path:
    """The venv whose bin/ goes on the pods' PATH (the one running this code)."""
    return Path(sys.prefix)


# vLLM's CPU build links libnuma (vllm/_C*.so); the pods' base image has no libnuma1 (RunPod's CUDA images do)
ENGINE_SYSTEM_LIBS = ("/usr/lib/x86_64-linux-gnu/libnuma.so.1",)
POD_ENGINE_VENV = "/opt/r1lab-cpu-engine"  # where a bare pod sees the twin's CPU engine (engine_binds)
UV_CACHE_IN_POD = "/var/cache/r1lab-twin-uv"  # the uv cache the twin's bare pods share (sources.uv_cache)


def engine_binds() -> list[tuple[str, str]]:
    """What a bare pod gets of the twin's CPU engine (the stand-in for the GPU build of vLLM, NIXL and torch that
    the setup lines install on RunPod and the twin leaves out, `setuplines.GPU_ONLY`): `.venv-dynamo-vllm`
    (`scripts/bootstrap.sh --dynamo-vllm`; $R1LAB_DYNAMO_VLLM_VENV overrides) at `POD_ENGINE_VENV`, the
    interpreter it was made with (its venv's python links to it by path) and the system libraries of
    `ENGINE_SYSTEM_LIBS`; all read-only. (host, pod path) pairs; none when that venv is absent."""
    venv = Path(os.environ.get("R1LAB_DYNAMO_VLLM_VENV") or Path(_package_root()) / ".venv-dynamo-vllm")
    cfg = venv / "pyvenv.cfg"
    if not cfg.is_file():
        return []
    home = next((ln.split("=", 1)[1].strip() for ln in cfg.read_text().splitlines()
                 if ln.split("=", 1)[0].strip() == "home"), "")  # fmt: skip
    out = [(os.path.realpath(venv), POD_ENGINE_VENV)]
    prefix = Path(os.path.realpath(home)).parent if home else None
    if prefix is not None and prefix != Path("/usr") and prefix.is_dir():  # a system python is in the image
        out.append((str(prefix), str(prefix)))
    out += [(lib, lib) for lib in ENGINE_SYSTEM_LIBS if os.path.exists(lib)]
    return out


def _bind_through(home: Path) -> list[str]:
    """Top-level directories of `home` the interpreter lives in (e.g. /root/.pyenv), kept visible in pods."""
    out = []
    for p in {Path(os.path.realpath(sys.base_prefix)), Path(os.path.realpath(sys.prefix))}:
        try:
            rel = p.relative_to(home)
        except ValueError:
            continue
        out.append(str(home / rel.parts[0]))
    return sorted(set(out))


def _tmp_through() -> list[str]:
    """The venv and project checkout when they live under /tmp (a CI clone, say): bound through the pod's
    private /tmp, else the pods' PATH points at a venv they cannot see."""
    out: set[str] = set()
    for p in {Path(os.path.realpath(sys.prefix)), Path(_package_root())}:
        if p.is_relative_to("/tmp") and p != Path("/tmp"):
            out.add(str(p))
    return sorted(p for p in out if not any(p != q and Path(p).is_relative_to(q) for q in out))


class PodHosts:
    """`PodBackend` of the twin: one namespace host per emulator pod."""

    def __init__(
        self,
        state_dir: Path | str,
        net: TwinNet,
        sshd: str | None = None,
        pods: str | None = None,
        sources: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.net = net
        self.kind = pod_kind(pods)
        self.sources = sources or {}  # {"apt": deb line, "pypi": simple index url}
        self.sshd = sshd or shutil.which("sshd") or "/usr/sbin/sshd"
        self._lock = threading.RLock()
        self._pods: dict[str, dict[str, Any]] = {}  # pod id -> {index, ns, ip, dir, proc}
        self._removals: list[threading.Thread] = []
        self._reserved: dict[tuple[Any, Any], int] = {}  # (cluster id, rank) -> address slot (`_index_for`)
        (self.state_dir / "pods").mkdir(parents=True, exist_ok=True)
        (self.state_dir / "volumes").mkdir(parents=True, exist_ok=True)
        self.hosts_file = self.state_dir / "hosts"
        self._write_hosts()

    # --- PodBackend ----------------------------------------------------------------------------------------

    def start(self, pod: dict[str, Any], public_keys: list[str]) -> PodHost:
        from r1lab.cloud.emulator.backends import PodHost

        pod_id = pod["id"]
        with self._lock:
            info = self._pods.get(pod_id)
            if info is None:
                index = self._index_for(pod)
                ifname = "ens1" if pod.get("cluster") and self.kind == "bare" else "eth0"
                ns, ip = self.net.add_pod(index, ifname=ifname)
                info = {"index": index, "ns": ns, "ip": ip, "dir": self.state_dir / "pods" / pod_id,
                        "cluster": pod.get("cluster")}  # fmt: skip
                self._pods[pod_id] = info
                self._write_hosts()
            self._kill(pod_id)
            if self.kind == "bare":
                self._launch_bare(pod, public_keys, info)
            else:
                self._launch(pod, public_keys, info)
        ports = {p: int(p.split("/")[0]) for p in pod.get("ports") or []}
        ports.setdefault("22/tcp", 22)
        gpu = pod.get("gpu") or {}
        return PodHost(
            ip=info["ip"],
            ports=ports,
            username="root",
            private_ip=info["ip"],
            meta={"netns": info["ns"], "dir": str(info["dir"]), "gpu": gpu, "kind": self.kind},
        )

    def _index_for(self, pod: dict[str, Any]) -> int:
        """A free address slot for the pod. The members of an Instant Cluster get theirs reserved together, in
        rank order, when the first of them starts: each member's PRIMARY_ADDR is then rank 0's address whichever
        member starts first (RunPod assigns a cluster's addresses before its pods start)."""
        used = {p["index"] for p in self._pods.values()} | set(pod_indices(self.net.inst))
        used |= set(self._reserved.values())
        cl = pod.get("cluster") or {}
        key = (cl.get("id"), cl.get("rank"))
        if not cl or key not in self._reserved and not cl.get("nodes"):
            return next(i for i in range(1, 251) if i not in used)
        for rank in range(int(cl.get("nodes") or 0)):
            if (cl["id"], rank) not in self._reserved:
                free = next(i for i in range(1, 251) if i not in used)
                self._reserved[(cl["id"], rank)] = free
                used.add(free)
        return self._reserved[key]

    def stop(self, pod_id: str) -> None:
        with self._lock:
            self._kill(pod_id)

    def terminate(self, pod_id: str) -> None:
        with self._lock:
            info = self._pods.pop(pod_id, None)
            if info is None:
                return
            cl = info.get("cluster") or {}
            self._reserved.pop((cl.get("id"), cl.get("rank")), None)
            self._kill(pod_id, info)
            self.net.remove_pod(info["index"])
            self._remove_dir(info["dir"])
            self._write_hosts()

    def close(self) -> None:
        with self._lock:
            for pod_id in list(self._pods):
                self.terminate(pod_id)
        for t in self._removals:
            t.join()
        release_mountpoints(self.net.inst)

    def running(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: {"ip": v["ip"], "ns": v["ns"]} for k, v in self._pods.items()}

    # --- internals -----------------------------------------------------------------------------------------

    def _remove_dir(self, d: Path) -> None:
        """A terminated pod's files go at once from its path; a bare pod's container disk (hundreds of MB of
        installed packages) is deleted in the background, so terminate answers as fast as RunPod's does.
        `close()` waits for every deletion."""
        if not d.exists():
            return
        trash = d.with_name(f".gone-{d.name}-{time.monotonic_ns()}")
        d.rename(trash)
        # rm -rf: 1.7x faster than shutil.rmtree here (5,717 files: 10.3 s against 18.0 s at load 14), and
        # --one-file-system never descends into a mount that outlived the pod (a volume's bind mount)
        argv = ["rm", "-rf", "--one-file-system", str(trash)]
        t = threading.Thread(target=subprocess.run, args=(argv,), kwargs={"check": False}, daemon=True)
        t.start()
        self._removals = [x for x in self._removals if x.is_alive()] + [t]

    def _write_hosts(self) -> None:
        lines = ["127.0.0.1 localhost", f"{self.net.host_ip} {HOST_NAME}"]
        lines += [f"{v['ip']} {k} {k}.runpod.internal" for k, v in sorted(self._pods.items())]
        text = "\n".join(lines) + "\n"
        # rewrite in place: pods bind-mount this inode
        with open(self.hosts_file, "a+", encoding="utf-8") as f:
            f.seek(0)
            f.truncate()
            f.write(text)

    def _launch(self, pod: dict[str, Any], public_keys: list[str], info: dict[str, Any]) -> None:
        d: Path = info["dir"]
        home, tmp, sshd_dir = d / "home", d / "tmp", d / "sshd"
        for p in (home / ".ssh", tmp, sshd_dir):
            p.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        os.chmod(tmp, 0o1777)
        host_key = sshd_dir / "ssh_host_ed25519_key"
        if not host_key.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                check=True,
                capture_output=True,
            )
        auth = home / ".ssh" / "authorized_keys"
        auth.write_text("".join(k.strip() + "\n" for k in public_keys if k.strip()), encoding="utf-8")
        os.chmod(auth, 0o600)
        (home / ".ssh" / "environment").write_text(
            "".join(f"{k}={v}\n" for k, v in self.session_env(pod, info).items()), encoding="utf-8"
        )
        cfg = sshd_dir / "sshd_config"
        cfg.write_text(
            "\n".join(
                [
                    f"ListenAddress {info['ip']}",
                    "ListenAddress 127.0.0.1",
                    "Port 22",
                    f"HostKey {POD_SSHD_DIR}/{host_key.name}",
                    "AuthorizedKeysFile .ssh/authorized_keys",
                    f"PidFile {POD_SSHD_DIR}/sshd.pid",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "PermitUserEnvironment yes",
                    "UsePAM no",
                    "AllowTcpForwarding yes",
                    "MaxSessions 64",
                    "MaxStartups 64:30:128",
                    "Subsystem sftp internal-sftp",
                    "LogLevel ERROR",
                    "",
                ]
            ),
            encoding="utf-8",
        )
        mounts = []
        for src, dst in self._volume_mounts(pod, d):
            ensure_mountpoint(dst, self.net.inst)
            mounts.append([str(src), dst])
        host_home = os.path.expanduser("~root")
        init_cfg = {
            "hostname": pod["id"],
            "home": str(home),
            "host_home": host_home,
            "bind_through": _bind_through(Path(host_home)),
            "tmp": str(tmp),
            "tmp_through": _tmp_through(),
            "hosts_file": str(self.hosts_file),
            "mounts": mounts,
            "sshd": self.sshd,
            "sshd_dir": str(sshd_dir),
        }
        (d / "init.json").write_text(json.dumps(init_cfg, indent=1), encoding="utf-8")
        (d / "pod.json").write_text(json.dumps(pod, indent=1, default=str), encoding="utf-8")
        with open(d / "init.log", "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", info["ns"], "unshare", "--pid", "--uts", "--mount", "--fork",
                 "--mount-proc", sys.executable, "-m", "r1lab.cloud.twin.podinit", str(d / "init.json")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd="/", env={"PATH": STD_PATH, "PYTHONPATH": _package_root()},
            )  # fmt: skip
        info["proc"] = proc
        from r1lab.cloud.emulator.backends import wait_sshd  # loaded where pods are made (see the imports)

        if wait_sshd(info["ip"], 22, proc, 20):
            return
        tail = (d / "init.log").read_text(errors="replace")[-1500:]
        self._kill(pod["id"], info)
        raise PodStartError(
            f"pod {pod['id']}: sshd did not answer on {info['ip']}:22 within 20 s; log:\n{tail}"
        )

    def _launch_bare(self, pod: dict[str, Any], public_keys: list[str], info: dict[str, Any]) -> None:
        """A pod with its own root (see the module docstring); waits until the pod's own sshd answers."""
        from r1lab.cloud.twin import baseimage

        d: Path = info["dir"]
        lower = baseimage.ensure(pod.get("image") or "")
        # container disk is fresh at every start (RunPod keeps only volumes across a stop)
        for sub in ("upper", "work"):
            shutil.rmtree(d / sub, ignore_errors=True)
        for sub in ("upper", "work", "root"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        files = {
            "/etc/resolv.conf": "# the twin's pods resolve names through /etc/hosts only\n",
            # the twin's labels in every SSH session (as host-kind pods have them): declared GPUs, never faked
            "/etc/ssh/sshd_config.d/r1lab-twin.conf": "SetEnv "
            + " ".join(f'{k}="{v}"' for k, v in self.twin_labels(pod, info).items())
            + "\n",
        }
        remove = []
        if self.sources.get("apt"):
            files["/etc/apt/sources.list"] = f"# the twin's apt repository (offline)\n{self.sources['apt']}\n"
            remove.append("/etc/apt/sources.list.d/debian.sources")
        if self.sources.get("pypi"):
            url = self.sources["pypi"]
            host = url.split("//", 1)[1].split("/", 1)[0].split(":")[0]
            files["/etc/pip.conf"] = f"[global]\nindex-url = {url}\ntrusted-host = {host}\n"
            uv = f'[[index]]\nurl = "{url}"\ndefault = true\n'
            # one cache for the pods (sources.uv_cache), copied out of, never linked to
            if self.sources.get("uv_cache"):
                uv = f'cache-dir = "{UV_CACHE_IN_POD}"\nlink-mode = "copy"\n' + uv
            files["/etc/uv/uv.toml"] = uv
        init_cfg = {
            "bare": True,
            "hostname": pod["id"],
            "root": str(d / "root"),
            "lower": str(lower),
            "upper": str(d / "upper"),
            "work": str(d / "work"),
            "shm_size": os.environ.get("R1LAB_TWIN_SHM", "64m"),
            "hosts_file": str(self.hosts_file),
            "mounts": [[str(src), dst] for src, dst in self._volume_mounts(pod, d)]
            + ([[self.sources["uv_cache"], UV_CACHE_IN_POD]] if self.sources.get("uv_cache") else []),
            "ro_mounts": [[src, dst] for src, dst in engine_binds()],
            "files": files,
            "remove": remove,
            "args": pod.get("args") or "",
            "env": self.runpod_env(pod, info, public_keys),
        }
        (d / "init.json").write_text(json.dumps(init_cfg, indent=1), encoding="utf-8")
        os.chmod(d / "init.json", 0o600)  # PUBLIC_KEY and the create request's env
        (d / "pod.json").write_text(json.dumps(pod, indent=1, default=str), encoding="utf-8")
        with open(d / "init.log", "ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", info["ns"], "unshare", "--pid", "--uts", "--mount", "--fork",
                 "--mount-proc", sys.executable, "-m", "r1lab.cloud.twin.podinit", str(d / "init.json")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd="/", env={"PATH": STD_PATH, "PYTHONPATH": _package_root()},
            )  # fmt: skip
        info["proc"] = proc
        from r1lab.cloud.emulator.backends import wait_sshd

        if wait_sshd(info["ip"], 22, proc, 60):
            return
        tail = (d / "init.log").read_text(errors="replace")[-1500:]
        self._kill(pod["id"], info)
        raise PodStartError(
            f"pod {pod['id']}: its start command brought no sshd up on {info['ip']}:22 within 60 s "
            f"(RunPod runs the pod's args as the container's command: they must start sshd); log:\n{tail}"
        )

    def twin_labels(self, pod: dict[str, Any], info: dict[str, Any]) -> dict[str, str]:
        """What only the twin says about a pod: that it is the twin, its address, its declared GPUs."""
        gpu = pod.get("gpu") or {}
        return {
            "R1LAB_TWIN": "1",
            "R1LAB_POD_IP": info["ip"],
            "R1LAB_GPU_TYPE": str(gpu.get("id", "")),
            "R1LAB_GPU_COUNT": str(gpu.get("count", 0) if gpu else 0),
        }

    def runpod_env(self, pod: dict[str, Any], info: dict[str, Any], public_keys: list[str]) -> dict[str, str]:
        """The container environment RunPod gives a pod: the image's ENV, the create request's `env`, RUNPOD_*,
        PUBLIC_KEY, and in Instant Clusters PRIMARY_ADDR/NODE_ADDR/NODE_RANK/... (docs: pods/references/
        environment-variables, instant-clusters/configuration)."""
        gpu = pod.get("gpu") or {}
        env = {"PATH": STD_PATH, "HOME": "/root", "LANG": "C.UTF-8", "SHELL": "/bin/bash"}
        env.update({str(k): str(v) for k, v in (pod.get("env") or {}).items()})
        ports = [p for p in pod.get("ports") or [] if p.endswith("/tcp")] or ["22/tcp"]
        env.update(
            {
                "RUNPOD_POD_ID": pod["id"],
                "RUNPOD_POD_HOSTNAME": pod["id"],
                "RUNPOD_GPU_COUNT": str(gpu.get("count", 0) if gpu else 0),
                "RUNPOD_CPU_COUNT": str(os.cpu_count() or 1),
                "RUNPOD_PUBLIC_IP": info["ip"],
                "RUNPOD_DC_ID": str(pod.get("dataCenterId") or ""),
                "PUBLIC_KEY": "\n".join(k.strip() for k in public_keys if k.strip()),
                **{f"RUNPOD_TCP_PORT_{p.split('/')[0]}": p.split("/")[0] for p in ports},
            }
        )
        cl = pod.get("cluster")
        if cl:
            members = [v for v in self._pods.values() if (v.get("cluster") or {}).get("id") == cl.get("id")]
            primary = next((v["ip"] for v in members if v["cluster"].get("rank") == 0), None)
            if primary is None and (cl.get("id"), 0) in self._reserved:
                primary = pod_ip(self.net.subnet, self._reserved[(cl.get("id"), 0)])
            primary = primary or info["ip"]
            count = gpu.get("count", 0) if gpu else 0
            env.update(
                {
                    "PRIMARY_ADDR": primary,
                    "MASTER_ADDR": primary,
                    "PRIMARY_PORT": "29500",
                    "MASTER_PORT": "29500",
                    "NODE_ADDR": info["ip"],
                    "NODE_RANK": str(cl.get("rank", 0)),
                    "NUM_TRAINERS": str(count),
                    "HOST_NODE_ADDR": f"{primary}:29500",
                }
            )
            if cl.get("nodes"):
                env.update(NUM_NODES=str(cl["nodes"]), WORLD_SIZE=str(int(cl["nodes"]) * count))
        return {k: v for k, v in env.items()}

    def session_env(self, pod: dict[str, Any], info: dict[str, Any]) -> dict[str, str]:
        """What an SSH session in the pod sees, as in a RunPod container (RUNPOD_*), plus the twin's labels."""
        gpu = pod.get("gpu") or {}
        venv = project_venv()
        env = {str(k): str(v) for k, v in (pod.get("env") or {}).items()}
        env.update(
            {
                "PATH": f"{venv / 'bin'}:{STD_PATH}",
                "VIRTUAL_ENV": str(venv),
                "LANG": "C.UTF-8",
                "RUNPOD_POD_ID": pod["id"],
                "RUNPOD_POD_HOSTNAME": pod["id"],
                "RUNPOD_GPU_COUNT": str(gpu.get("count", 0) if gpu else 0),
                "RUNPOD_PUBLIC_IP": info["ip"],
                "RUNPOD_TCP_PORT_22": "22",
                "R1LAB_TWIN": "1",
                "R1LAB_POD_IP": info["ip"],
                "R1LAB_GPU_TYPE": str(gpu.get("id", "")),
                "R1LAB_GPU_COUNT": str(gpu.get("count", 0) if gpu else 0),
            }
        )
        return {k: v.replace("\n", " ") for k, v in env.items()}

    def _volume_mounts(self, pod: dict[str, Any], d: Path) -> list[tuple[Path, str]]:
        mounts = pod.get("mounts") or {}
        out = []
        for m in mounts.get("network") or []:
            src = self.state_dir / "volumes" / m["volumeId"]
            src.mkdir(parents=True, exist_ok=True)
            out.append((src, m["path"]))
        for m in [mounts["persistent"]] if isinstance(mounts.get("persistent"), dict) else []:
            src = d / "persistent"
            src.mkdir(parents=True, exist_ok=True)
            out.append((src, m["path"]))
        return out

    def _kill(self, pod_id: str, info: dict[str, Any] | None = None) -> None:
        """Stop every process of the pod: SIGTERM to its init, then SIGKILL to whatever is left in the netns."""
        info = info or self._pods.get(pod_id)
        if info is None:
            return
        kill_netns_processes(info["ns"])
        proc = info.pop("proc", None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def netns_pids(ns: str) -> list[int]:
    if not Path(f"/run/netns/{ns}").exists():
        return []
    out = sh("ip", "netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_netns_processes(ns: str, grace: float = 5.0) -> None:
    """SIGTERM every process in the network namespace, SIGKILL after `grace` seconds; wait until none is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        pids = netns_pids(ns)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and netns_pids(ns):
            time.sleep(0.1)


def _package_root() -> str:
    return str(Path(__file__).resolve().parents[3])


# --- mount points on the host ------------------------------------------------------------------------------


def _record_dir(path: str) -> Path:
    return MOUNTPOINTS / path.strip("/").replace("/", "%")


def ensure_mountpoint(path: str, inst: str) -> None:
    """Make sure `path` exists on the host (as a bind target); remember if the twin created it."""
    rec = _record_dir(path)
    rec.mkdir(parents=True, exist_ok=True)
    (rec / inst).touch()
    if not os.path.exists(path):
        os.makedirs(path, exist_ok=True)
        (rec / "created").touch()


def release_mountpoints(inst: str) -> None:
    """Forget this instance's mount points; remove those the twin created once no twin uses them."""
    if not MOUNTPOINTS.is_dir():
        return
    for rec in MOUNTPOINTS.iterdir():
        (rec / inst).unlink(missing_ok=True)
        users = [p for p in rec.iterdir() if p.name != "created"]
        if users:
            continue
        if (rec / "created").exists():
            path = "/" + rec.name.replace("%", "/")
            try:
                os.rmdir(path)  # only if empty: never delete data someone put there
            except OSError:
                pass
            (rec / "created").unlink(missing_ok=True)
        try:
            rec.rmdir()
        except OSError:
            pass
    for d in (MOUNTPOINTS, MOUNTPOINTS.parent):
        try:
            d.rmdir()
        except OSError:
            break


def pod_ns(inst: str, index: int) -> str:
    return netns_name(inst, index)
