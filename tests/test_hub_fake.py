"""The fake Hub answers huggingface_hub's real calls the way the Hub does (headers, redirects, Range, errors)."""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from r1lab.hub.fake import FakeHub, build_r1_like_repo

REPO_ID = "deepseek-ai/DeepSeek-R1"
SHARD = "model-00002-of-000004.safetensors"


@dataclass
class Reply:
    status_code: int
    headers: http.client.HTTPMessage  # case-insensitive, as HTTP headers are
    content: bytes


def request(method: str, url: str, headers: dict[str, str] | None = None) -> Reply:
    """One raw HTTP request, redirects not followed (so the test sees exactly what the server answered)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""), headers=headers or {})
        r = conn.getresponse()
        return Reply(r.status, r.msg, r.read())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_r1_like_repo(tmp_path_factory.mktemp("fakehub") / "repo")


@pytest.fixture
def hub(repo_dir: Path):
    with FakeHub({REPO_ID: repo_dir}, page_size=4) as h:
        yield h


def test_repo_is_laid_out_like_r1(repo_dir: Path) -> None:
    names = {p.relative_to(repo_dir).as_posix() for p in repo_dir.rglob("*") if p.is_file()}
    assert {f"model-0000{i}-of-000004.safetensors" for i in range(1, 5)} <= names
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert {
        "configuration_deepseek.py",
        "modeling_deepseek.py",
        "LICENSE",
        "README.md",
        ".gitattributes",
    } <= names
    assert not any(n.endswith(".fp8") for n in names)


def test_model_info_with_files_metadata(hub: FakeHub, repo_dir: Path) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    info = api.model_info(REPO_ID, revision="main", files_metadata=True)
    assert len(info.sha) == 40 and info.config["quantization_config"]["quant_method"] == "fp8"
    by_name = {s.rfilename: s for s in info.siblings}
    shard = by_name[SHARD]
    data = (repo_dir / SHARD).read_bytes()
    assert shard.size == len(data) and shard.lfs.sha256 == hashlib.sha256(data).hexdigest()
    cfg = (repo_dir / "config.json").read_bytes()
    git_id = hashlib.sha1(b"blob %d\0" % len(cfg) + cfg).hexdigest()
    assert by_name["config.json"].lfs is None and by_name["config.json"].blob_id == git_id
    assert api.model_info(REPO_ID, revision=info.sha, files_metadata=True).sha == info.sha
    bare = api.model_info(REPO_ID)
    assert all(s.size is None for s in bare.siblings)  # sizes only when files_metadata asks (?blobs=true)


def test_tree_listing_is_paginated(hub: FakeHub) -> None:
    files = [
        f
        for f in HfApi(endpoint=hub.url, token=False).list_repo_tree(REPO_ID, recursive=True)
        if hasattr(f, "size") and hasattr(f, "blob_id")
    ]
    repo = hub.repos[REPO_ID]
    assert {f.path for f in files} == set(repo.entries)
    tree_calls = [e for e in hub.log if "/tree/" in e["path"]]
    assert len(tree_calls) >= 4 and any("cursor=" in e["path"] for e in tree_calls)


def test_resolve_headers_redirect_and_metadata(hub: FakeHub, repo_dir: Path) -> None:
    repo = hub.repos[REPO_ID]
    url = hf_hub_url(REPO_ID, SHARD, revision="main", endpoint=hub.url)
    head = request("HEAD", url)
    assert head.status_code == 302
    assert head.headers["X-Linked-Size"] == str((repo_dir / SHARD).stat().st_size)
    assert head.headers["X-Linked-Etag"].strip('"') == repo.entries[SHARD].sha256
    assert head.headers["X-Repo-Commit"] == repo.commit
    assert head.headers["Location"].startswith(hub.cdn_url)  # another origin: the client drops Authorization
    meta = get_hf_file_metadata(url)
    assert (meta.etag, meta.size, meta.commit_hash) == (
        repo.entries[SHARD].sha256,
        repo.entries[SHARD].size,
        repo.commit,
    )
    small = request("HEAD", hf_hub_url(REPO_ID, "config.json", endpoint=hub.url))
    assert (
        small.status_code == 200 and small.headers["ETag"].strip('"') == repo.entries["config.json"].blob_id
    )
    assert small.headers["Content-Length"] == str(repo.entries["config.json"].size)


def test_range_requests_and_signed_urls(hub: FakeHub, repo_dir: Path) -> None:
    data = (repo_dir / SHARD).read_bytes()
    location = request("HEAD", hf_hub_url(REPO_ID, SHARD, endpoint=hub.url)).headers["Location"]
    part = request("GET", location, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert request("GET", location, headers={"Range": "bytes=-5"}).content == data[-5:]
    assert request("GET", location, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
    assert request("GET", location).content == data
    assert request("GET", location.replace("sig=", "sig=0")).status_code == 403
    small = request(
        "GET", hf_hub_url(REPO_ID, "config.json", endpoint=hub.url), headers={"Range": "bytes=0-0"}
    )
    assert small.status_code == 206 and small.content == (repo_dir / "config.json").read_bytes()[:1]


def test_errors_map_to_huggingface_hub_exceptions(hub: FakeHub) -> None:
    api = HfApi(endpoint=hub.url, token=False)
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO_ID, revision="no-such-branch", files_metadata=True)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("deepseek-ai/DeepSeek-R2")
    with pytest.raises(RemoteEntryNotFoundError):
        get_hf_file_metadata(hf_hub_url(REPO_ID, "model.fp8", endpoint=hub.url))


def test_gated_repo_needs_the_token(repo_dir: Path) -> None:
    token = "hf_" + "A1b2C3d4" * 4
    with FakeHub({REPO_ID: repo_dir}, token=token) as hub:
        with pytest.raises(GatedRepoError):
            HfApi(endpoint=hub.url, token=False).model_info(REPO_ID)
        with pytest.raises(GatedRepoError):
            HfApi(endpoint=hub.url, token="hf_" + "x" * 32).model_info(REPO_ID)
        assert HfApi(endpoint=hub.url, token=token).model_info(REPO_ID).sha == hub.repos[REPO_ID].commit


def test_snapshot_download_gets_identical_files(hub: FakeHub, repo_dir: Path, tmp_path: Path) -> None:
    repo = hub.repos[REPO_ID]
    out = Path(
        snapshot_download(
            REPO_ID, revision=repo.commit, local_dir=tmp_path / "dl", endpoint=hub.url, token=False
        )
    )
    for rel, entry in repo.entries.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == entry.sha256, rel
    cdn = [e for e in hub.log if e.get("file") == SHARD and e["method"] == "GET"]
    assert cdn and all(e["path"].startswith("/repos/") for e in cdn)


def test_runs_as_a_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "r1lab.hub.fake",
            "--port",
            "0",
            "--repo-dir",
            str(tmp_path / "r"),
            "--generate",
            "--shards",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        info = HfApi(endpoint=url, token=False).model_info(REPO_ID, files_metadata=True)
        assert "model-00002-of-000002.safetensors" in {s.rfilename for s in info.siblings}
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
