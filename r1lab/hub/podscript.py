"""Runs ON THE POD: download a pinned set of repo files into a directory with huggingface_hub, verify, manifest.

Self-contained (standard library + huggingface_hub >= 0.23, optionally hf_xet): pod images have no r1lab.
r1lab sends this file's text inside the command (`python3 -c ...`) with one argument, a base64 JSON spec:
`{"repo_id", "commit", "dest", "files": [{"path", "size", "sha256" | null, "blob_id"}], "max_workers",
"verify": "full" | "fast", "interval", "attempts"}`.

It writes one JSON object per line on stdout, prefixed with `@r1lab ` (events: start, plan, cleanup, progress,
file, verify, error, done); anything else on stdout/stderr is huggingface_hub's own chatter. HF_TOKEN and
HF_ENDPOINT come from the environment only (huggingface_hub reads them itself); nothing here prints them.

Downloads go through `hf_hub_download(..., local_dir=dest)`: huggingface_hub picks Xet (hf_xet) for Xet-backed
files and HTTP with Range-resume on transient errors otherwise, and records per-file metadata under
`dest/.cache/huggingface/`. Files already present are verified (size, then sha256 for LFS files or the git blob id
for small git-stored files) and kept; bad ones are deleted and fetched again. The manifest goes to
`dest/.r1lab/manifest.json` (written atomically) once every file is verified.

Exit codes: 0 complete, 2 bad spec or huggingface_hub too old, 3 verification failed, 4 not enough free space,
5 download error, 6 another download holds `dest/.r1lab/lock`.
"""

from __future__ import annotations

import base64
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed

PREFIX = "@r1lab "
MANIFEST = ".r1lab/manifest.json"
# Recent huggingface_hub (seen in 1.33 and 2.4) names its partial files `<etag>.<8 hex>.incomplete`, unique per
# process and deleted on failure: one left by a killed process is never resumed. 0.3x resumes `<etag>.incomplete`.
_ORPHAN = re.compile(r"\.[0-9a-f]{8}\.incomplete$")
_LOCK = threading.Lock()


def emit(event: str, **fields) -> None:
    line = PREFIX + json.dumps({"event": event, "time": time.time(), **fields}, separators=(",", ":"))
    with _LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")  # noqa: UP017 - old pythons


def hashes(path: str, want_git: bool) -> tuple[str, str | None]:
    """sha256 of the file, and its git blob id when asked (small git-stored files have no sha256 on the Hub)."""
    sha = hashlib.sha256()
    git = None
    if want_git:
        git = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    with open(path, "rb") as f:
        while True:
            block = f.read(8 * 1024 * 1024)
            if not block:
                break
            sha.update(block)
            if git is not None:
                git.update(block)
    return sha.hexdigest(), (git.hexdigest() if git is not None else None)


def check(dest: str, spec: dict, known: dict | None) -> tuple[bool, str, str | None]:
    """(ok, reason, sha256) of one file on disk; `known` (manifest entry) lets `fast` mode skip hashing."""
    path = os.path.join(dest, spec["path"])
    if not os.path.isfile(path):
        return False, "missing", None
    st = os.stat(path)
    if st.st_size != spec["size"]:
        return False, f"size {st.st_size} != {spec['size']}", None
    if known and known.get("mtime_ns") == st.st_mtime_ns and known.get("size") == st.st_size:
        if known.get("sha256") and (spec["sha256"] is None or known["sha256"] == spec["sha256"]):
            return True, "unchanged since verified", known["sha256"]
    sha, git = hashes(path, want_git=spec["sha256"] is None)
    if spec["sha256"] is not None and sha != spec["sha256"]:
        return False, "sha256 mismatch", sha
    if spec["sha256"] is None and git != spec["blob_id"]:
        return False, "git blob id mismatch", sha
    return True, "verified", sha


def forget(dest: str, rel: str) -> None:
    """Delete a bad file and huggingface_hub's record of it, so hf_hub_download fetches it again."""
    for p in (
        os.path.join(dest, rel),
        os.path.join(dest, ".cache", "huggingface", "download", rel + ".metadata"),
    ):
        try:
            os.remove(p)
        except FileNotFoundError:
            pass


