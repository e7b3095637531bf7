"""The twin's stand-ins for RunPod images: root filesystems built offline from Debian packages, cached.

Each image tag the params may name has a manifest in `images/<slug>.json`: what the real image ships (OS, Python,
pip, sshd, what is absent) and how the twin's base differs from it. A manifest names a build recipe
(`images/recipes.json`): builder (mmdebstrap), suite, mirror, packages, post steps. The built rootfs lives outside the
repository, under `cache_root()/<recipe hash>/rootfs` (default /var/cache/r1lab/twin-base), built once (with
progress on stderr and its duration in `build.json`) and reused by every pod: pods mount an overlay over it.

    python -m r1lab.cloud.twin.baseimage [--image TAG] [--json]   # build (or find) the base; print where
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

IMAGES_DIR = Path(__file__).with_name("images")
RECIPES = IMAGES_DIR / "recipes.json"
BUILD_FORMAT = 1  # bump when build() changes what it writes
# dpkg without an fsync per unpacked file while the rootfs is built (a power cut mid-build only loses a cache
# entry that is rebuilt); mmdebstrap keeps --dpkgopt lines in etc/dpkg/dpkg.cfg.d/99mmdebstrap, which _post
# removes, so the image is the same and its pods' dpkg syncs as before.
BUILD_ONLY_OPTS = {"mmdebstrap": ["--dpkgopt=force-unsafe-io"]}
BUILD_ONLY_DPKG_CFG = "etc/dpkg/dpkg.cfg.d/99mmdebstrap"


class BaseImageError(RuntimeError):
    """A base image is unknown or could not be built; the message names the image and the fix."""


def cache_root() -> Path:
    return Path(os.environ.get("R1LAB_TWIN_BASE_CACHE", "/var/cache/r1lab/twin-base"))


def manifests() -> dict[str, dict]:
    """Every supported image tag -> its manifest."""
    out = {}
    for p in sorted(IMAGES_DIR.glob("*.json")):
        if p.name == RECIPES.name:
            continue
        m = json.loads(p.read_text(encoding="utf-8"))
        out[m["image"]] = m
    return out


def manifest_for(image: str) -> dict:
    """The manifest of `image`; a clear error listing the supported tags otherwise."""
    known = manifests()
    if image not in known:
        raise BaseImageError(
            f"the twin has no base image for {image!r}: supported are {', '.join(sorted(known))}. Fix: use one "
            f"of them in pods[].image, or add a manifest under {IMAGES_DIR}"
        )
    return known[image]


@dataclass(frozen=True)
class Recipe:
    name: str
    spec: dict

    @property
    def key(self) -> str:
        """What the cache is keyed by: the recipe and the build format (the uv copied in is recorded, not keyed:
        bootstrap installs the newest uv, which must not force a rebuild)."""
        blob = json.dumps({"recipe": self.spec, "format": BUILD_FORMAT}, sort_keys=True)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def recipe(name: str) -> Recipe:
    specs = json.loads(RECIPES.read_text(encoding="utf-8"))
    if name not in specs:
        raise BaseImageError(f"{RECIPES}: no recipe {name!r} (have {', '.join(sorted(specs))})")
    return Recipe(name, specs[name])


def _uv() -> str | None:
    here = Path(sys.prefix) / "bin" / "uv"
    return str(here) if here.exists() else shutil.which("uv")


def _uv_version() -> str:
    uv = _uv()
    if uv is None:
        return "none"
    return subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.strip()


def _say(msg: str) -> None:
    print(f"twin base image: {msg}", file=sys.stderr, flush=True)


def ensure(image: str) -> Path:
    """The rootfs standing in for `image`, built first if it is not cached (a file lock serialises builders)."""
    r = recipe(manifest_for(image)["twin"]["recipe"])
    d = cache_root() / r.key
    if (d / "build.json").exists():
        return d / "rootfs"
    d.parent.mkdir(parents=True, exist_ok=True)
    with open(d.parent / f".{r.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (d / "build.json").exists():
            build(r, d)
    return d / "rootfs"


def build(r: Recipe, d: Path) -> dict:
    """Bootstrap the recipe into `d/rootfs` with its builder, apply its post steps, write `d/build.json` (duration
    included). mmdebstrap (Debian's) resolves with apt and downloads in parallel: measured here at load 11-12,
    147 s for the recipe against debootstrap's 300 s, whose shell resolver alone took 54 s."""
    s = r.spec
    builder = s.get("builder", "debootstrap")
    if shutil.which(builder) is None:
        raise BaseImageError(f"{builder} is not installed. Fix: run scripts/bootstrap.sh (it installs it)")
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rootfs = tmp / "rootfs"
    t0 = time.monotonic()
    _say(f"building {r.key} ({builder} {s['suite']} {s['variant']}, {len(s['include'])} packages) in {d}")
    cmd = [builder, f"--variant={s['variant']}", "--include=" + ",".join(s["include"]),
           *BUILD_ONLY_OPTS.get(builder, []), s["suite"], str(rootfs), s["mirror"]]  # fmt: skip
    log = tmp / f"{builder}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        last = 0.0
        for line in proc.stdout:
            f.write(line)
            if line.startswith("I: ") and time.monotonic() - last > 5:
                _say(f"{time.monotonic() - t0:.0f}s {line[3:].strip()}")
                last = time.monotonic()
        if proc.wait() != 0:
            tail = log.read_text(errors="replace")[-1500:]
            raise BaseImageError(f"{builder} failed for {r.key} (log {log}):\n{tail}")
    _post(rootfs)
    info = {
        "key": r.key,
        "recipe": r.name,
        "spec": s,
        "uv": _uv_version(),
        "python": _chroot_out(rootfs, "python3", "--version"),
        "pip": _chroot_out(rootfs, "python3", "-m", "pip", "--version").split(" from ")[0],
        "sshd": _chroot_out(rootfs, "dpkg-query", "-W", "-f=${Version}", "openssh-server"),
        "os": _os_release(rootfs),
        "build_s": round(time.monotonic() - t0, 1),
        "built_at": time.time(),
    }
    (tmp / "build.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)
    _say(f"built {r.key} in {info['build_s']} s ({info['os']}, {info['python']}, {info['pip']})")
    return info


def _post(rootfs: Path) -> None:
    cfg = rootfs / BUILD_ONLY_DPKG_CFG
    if cfg.exists() and cfg.read_text().split() == ["force-unsafe-io"]:
        cfg.unlink()
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    for key in rootfs.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    uv = _uv()
    if uv:
        shutil.copy2(uv, rootfs / "usr/local/bin/uv")
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (rootfs / sub).glob("*"):
            if p.is_file():
                p.unlink()
    (rootfs / "workspace").mkdir(exist_ok=True)


def _chroot_out(rootfs: Path, *argv: str) -> str:
    p = subprocess.run(["chroot", str(rootfs), *argv], capture_output=True, text=True)
    return (p.stdout or p.stderr).strip()


def _os_release(rootfs: Path) -> str:
    for line in (rootfs / "etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "?"


def build_info(image: str) -> dict | None:
    """The cached build's record (None when not built yet)."""
    r = recipe(manifest_for(image)["twin"]["recipe"])
    p = cache_root() / r.key / "build.json"
    return json.loads(p.read_text()) if p.exists() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m r1lab.cloud.twin.baseimage", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--image", action="append", help="image tag (default: every supported one)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    out: dict[str, dict] = {}
    try:
        for image in a.image or sorted(manifests()):
            ensure(image)
            info = build_info(image)
            assert info is not None, image  # ensure() has just built it
            out[image] = info
    except BaseImageError as exc:
        print(f"r1lab twin base: {exc}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        for image, info in out.items():
            print(f"{image}: {cache_root() / info['key'] / 'rootfs'} (built in {info['build_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
