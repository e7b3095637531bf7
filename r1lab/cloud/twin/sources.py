"""The twin's package sources: an apt repository and a Python package index, served offline on its bridge.

Filled once (`fill()`, `python -m r1lab.cloud.twin.sources fill`) under `root()` (default
/var/cache/r1lab/sources, outside the repository):
- `apt/`: the Debian packages the pods' setup lines may install (`APT_PACKAGES`), downloaded by apt inside a copy
  of the base image (so their dependencies are what that image lacks), indexed with dpkg-scanpackages;
- `wheels/` + `simple/`: the wheels of `PY_REQUIREMENTS` for the twin pods' platform (CPython 3.11, manylinux
  x86_64: the base image's Python), downloaded by pip through the host's caches and PyPI, with a PEP 503 index.
Then `Sources.start(host)` serves both over HTTP on the twin's host address; pods see them as their only apt
source and their pip/uv index (`netns.PodHosts`). Nothing outside the twin is reached after the fill.

What needs a GPU (the CUDA build of vLLM, CUDA torch) is not filled: `resolve.py` resolves it for the real pod's
platform and the twin substitutes its own engine, recorded in the run.
"""

from __future__ import annotations

import argparse
import fcntl
import functools
import hashlib
import html
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

APT_PACKAGES = ["etcd-server", "etcd-client", "nats-server"]
# What r1lab's pods install on the twin: Ray as the params pin it, Dynamo's runtime with the deps of its
# `ai-dynamo` package (installed --no-deps: facts.md), the hub client the utility pod uses, the remote load
# generator's numpy/uvloop/orjson. `ai-dynamo` itself is fetched without dependencies (NO_DEPS).
PY_REQUIREMENTS = [
    "ray[default]==2.60.0",
    "ai-dynamo-runtime==1.6.1",
    "aiohttp>=3.14.3,<4",
    "kubernetes>=32.0.1,<33",
    "msgspec>=0.19",
    "prometheus-client>=0.23.1,<1",
    "pyzmq>=26",
    "redis>=6.2,<9",
    "tqdm",
    "transformers>=4.56",
    "typing-extensions>=4.10",
    "zstandard>=0.23,<1",
    "certifi",
    "huggingface_hub[hf_xet]>=0.34",
    "numpy>=1.26",
    "uvloop>=0.19",
    "orjson>=3.10",
    "pip",
    "setuptools",
    "wheel",
]
NO_DEPS = ["ai-dynamo==1.6.1"]
FILL_FORMAT = 2


class SourcesError(RuntimeError):
    """The sources could not be filled or served; names what and the fix."""


def root() -> Path:
    return Path(os.environ.get("R1LAB_TWIN_SOURCES", "/var/cache/r1lab/sources"))


def fill_key() -> str:
    blob = json.dumps([APT_PACKAGES, PY_REQUIREMENTS, NO_DEPS, FILL_FORMAT])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _say(msg: str) -> None:
    print(f"twin sources: {msg}", file=sys.stderr, flush=True)


def ensure(image: str = "runpod/base:0.6.2-cpu") -> Path:
    """The filled sources dir (filled first when missing or stale); a file lock serialises fillers."""
    d = root()
    if _filled(d):
        return d
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _filled(d):
            fill(d, image)
    return d


def _filled(d: Path) -> bool:
    try:
        return json.loads((d / "fill.json").read_text())["key"] == fill_key()
    except (OSError, ValueError, KeyError):
        return False


def fill(d: Path, image: str) -> dict:
    t0 = time.monotonic()
    info: dict[str, Any] = {
        "key": fill_key(),
        "apt": fill_apt(d / "apt", image),
        "apt_s": round(time.monotonic() - t0, 1),
    }
    t1 = time.monotonic()
    info["wheels"] = fill_wheels(d / "wheels", image)
    info["wheels_s"] = round(time.monotonic() - t1, 1)
    write_simple_index(d / "wheels", d / "simple")
    info["filled_at"] = time.time()
    (d / "fill.json").write_text(json.dumps(info, indent=1) + "\n")
    _say(f"filled in {time.monotonic() - t0:.0f} s: {len(info['apt'])} debs, {len(info['wheels'])} wheels")
    return info