def partial_bytes(dest: str) -> int:
    total = 0
    root = os.path.join(dest, ".cache", "huggingface", "download")
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".incomplete"):
                try:
                    total += os.path.getsize(os.path.join(dirpath, n))
                except OSError:
                    pass
    return total


def clean_orphans(dest: str) -> tuple[int, int]:
    """Remove partial files no run can resume; returns (files, bytes)."""
    files = freed = 0
    root = os.path.join(dest, ".cache", "huggingface", "download")
    for dirpath, _, names in os.walk(root):
        for n in names:
            if _ORPHAN.search(n):
                p = os.path.join(dirpath, n)
                try:
                    size = os.path.getsize(p)
                    os.remove(p)
                except OSError:
                    continue
                files, freed = files + 1, freed + size
    return files, freed


def load_manifest(dest: str, commit: str) -> dict:
    try:
        with open(os.path.join(dest, MANIFEST)) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return {}
    if m.get("commit") != commit:
        return {}
    return {e["path"]: e for e in m.get("files", [])}


def write_manifest(dest: str, manifest: dict) -> str:
    path = os.path.join(dest, MANIFEST)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def verify_all(dest: str, files: list, known: dict, workers: int, phase: str) -> dict:
    """Check files in parallel; returns path -> (ok, reason, sha256). Emits a `verify` event per file."""
    out = {}
    done_bytes = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(check, dest, f, known.get(f["path"])): f for f in files}
        for fut in as_completed(futures):
            f = futures[fut]
            ok, reason, sha = fut.result()
            out[f["path"]] = (ok, reason, sha)
            done_bytes += f["size"]
            emit("verify", phase=phase, path=f["path"], ok=ok, reason=reason, bytes=done_bytes)
    return out


