"""Runs ON THE POD (standard library only; pod images have no r1lab): the facts preflight judges.

Sent over SSH by `r1lab.preflight` as `python3 -c <this file, compressed> MODE JSON`. Modes:
- `facts`: binaries on PATH (and `--version` lines), Python modules and distribution versions, GPUs (nvidia-smi,
  or on the twin the declared R1LAB_GPU_TYPE / R1LAB_GPU_COUNT, labelled as declared), /dev/shm size, the
  environment's MALLOC_ARENA_MAX, free space at the given paths, the interface holding the pod's private address.
- `serve`: listen on the given TCP ports of the private address for `seconds` (then exit by itself); print which
  ports bound and which were in use. A connection sends one byte: `C` connect check, `P` ping (the server answers
  its clock, repeatable), `B` bulk (the server counts bytes until EOF, then answers the count).
- `client`: connect to every target's ports in parallel (timeout each), then on one port measure the round trip,
  the clock offset (best of the pings) and the bandwidth (a bounded bulk send).
Output: one line `@r1lab {json}`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

PREFIX = "@r1lab "


def emit(obj: dict) -> None:
    sys.stdout.write(PREFIX + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _run(argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return p.returncode, (p.stdout or p.stderr).strip()


def _ipv4_by_iface() -> dict[str, list[str]]:
    """Interface -> IPv4 addresses: `ip -o -4 addr` where iproute2 is installed, else SIOCGIFADDR per interface."""
    out: dict[str, list[str]] = {}
    code, text = _run(["ip", "-o", "-4", "addr", "show"]) if shutil.which("ip") else (1, "")
    if code == 0:
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "inet":
                out.setdefault(parts[1].split("@")[0], []).append(parts[3].split("/")[0])
        return out
    import fcntl

    for name in sorted(os.listdir("/sys/class/net")):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
            out.setdefault(name, []).append(socket.inet_ntoa(raw[20:24]))
        except OSError:
            pass
        finally:
            s.close()
    return out


def facts(cfg: dict) -> dict:
    res: dict = {"time": time.time(), "python": sys.version.split()[0]}
    res["binaries"] = {b: shutil.which(b) for b in cfg.get("binaries", [])}
    res["bin_versions"] = {}
    for b, argv in cfg.get("versions", {}).items():
        if res["binaries"].get(b):
            code, text = _run(argv)
            res["bin_versions"][b] = text.splitlines()[0][:200] if code == 0 and text else None
    # modules and distributions as the interpreter the commands run (`python` on PATH) sees them, in one call
    py = shutil.which(cfg.get("python", "python")) or shutil.which("python3")
    res["python_path"] = py
    found: dict = {}
    if py and (cfg.get("modules") or cfg.get("dists")):
        script = ("import json,sys,importlib.util as u\nfrom importlib import metadata as m\n"
                  "mods,dists=json.loads(sys.argv[1])\nout={'modules':{},'dists':{}}\n"
                  "for x in mods:\n    try: out['modules'][x]=u.find_spec(x) is not None\n"
                  "    except Exception: out['modules'][x]=False\n"
                  "for d in dists:\n    try: out['dists'][d]=m.version(d)\n    except Exception: out['dists'][d]=None\n"
                  "print(json.dumps(out))")  # fmt: skip
        code, text = _run([py, "-c", script, json.dumps([cfg.get("modules", []), cfg.get("dists", [])])], 30)
        try:
            found = json.loads(text.splitlines()[-1]) if code == 0 else {}
        except (ValueError, IndexError):
            found = {}
    res["modules"] = {x: bool((found.get("modules") or {}).get(x)) for x in cfg.get("modules", [])}
    dists = found.get("dists") or {}
    res["dists"] = {d: dists.get(d) for d in cfg.get("dists", [])}
    gpu: dict = {"source": "none"}
    if shutil.which("nvidia-smi"):
        code, text = _run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
            20,
        )
        rows = (
            [[x.strip() for x in line.split(",")] for line in text.splitlines() if line.strip()]
            if code == 0
            else []
        )
        gpu = {"source": "nvidia-smi", "error": None if code == 0 else text[-300:],
               "names": [r[0] for r in rows], "memory_mib": [r[1] for r in rows if len(r) > 1],
               "driver": rows[0][2] if rows and len(rows[0]) > 2 else None}  # fmt: skip
    elif os.environ.get("R1LAB_TWIN") == "1":
        gpu = {"source": "declared", "names": [os.environ.get("R1LAB_GPU_TYPE", "")] * int(os.environ.get("R1LAB_GPU_COUNT") or 0),
               "driver": None}  # fmt: skip
    res["gpu"] = gpu
    try:
        st = os.statvfs("/dev/shm")
        res["shm_bytes"] = st.f_blocks * st.f_frsize
    except OSError:
        res["shm_bytes"] = None
    res["env"] = {k: os.environ.get(k) for k in ("MALLOC_ARENA_MAX", "PATH")}
    vols = {}
    for path in cfg.get("paths", []):
        try:
            st = os.statvfs(path)
            vols[path] = {
                "exists": True,
                "free": st.f_bavail * st.f_frsize,
                "total": st.f_blocks * st.f_frsize,
            }
        except OSError:
            vols[path] = {"exists": False}
    res["paths"] = vols
    res["files"] = {p: os.path.exists(p) for p in cfg.get("files", [])}
    sizes = {}
    for top in cfg.get("sizes", []):  # bytes already there (a resumed download needs only the rest)
        n = 0
        for root, _, names in os.walk(top):
            for name in names:
                try:
                    n += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
        sizes[top] = n
    res["sizes"] = sizes
    if cfg.get("read"):
        res["read"] = read_rate(cfg["read"])
    addr = cfg.get("address")
    ifaces = _ipv4_by_iface()
    res["ifaces"] = ifaces
    res["iface"] = next((n for n, ips in ifaces.items() if addr in ips), None)
    return res


def read_rate(top: str, max_bytes: int = 512 << 20, max_s: float = 3.0) -> dict:
    """Read the largest file under `top` (up to max_bytes or max_s) past the page cache where the kernel allows:
    the volume's read rate, which bounds how fast an engine loads its weights."""
    best, size = None, -1
    for root, _, names in os.walk(top):
        for name in names:
            path = os.path.join(root, name)
            try:
                n = os.path.getsize(path)
            except OSError:
                continue
            if n > size:
                best, size = path, n
    if best is None:
        return {"error": f"no file under {top}"}
    fd = os.open(best, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        got, start = 0, time.monotonic()
        while got < max_bytes and time.monotonic() - start < max_s:
            chunk = os.read(fd, 8 << 20)
            if not chunk:
                break
            got += len(chunk)
        secs = max(time.monotonic() - start, 1e-6)
    finally:
        os.close(fd)
    return {"file": best, "bytes": got, "seconds": secs, "bytes_per_s": got / secs}


def serve(cfg: dict) -> None:
    addr, deadline = cfg["address"], time.monotonic() + float(cfg.get("seconds", 30))
    socks, ready, in_use = [], [], {}
    for port in cfg["ports"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, int(port)))
            s.listen(64)
        except OSError as exc:
            in_use[str(port)] = str(exc)
            s.close()
            continue
        socks.append(s)
        ready.append(int(port))
    emit({"ready": ready, "in_use": in_use})

    def handle(c: socket.socket) -> None:
        try:
            c.settimeout(10)
            while True:
                op = c.recv(1)
                if op == b"P":
                    c.sendall(struct.pack("!d", time.time()))
                    continue
                if op == b"B":
                    n = 0
                    while True:
                        chunk = c.recv(1 << 16)
                        if not chunk:
                            break
                        n += len(chunk)
                    c.sendall(struct.pack("!Q", n))
                break
        except OSError:
            pass
        finally:
            c.close()

    stop = cfg.get("stop") or ""

    def accept(s: socket.socket) -> None:
        s.settimeout(0.3)
        while time.monotonic() < deadline and not (stop and os.path.exists(stop)):
            try:
                c, _ = s.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    threads = [threading.Thread(target=accept, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _connect(addr: str, port: int, timeout: float) -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        s.sendall(b"C")
        return "ok"
    except TimeoutError:
        return f"timed out after {timeout:g} s"
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        s.close()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def client(cfg: dict) -> dict:
    timeout = float(cfg.get("timeout", 2.0))
    out: dict = {"ports": {}, "links": {}}
    results: dict = {}

    def one(pod: str, addr: str, port: int) -> None:
        results[(pod, port)] = _connect(addr, port, timeout)

    threads = []
    for t in cfg["targets"]:
        for port in t["ports"]:
            th = threading.Thread(target=one, args=(t["pod"], t["address"], int(port)))
            th.start()
            threads.append(th)
    for th in threads:
        th.join()
    for (pod, port), r in results.items():
        out["ports"].setdefault(pod, {})[str(port)] = r
    for t in cfg["targets"]:
        port = int(t["link_port"])
        link: dict = {}
        try:
            s = socket.create_connection((t["address"], port), timeout=timeout)
            s.settimeout(10)
            s.sendall(b"P")
            best = None
            rtts = []
            for i in range(int(cfg.get("pings", 20))):
                if i:
                    s.sendall(b"P")
                t0 = time.time()
                (remote,) = struct.unpack("!d", _recv_exact(s, 8))
                t1 = time.time()
                rtts.append(t1 - t0)
                if best is None or t1 - t0 < best[0]:
                    best = (t1 - t0, remote - (t0 + t1) / 2)
            s.close()
            rtts.sort()
            link["rtt_ms"] = rtts[len(rtts) // 2] * 1e3
            link["offset_s"] = best[1] if best else None
            s = socket.create_connection((t["address"], port), timeout=timeout)
            s.settimeout(30)
            s.sendall(b"B")
            chunk = b"\0" * (1 << 16)
            sent, start = 0, time.monotonic()
            limit_s, limit_b = float(cfg.get("bw_seconds", 1.5)), int(cfg.get("bw_bytes", 64 << 20))
            while time.monotonic() - start < limit_s and sent < limit_b:
                s.sendall(chunk)
                sent += len(chunk)
            s.shutdown(socket.SHUT_WR)
            (got,) = struct.unpack("!Q", _recv_exact(s, 8))
            elapsed = time.monotonic() - start
            s.close()
            link.update({"bytes": got, "seconds": elapsed, "mbit_s": got * 8 / elapsed / 1e6})
        except OSError as exc:
            link["error"] = exc.strerror or str(exc)
        out["links"][t["pod"]] = link
    return out


def main(argv: list[str]) -> int:
    mode, cfg = argv[0], json.loads(argv[1])
    if mode == "facts":
        emit(facts(cfg))
    elif mode == "serve":
        serve(cfg)
    elif mode == "client":
        emit(client(cfg))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