def _in_base(image: str, work: Path, script: str, binds: dict[str, str] | None = None) -> None:
    """Run `script` in a throwaway overlay of the base image (chroot, the host's DNS; the base stays untouched),
    so apt and pip compute dependencies as the pods' own OS and Python see them."""
    from r1lab.cloud.twin import baseimage

    base = baseimage.ensure(image)
    shutil.rmtree(work, ignore_errors=True)
    for sub in ("upper", "work", "root"):
        (work / sub).mkdir(parents=True)
    r = work / "root"
    mounts = [
        f"mount -t overlay overlay -o lowerdir={base},upperdir={work}/upper,workdir={work}/work {r}",
        f"cp /etc/resolv.conf {r}/etc/resolv.conf",
        f"cp -L /etc/ssl/certs/ca-certificates.crt {r}/etc/ssl/certs/",  # the host's CAs (a TLS proxy's too)
        f"mount -t proc proc {r}/proc",
    ]
    for src, dst in (binds or {}).items():
        Path(src).mkdir(parents=True, exist_ok=True)
        mounts += [f"mkdir -p {r}{dst}", f"mount --bind {shlex.quote(src)} {r}{dst}"]
    full = " && ".join(mounts) + f" && chroot {r} sh -c {shlex.quote(script)}"
    p = subprocess.run(["unshare", "--mount", "sh", "-c", full], capture_output=True, text=True)
    if p.returncode != 0:
        raise SourcesError(f"in the base image, `{script[:200]}` failed: {(p.stderr or p.stdout)[-1500:]}")


def fill_apt(out: Path, image: str) -> list[str]:
    """apt-get download APT_PACKAGES and what the base image lacks of their dependencies; a Packages index."""
    work = out.parent / "apt-work"
    _say(f"downloading {' '.join(APT_PACKAGES)} with apt in the base image")
    _in_base(image, work, "apt-get update -qq && apt-get install -y -qq --download-only --no-install-recommends "
                          + " ".join(APT_PACKAGES))  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    debs = sorted((work / "upper/var/cache/apt/archives").glob("*.deb"))
    for deb in debs:
        shutil.copy2(deb, out / deb.name)
    shutil.rmtree(work, ignore_errors=True)
    idx = subprocess.run(
        ["dpkg-scanpackages", "--multiversion", "."], cwd=out, capture_output=True, text=True
    )
    if idx.returncode != 0:
        raise SourcesError(f"dpkg-scanpackages failed: {idx.stderr[-800:]}")
    (out / "Packages").write_text(idx.stdout)
    return [d.name for d in debs]


def fill_wheels(out: Path, image: str = "runpod/base:0.6.2-cpu") -> list[str]:
    """pip download (the base image's own pip and Python, so markers such as python_full_version are the
    pods') of PY_REQUIREMENTS with dependencies and NO_DEPS without, through the host's pip cache."""
    out.mkdir(parents=True, exist_ok=True)
    _say(
        f"downloading {len(PY_REQUIREMENTS) + len(NO_DEPS)} requirements and their dependencies in the base image"
    )
    dl = "python3 -m pip download -q --disable-pip-version-check --only-binary=:all: -d /r1lab-wheels"
    script = f"{dl} {shlex.join(PY_REQUIREMENTS)} && {dl} --no-deps {shlex.join(NO_DEPS)}"
    cache = Path(os.environ.get("PIP_CACHE_DIR", Path.home() / ".cache" / "pip"))
    _in_base(
        image, out.parent / "pip-work", script, {str(out): "/r1lab-wheels", str(cache): "/root/.cache/pip"}
    )
    shutil.rmtree(out.parent / "pip-work", ignore_errors=True)
    return sorted(p.name for p in out.glob("*.whl"))


def _project(wheel: str) -> str:
    return re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower()