def main(argv: list) -> int:
    try:
        spec = json.loads(zlib.decompress(base64.b64decode(argv[1])))
        repo_id, commit, dest, files = spec["repo_id"], spec["commit"], spec["dest"], spec["files"]
    except Exception as exc:  # noqa: BLE001 - any malformed spec is one clear error
        emit("error", kind="spec", message=f"bad spec argument: {type(exc).__name__}: {exc}")
        return 2
    workers = int(spec.get("max_workers", 8))
    interval = float(spec.get("interval", 2.0))
    attempts = max(1, int(spec.get("attempts", 2)))
    mode = spec.get("verify", "full")
    # Keep huggingface_hub's own cache on the volume too (older versions stage there), never on the container disk.
    os.environ.setdefault("HF_HUB_CACHE", os.path.join(dest, ".cache", "hf-hub"))
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import huggingface_hub
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        emit("error", kind="dependency", message=f"huggingface_hub is not installed on the pod: {exc}")
        return 2
    version = huggingface_hub.__version__
    major_minor = tuple(int(x) for x in re.findall(r"\d+", version)[:2])
    if major_minor < (0, 23):
        emit(
            "error",
            kind="dependency",
            message=f"huggingface_hub {version} < 0.23: its local_dir symlinks into the cache; pip install -U huggingface_hub",
        )
        return 2
    try:
        import hf_xet  # noqa: F401

        xet = getattr(sys.modules["hf_xet"], "__version__", "installed")
    except ImportError:
        xet = None
    total = sum(f["size"] for f in files)
    emit(
        "start",
        repo_id=repo_id,
        commit=commit,
        dest=dest,
        files=len(files),
        total_bytes=total,
        huggingface_hub=version,
        hf_xet=xet,
        endpoint=os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
        token=bool(os.environ.get("HF_TOKEN")),
        python=sys.version.split()[0],
    )
    started = now_iso()
    os.makedirs(os.path.join(dest, ".r1lab"), exist_ok=True)
    lock = open(os.path.join(dest, ".r1lab", "lock"), "w")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        emit(
            "error",
            kind="busy",
            message=f"another r1lab download is running into {dest}; wait for it or stop it",
        )
        return 6
    orphans, freed = clean_orphans(dest)
    if orphans:
        emit(
            "cleanup",
            message=f"removed {orphans} partial files of killed runs (not resumable)",
            files=orphans,
            bytes=freed,
        )

    known = load_manifest(dest, commit) if mode == "fast" else {}
    state = verify_all(
        dest, [f for f in files if os.path.exists(os.path.join(dest, f["path"]))], known, workers, "existing"
    )
    todo = [f for f in files if not state.get(f["path"], (False,))[0]]
    for f in todo:
        if f["path"] in state:
            forget(dest, f["path"])  # truncated or corrupted: delete so it is fetched whole again
    need = sum(f["size"] for f in todo)
    free = shutil.disk_usage(dest).free
    emit("plan", present=len(files) - len(todo), fetch=len(todo), fetch_bytes=need, free_bytes=free)
    if need > free:
        emit("error", kind="space", message=f"need {need} bytes for {len(todo)} files, {free} free on {dest}")
        return 4

    fetched: dict = {}
    done = {"bytes": 0, "files": 0}
    stop = threading.Event()

    def monitor() -> None:
        last_t, last_b = time.monotonic(), 0
        while not stop.wait(interval):
            b = done["bytes"] + partial_bytes(dest)
            t = time.monotonic()
            rate = (b - last_b) / (t - last_t) if t > last_t else 0.0
            last_t, last_b = t, b
            emit("progress", bytes=b, total=need, files_done=done["files"], files=len(todo), rate_bps=rate)

    def fetch(f: dict) -> tuple[dict, bool, str, str | None]:
        for attempt in range(1, attempts + 1):
            kwargs = {"repo_id": f["repo_id"], "filename": f["path"], "revision": commit, "local_dir": dest}
            try:
                hf_hub_download(**kwargs)
            except Exception as exc:  # noqa: BLE001 - reported per file; the run fails after its attempts
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                emit("file", path=f["path"], ok=False, attempt=attempt, reason=reason)
                continue
            ok, reason, sha = check(dest, f, None)
            if ok:
                return f, True, reason, sha
            emit("file", path=f["path"], ok=False, attempt=attempt, reason=reason)
            forget(dest, f["path"])
        return f, False, reason, None

    failures = []
    if todo:
        mon = threading.Thread(target=monitor, daemon=True)
        mon.start()
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(fetch, {**f, "repo_id": repo_id}) for f in todo]
                for fut in as_completed(futures):
                    f, ok, reason, sha = fut.result()
                    if ok:
                        fetched[f["path"]] = sha
                        with _LOCK:
                            done["bytes"] += f["size"]
                            done["files"] += 1
                        emit("file", path=f["path"], ok=True, size=f["size"], sha256=sha)
                    else:
                        failures.append((f["path"], reason))
        finally:
            stop.set()
            mon.join()
        emit(
            "progress",
            bytes=done["bytes"],
            total=need,
            files_done=done["files"],
            files=len(todo),
            rate_bps=0.0,
        )
    if failures:
        kind = "verify" if all("mismatch" in r or r.startswith("size") for _, r in failures) else "download"
        emit("error", kind=kind, message=f"{len(failures)} files failed", failures=failures[:20])
        return 3 if kind == "verify" else 5

    entries = []
    for f in files:
        p = os.path.join(dest, f["path"])
        sha = fetched.get(f["path"]) or state[f["path"]][2]
        entries.append(
            {
                "path": f["path"],
                "size": f["size"],
                "sha256": sha,
                "blob_id": f["blob_id"],
                "lfs": f["sha256"] is not None,
                "mtime_ns": os.stat(p).st_mtime_ns,
                "downloaded": f["path"] in fetched,
            }
        )
    manifest = {
        "schema_version": 1,
        "repo_id": repo_id,
        "revision": spec.get("revision", commit),
        "commit": commit,
        "dest": dest,
        "total_bytes": total,
        "files": entries,
        "downloaded_files": len(fetched),
        "downloaded_bytes": sum(f["size"] for f in files if f["path"] in fetched),
        "verify": mode,
        "started_at": started,
        "finished_at": now_iso(),
        "huggingface_hub": version,
        "hf_xet": xet,
        "complete": True,
    }
    path = write_manifest(dest, manifest)
    emit("done", manifest_path=path, manifest=manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
