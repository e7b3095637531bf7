"""A local fake of the Hugging Face Hub, answering what huggingface_hub really calls, for tests and the twin.

Endpoints (as huggingface_hub 2.4 and the 0.2x/1.x versions on pod images call them):
- `GET /api/models/{repo}[/revision/{rev}][?blobs=true]`: model info; with `blobs`, siblings carry size, blobId, lfs
  (sha256, size, pointerSize), as `HfApi.model_info(files_metadata=True)` asks.
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true`: the tree listing (`list_repo_tree`, which
  `snapshot_download` uses), paginated with a `Link: <...>; rel="next"` header.
- `HEAD|GET /{repo}/resolve/{rev}/{path}`: small files answer 200 with `ETag` (git blob id) and `X-Repo-Commit`;
  LFS files (`*.safetensors` etc., as `.gitattributes` says) answer 302 to a signed URL on a second host (the
  "CDN", 127.0.0.2 by default: huggingface_hub does not follow it on HEAD and drops Authorization), with `X-Linked-Etag`
  (sha256), `X-Linked-Size` and `X-Repo-Commit`. Both honour `Range` (206 + `Content-Range`, 416).
- Errors the real way: `X-Error-Code` RepoNotFound / RevisionNotFound / EntryNotFound / GatedRepo.
A repo can require a token (read from an environment variable, never from argv). Test hooks under `/_fake/`:
`POST /_fake/faults` (drop a connection after N bytes of a file, `times` times), `GET /_fake/stats` (requests
served: method, path, range, status, bytes, whether Authorization was sent; never its value).

Run it: `python -m r1lab.hub.fake --port 0 --repo-dir DIR [--generate] [--token-env VAR]` prints its URL.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import fnmatch
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

DEFAULT_REPO_ID = "deepseek-ai/DeepSeek-R1"
# .gitattributes of deepseek-ai/DeepSeek-R1 (the Hub's default LFS list, abridged to what the repo holds).
GITATTRIBUTES = """*.bin filter=lfs diff=lfs merge=lfs -text
*.jpg filter=lfs diff=lfs merge=lfs -text
*.png filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
tokenizer.json filter=lfs diff=lfs merge=lfs -text
"""
CHUNK = 64 * 1024


# --- the repo -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepoEntry:
    path: str
    size: int
    sha256: str
    blob_id: str  # git oid: of the content, or of the LFS pointer for LFS files
    lfs: bool
    pointer_size: int = 0


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _lfs_patterns(root: Path) -> list[str]:
    ga = root / ".gitattributes"
    text = ga.read_text() if ga.exists() else GITATTRIBUTES
    return [line.split()[0] for line in text.splitlines() if "filter=lfs" in line]


@dataclass
class FakeRepo:
    """A directory served as one model repo at one commit (`main` resolves to it)."""

    repo_id: str
    root: Path
    gated: bool = False
    entries: dict[str, RepoEntry] = field(init=False)
    commit: str = field(init=False)
    last_modified: str = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"fake hub: repo dir {self.root} does not exist (generate it with --generate)"
            )
        lfs = _lfs_patterns(self.root)
        self.entries = {}
        for p in sorted(self.root.rglob("*")):
            rel = p.relative_to(self.root).as_posix()
            if not p.is_file() or rel.startswith(".git/") or rel.startswith(".cache/"):
                continue
            size = p.stat().st_size
            sha, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    sha.update(block)
                    git.update(block)
            is_lfs = any(fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(p.name, pat) for pat in lfs)
            pointer = _lfs_pointer(sha.hexdigest(), size)
            self.entries[rel] = RepoEntry(
                path=rel,
                size=size,
                sha256=sha.hexdigest(),
                blob_id=_git_blob_id(pointer) if is_lfs else git.hexdigest(),
                lfs=is_lfs,
                pointer_size=len(pointer) if is_lfs else 0,
            )
        listing = "".join(f"{e.path}\0{e.blob_id}\n" for e in self.entries.values())
        self.commit = hashlib.sha1(f"{self.repo_id}\n{listing}".encode()).hexdigest()
        self.last_modified = (
            _dt.datetime(2025, 2, 21, 3, 47, 23, tzinfo=_dt.UTC).isoformat().replace("+00:00", ".000Z")
        )

    def resolve(self, revision: str) -> str | None:
        return self.commit if revision in ("main", self.commit) else None

    def model_info(self, blobs: bool) -> dict[str, Any]:
        siblings = []
        for e in self.entries.values():
            s: dict[str, Any] = {"rfilename": e.path}
            if blobs:
                s.update(size=e.size, blobId=e.blob_id)
                if e.lfs:
                    s["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            siblings.append(s)
        config = {}
        if "config.json" in self.entries:
            cfg = json.loads((self.root / "config.json").read_text())
            config = {k: cfg[k] for k in ("architectures", "model_type", "quantization_config") if k in cfg}
        author = self.repo_id.split("/")[0]
        return {
            "_id": hashlib.md5(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": author,
            "sha": self.commit,
            "lastModified": self.last_modified,
            "createdAt": self.last_modified,
            "private": False,
            "disabled": False,
            "gated": "manual" if self.gated else False,
            "downloads": 0,
            "likes": 0,
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "tags": ["transformers", "safetensors", "deepseek_v3", "text-generation", "fp8"],
            "config": config,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(e.size for e in self.entries.values()),
        }

    def tree(self, path: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for e in self.entries.values():
            if not e.path.startswith(prefix):
                continue
            rest = e.path[len(prefix) :]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                if not recursive and i > 1:
                    break
                dirs.add(prefix + "/".join(parts[:i]))
            if not recursive and len(parts) > 1:
                continue
            item: dict[str, Any] = {"type": "file", "oid": e.blob_id, "size": e.size, "path": e.path}
            if e.lfs:
                item["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": e.pointer_size}
            out.append(item)
        for d in sorted(dirs):
            out.append(
                {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
            )
        return sorted(out, key=lambda x: x["path"])


def build_r1_like_repo(root: Path, *, seed: int = 0, shards: int = 4) -> Path:
    """A small repo laid out like deepseek-ai/DeepSeek-R1: FP8 config (R1's quantization_config), R1-named
    safetensors shards + index, tokenizer, generation config, code files, README, LICENSE, figure, .gitattributes."""
    from r1lab.tinymodel import write_tiny_model

    root = Path(root)
    write_tiny_model(root, weights=True, quantized=True, seed=seed, shards=shards)
    (root / ".gitattributes").write_text(GITATTRIBUTES)
    (root / "LICENSE").write_text(
        "MIT License\n\nCopyright (c) 2023 DeepSeek\n\n(test fixture of r1lab: a generated tiny model, "
        "not DeepSeek's weights)\n"
    )
    (root / "README.md").write_text(
        "---\nlicense: mit\nlibrary_name: transformers\n---\n# DeepSeek-R1 (tiny fake)\n\n"
        "Generated by r1lab.hub.fake for tests: DeepSeek-R1's layout and config fields, random weights.\n"
    )
    (root / "configuration_deepseek.py").write_text(
        '"""DeepSeek-V3 configuration (fixture: the real repo ships this for trust_remote_code)."""\n\n'
        "from transformers.configuration_utils import PretrainedConfig\n\n\n"
        "class DeepseekV3Config(PretrainedConfig):\n"
        '    model_type = "deepseek_v3"\n'
    )
    (root / "modeling_deepseek.py").write_text(
        '"""DeepSeek-V3 modeling (fixture: vLLM and transformers use their built-in implementations)."""\n'
    )
    figures = root / "figures"
    figures.mkdir(exist_ok=True)
    rng = hashlib.sha256(f"figure{seed}".encode()).digest()
    (figures / "benchmark.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng * 512 + b"\xff\xd9")
    return root


# --- the server ---------------------------------------------------------------------------------------------


@dataclass
class Fault:
    """The next `times` GETs of repo file `path` are cut (the connection closed) after `after_bytes` body bytes,
    as a dropped link does (`add_fault`, `POST /_fake/faults`)."""

    path: str
    after_bytes: int
    times: int = 1


@dataclass
class Stall:
    """The next GET of repo file `path` stops sending after `after_bytes` body bytes, the connection held open, until
    `release` is set (at most 120 s): a stalled link (`add_stall`)."""

    path: str
    after_bytes: int
    release: threading.Event


class FakeHub:
    """The fake Hub: an API server and a CDN server on another address (see cdn_host), in background threads.

    `with FakeHub({"deepseek-ai/DeepSeek-R1": dir}) as hub: ... hub.url ...`. `token`: when set, every API and
    resolve call needs `Authorization: Bearer <token>` (401 GatedRepo otherwise); the CDN checks URL signatures.
    """

    def __init__(
        self,
        repos: dict[str, Path],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cdn_host: str | None = None,
        token: str | None = None,
        page_size: int = 1000,
        bytes_per_second: float | None = None,
    ) -> None:
        self.repos = {rid: FakeRepo(rid, Path(d), gated=token is not None) for rid, d in repos.items()}
        self.host, self.port = host, port
        # The CDN must be another *host*, not just another port: huggingface_hub 1.x follows HEAD redirects to
        # the same hostname (and then misses X-Repo-Commit), 2.x compares origins. 127.0.0.2 is loopback too.
        self.cdn_host = cdn_host or ("127.0.0.2" if host == "127.0.0.1" else host)
        self.token = token
        self.page_size = page_size
        self.bytes_per_second = bytes_per_second
        self.faults: list[Fault] = []
        self.stalls: list[Stall] = []
        self.log: list[dict[str, Any]] = []
        self.sent: dict[str, int] = {}  # file body bytes written so far, per repo path (live, unlike the log)
        self._lock = threading.Lock()
        self._secret = secrets.token_bytes(16)
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    # lifecycle
    def start(self) -> FakeHub:
        handler = _make_handler(self)
        for role, host, port in (("api", self.host, self.port), ("cdn", self.cdn_host, 0)):
            srv = _Server((host, port), handler)
            srv.role = role
            self._servers.append(srv)
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers.clear()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._servers[0].server_address[:2]
        return f"http://{_url_host(str(host))}:{port}"

    @property
    def cdn_url(self) -> str:
        host, port = self._servers[1].server_address[:2]
        return f"http://{_url_host(str(host))}:{port}"

    # test hooks
    def add_fault(self, path: str, after_bytes: int, times: int = 1) -> None:
        with self._lock:
            self.faults.append(Fault(path, after_bytes, times))

    def add_stall(self, path: str, after_bytes: int) -> threading.Event:
        """The next GET of `path` stops sending after `after_bytes` body bytes (the connection stays open, as a
        stalled link does) until the returned event is set."""
        stall = Stall(path, after_bytes, threading.Event())
        with self._lock:
            self.stalls.append(stall)
        return stall.release

    def take_stall(self, path: str) -> Stall | None:
        with self._lock:
            for s in self.stalls:
                if s.path == path:
                    self.stalls.remove(s)
                    return s
        return None

    def take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.path == path and f.times > 0:
                    f.times -= 1
                    return f
        return None

    def record(self, **entry: Any) -> dict[str, Any]:
        with self._lock:
            self.log.append(entry)
        return entry

    def bytes_served(self, path: str | None = None) -> int:
        """Body bytes sent for file content (resolve + CDN GETs), for one repo path or all."""
        with self._lock:
            return sum(e["bytes"] for e in self.log if e.get("file") and (path is None or e["file"] == path))

    def sign(self, repo_id: str, commit: str, path: str, expires: int) -> str:
        msg = f"{repo_id}\n{commit}\n{path}\n{expires}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    role: str  # "api" or "cdn", set by FakeHub.start

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, handler)


class _ClientGone(Exception):
    pass


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server: _Server
        protocol_version = "HTTP/1.1"
        server_version = "FakeHub/1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            pass  # requests are recorded in hub.log (never with header values)

        # plumbing
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            # Logged before answering, so a client that has its answer always finds the request in the log.
            hub.record(method=self.command, path=self.path, status=status, bytes=0, auth=self._has_auth())
            self.send_response(status)
            hdrs = {"Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(body))}
            hdrs.update(headers or {})
            for k, v in hdrs.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), headers)

        def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            if commit:
                headers["X-Repo-Commit"] = commit
            self._json(status, {"error": message}, headers)

        def _has_auth(self) -> bool:
            return bool(self.headers.get("Authorization"))

        def _authorized(self, repo: FakeRepo) -> bool:
            if hub.token is None:
                return True
            given = self.headers.get("Authorization", "")
            if hmac.compare_digest(given.encode(), f"Bearer {hub.token}".encode()):
                return True
            self._error(
                401,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated "
                "to access it. Please log in.",
            )
            return False

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                # The Hub answers 401 to anonymous callers (not revealing private repos), 404 to authenticated ones.
                self._error(404 if self._has_auth() else 401, "RepoNotFound", "Repository not found")
            return repo

        # routing
        def do_HEAD(self) -> None:  # noqa: N802 - stdlib name
            self._route()

        def do_GET(self) -> None:  # noqa: N802
            self._route()

        def do_POST(self) -> None:  # noqa: N802
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.server.role == "api" and parts.path == "/_fake/faults":
                spec = json.loads(body or b"{}")
                hub.add_fault(spec["path"], int(spec["after_bytes"]), int(spec.get("times", 1)))
                self._json(200, {"ok": True})
            else:
                self._error(404, None, "Not Found")

        def _route(self) -> None:
            try:
                parts = urlsplit(self.path)
                path, query = unquote(parts.path), parse_qs(parts.query)
                if self.server.role == "cdn":
                    return self._cdn(path, query)
                if path == "/_fake/stats":
                    return self._json(200, {"requests": list(hub.log)})
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?/?", path)
                if m:
                    return self._model_info(m.group(1), m.group(2) or "main", query)
                m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
                if m:
                    return self._tree(m.group(1), m.group(2), m.group(3) or "", query)
                m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if m:
                    return self._resolve(m.group(1), m.group(2), m.group(3))
                self._error(404, None, "Not Found")
            except _ClientGone:
                self.close_connection = True

        # endpoints
        def _model_info(self, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
            repo = self._repo(repo_id)
            if repo is None or not self._authorized(repo):
                return
            if repo.resolve(revision) is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            self._json(200, repo.model_info(blobs))

        def _tree(self, repo_id: str, revision: str, sub: str, query: dict[str, list[str]]) -> None:
            repo = self._repo(repo_id)
            if repo is None or not self._authorized(repo):
                return
            if repo.resolve(revision) is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            items = repo.tree(sub, recursive)
            if sub.strip("/") and not items:
                return self._error(404, "EntryNotFound", f"{sub} does not exist on {revision}")
            start = int(query.get("cursor", ["0"])[0] or 0)
            page = items[start : start + hub.page_size]
            headers = {}
            if start + hub.page_size < len(items):
                q = {k: v[0] for k, v in query.items()}
                q["cursor"] = str(start + hub.page_size)
                headers["Link"] = f'<{hub.url}{urlsplit(self.path).path}?{urlencode(q)}>; rel="next"'
            self._json(200, page, headers)

        def _resolve(self, repo_id: str, revision: str, filename: str) -> None:
            repo = self._repo(repo_id)
            if repo is None or not self._authorized(repo):
                return
            commit = repo.resolve(revision)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            entry = repo.entries.get(filename)
            if entry is None:
                return self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}", commit)
            common = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Vary": "Origin, Accept"}
            if entry.lfs:
                expires = int(time.time()) + 3600
                sig = hub.sign(repo_id, commit, filename, expires)
                q = urlencode(
                    {"repo": repo_id, "commit": commit, "path": filename, "Expires": expires, "sig": sig}
                )
                location = f"{hub.cdn_url}/repos/{quote(entry.sha256)}?{q}"
                headers = {
                    **common,
                    "Location": location,
                    "ETag": f'"{entry.blob_id}"',
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(entry.size),
                    "Content-Type": "text/plain; charset=utf-8",
                }
                return self._send(302, f"Found. Redirecting to {location}".encode(), headers)
            self._serve_file(repo, entry, {**common, "ETag": f'"{entry.blob_id}"'})

        def _cdn(self, path: str, query: dict[str, list[str]]) -> None:
            q = {k: v[0] for k, v in query.items()}
            repo = hub.repos.get(q.get("repo", ""))
            try:
                expires = int(q.get("Expires", "0"))
            except ValueError:
                expires = 0
            valid = (
                repo is not None
                and expires >= time.time()
                and hmac.compare_digest(
                    hub.sign(q["repo"], q.get("commit", ""), q.get("path", ""), expires), q.get("sig", "")
                )
            )
            entry = repo.entries.get(q.get("path", "")) if repo is not None else None
            if not valid or entry is None or path != f"/repos/{entry.sha256}":
                return self._send(
                    403, b"<Error><Code>AccessDenied</Code></Error>", {"Content-Type": "application/xml"}
                )
            assert repo is not None
            self._serve_file(repo, entry, {"ETag": f'"{entry.sha256}"', "Accept-Ranges": "bytes"})

        def _serve_file(self, repo: FakeRepo, entry: RepoEntry, headers: dict[str, str]) -> None:
            size, start, end = entry.size, 0, entry.size - 1
            rng = self.headers.get("Range")
            status = 200
            if rng:
                m = _RANGE.match(rng.strip())
                if not m or (m.group(1) == "" and m.group(2) == ""):
                    return self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
                if m.group(1) == "":
                    start = max(size - int(m.group(2)), 0)
                else:
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                if start >= size or start > end:
                    return self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
                status = 206
                headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
            length = end - start + 1
            fault = hub.take_fault(entry.path) if self.command == "GET" else None
            log = hub.record(
                method=self.command,
                path=urlsplit(self.path).path,
                file=entry.path,
                range=rng,
                status=status,
                bytes=0,  # grows as the body goes out
                auth=self._has_auth(),
                dropped=fault is not None,
            )
            self.send_response(status)
            for k, v in {
                "Content-Type": "application/octet-stream",
                "Content-Length": str(length),
                **headers,
            }.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "GET":
                self._stream(repo.root / entry.path, log, start, length, fault)
            if fault is not None:
                self.close_connection = True

        def _stream(
            self, path: Path, log: dict[str, Any], start: int, length: int, fault: Fault | None
        ) -> int:
            sent, t0 = 0, time.monotonic()
            stall = hub.take_stall(log["file"])
            limit = length if fault is None else min(length, fault.after_bytes)
            with open(path, "rb") as f:
                f.seek(start)
                while sent < limit:
                    chunk = f.read(min(CHUNK, limit - sent))
                    if not chunk:
                        break
                    try:
                        self.wfile.write(chunk)
                    except (BrokenPipeError, ConnectionResetError) as exc:
                        raise _ClientGone from exc
                    sent += len(chunk)
                    with hub._lock:
                        log["bytes"] = sent
                        hub.sent[log["file"]] = hub.sent.get(log["file"], 0) + len(chunk)
                    if stall is not None and sent >= stall.after_bytes:
                        stall.release.wait(timeout=120)
                        stall = None
                    if hub.bytes_per_second:
                        ahead = sent / hub.bytes_per_second - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)
            if fault is not None:  # cut the connection mid-body, as a dropped link does
                try:
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            return sent

    return Handler


# --- command line -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m r1lab.hub.fake", description=__doc__.splitlines()[0])
    ap.add_argument("--repo-dir", type=Path, required=True, help="directory served as the repo")
    ap.add_argument("--repo-id", default=DEFAULT_REPO_ID)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument(
        "--cdn-host", help="address of the fake CDN (default 127.0.0.2 beside 127.0.0.1, else --host)"
    )
    ap.add_argument(
        "--generate", action="store_true", help="write the R1-like tiny repo into --repo-dir if empty"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--token-env", help="require the token held by this environment variable (e.g. HF_TOKEN)")
    ap.add_argument("--bytes-per-second", type=float, help="throttle file bodies (simulates a slow link)")
    args = ap.parse_args(argv)
    if args.generate and not (args.repo_dir.exists() and any(args.repo_dir.iterdir())):
        build_r1_like_repo(args.repo_dir, seed=args.seed, shards=args.shards)
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env, "").strip()
        if not token:
            print(f"fake hub: --token-env {args.token_env}: that variable is unset or empty", file=sys.stderr)
            return 2
    hub = FakeHub(
        {args.repo_id: args.repo_dir},
        host=args.host,
        port=args.port,
        cdn_host=args.cdn_host,
        token=token,
        bytes_per_second=args.bytes_per_second,
    ).start()
    print(hub.url, flush=True)
    repo = hub.repos[args.repo_id]
    print(
        f"fake hub: serving {args.repo_id} ({len(repo.entries)} files, commit {repo.commit}) from {args.repo_dir}; "
        f"CDN at {hub.cdn_url}",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