def write_simple_index(wheels: Path, simple: Path) -> None:
    """PEP 503: simple/<project>/index.html linking each wheel (with its sha256) under ../../wheels/."""
    shutil.rmtree(simple, ignore_errors=True)
    simple.mkdir(parents=True)
    by: dict[str, list[Path]] = {}
    for w in sorted(wheels.glob("*.whl")):
        by.setdefault(_project(w.name), []).append(w)
    for proj, files in by.items():
        (simple / proj).mkdir()
        links = []
        for w in files:
            h = hashlib.sha256(w.read_bytes()).hexdigest()
            links.append(
                f'<a href="../../wheels/{html.escape(w.name)}#sha256={h}">{html.escape(w.name)}</a><br>'
            )
        (simple / proj / "index.html").write_text(
            "<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n"
        )
    index = "".join(f'<a href="{p}/">{p}</a><br>\n' for p in sorted(by))
    (simple / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{index}</body></html>\n")


# How the pods reach the sources: the name the twin's /etc/hosts gives this machine's bridge address
# (`netns.PodHosts`), a fixed port, and a path naming the fill (`fill_tag`). uv keys its cache (index pages, wheels)
# by the index URL: the same URL in every twin and run lets the pods' shared cache (`uv_cache`) serve what an earlier
# run fetched (02's head setup: its resolution ~4.7 s -> ~0.1 s). What a fill serves never changes (a new fill has a
# new tag, so a new URL), so it is served as cacheable for good: the pods' uv reads the index from its cache as it
# would from a package proxy, and still resolves and installs every line. Each twin binds its own bridge address;
# another port is taken when that one is busy (the cache then misses, nothing else changes).
HOST_NAME = "r1lab-twin-host"
PORT = 3141


def fill_tag(d: Path) -> str:
    """The fill of `d` (a digest of its fill.json, written last, with the fill's time and contents): the path
    prefix the sources are served under; "" when `d` holds no fill."""
    try:
        return hashlib.sha256((d / "fill.json").read_bytes()).hexdigest()[:12]
    except OSError:
        return ""


class _Served(http.server.SimpleHTTPRequestHandler):
    """The sources dir under `/<tag>/` (nothing outside it), every answer cacheable for good; `tag` "" (a dir
    holding no fill): the whole dir, without Cache-Control."""

    def __init__(self, *args: Any, tag: str, **kwargs: Any) -> None:
        self.tag = tag  # before the base class's __init__, which handles the request
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def _inside(self) -> bool:
        if not self.tag or self.path.startswith(f"/{self.tag}/"):
            return True
        self.send_error(404, f"not in this fill of the twin's sources (/{self.tag}/)")
        return False

    def do_GET(self) -> None:
        if self._inside():
            super().do_GET()

    def do_HEAD(self) -> None:
        if self._inside():
            super().do_HEAD()

    def translate_path(self, path: str) -> str:
        if self.tag and path.startswith(f"/{self.tag}/"):
            path = path[len(self.tag) + 1 :]
        return super().translate_path(path)

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        if self.tag and code in (200, 301, 304):
            self.send_header("Cache-Control", "max-age=31536000, immutable")


class Sources:
    """The filled sources served over HTTP on `host` (the twin's bridge address), under `/<fill_tag>/`: `apt/`,
    `simple/`. `port` None: PORT, else any free one."""

    def __init__(self, d: Path, host: str, port: int | None = None) -> None:
        self.tag = fill_tag(d)
        handler = functools.partial(_Served, tag=self.tag, directory=str(d))
        try:
            self.server = http.server.ThreadingHTTPServer((host, PORT if port is None else port), handler)
        except OSError:
            if port is not None:
                raise
            self.server = http.server.ThreadingHTTPServer((host, 0), handler)
        self.host, self.port = host, self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Sources:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def pod_config(self) -> dict[str, str]:
        """What `netns.PodHosts(sources=...)` writes into every pod (and the uv cache they share, `uv_cache`)."""
        base = f"http://{HOST_NAME}:{self.port}" + (f"/{self.tag}" if self.tag else "")
        return {
            "apt": f"deb [trusted=yes] {base}/apt ./",
            "pypi": f"{base}/simple/",
            "uv_cache": str(uv_cache()),
        }


def uv_cache() -> Path:
    """The uv cache every bare pod's `uv` uses (bound into the pod, `netns.UV_CACHE_IN_POD`), as a package proxy
    next to the pods would: a wheel one pod downloaded from the twin's index is not downloaded and unpacked again
    by the next pod (or run). What gets installed, and the resolution against the index, are unchanged: each
    setup line still runs in the pod and installs into its own root (copied, not linked, from the cache)."""
    d = Path(os.environ.get("R1LAB_TWIN_UV_CACHE", str(root().parent / "uv-pods")))
    d.mkdir(parents=True, exist_ok=True)
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m r1lab.cloud.twin.sources", description=__doc__.split("\n")[0]
    )
    ap.add_argument("cmd", choices=["fill"])
    ap.parse_args(argv)
    try:
        d = ensure()
    except SourcesError as exc:
        print(f"r1lab twin sources: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"dir": str(d), **json.loads((d / "fill.json").read_text())}, indent=1)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
