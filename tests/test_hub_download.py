"""Download onto a "volume" through the pod script (run by LocalExec) from the fake Hub: verified, resumable,
re-fetching bad files, clear pattern and space errors, and the token only ever in the environment."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from hashlib import sha1, sha256
from pathlib import Path

import pytest

from r1lab.hub import (
    DownloadPlan,
    HubError,
    LocalExec,
    PatternError,
    RepoFile,
    build_command,
    cli_main,
    download_to_volume,
    plan_download,
)
from r1lab.hub.fake import FakeHub, build_r1_like_repo

REPO_ID = "deepseek-ai/DeepSeek-R1"
INCLUDE = [
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "*.py",
]
SHARDS = [f"model-0000{i}-of-000004.safetensors" for i in range(1, 5)]
# The interpreter that plays the pod: pod images carry other huggingface_hub versions (vllm/vllm-openai: 0.3x or
# 1.x); point this at a venv holding one to run the whole suite against it.
POD_PYTHON = os.environ.get("R1LAB_TEST_POD_PYTHON") or sys.executable


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_r1_like_repo(tmp_path_factory.mktemp("hubdl") / "repo")


@pytest.fixture
def hub(repo_dir: Path):
    with FakeHub({REPO_ID: repo_dir}) as h:
        yield h


class Recorder:
    """PodExec that runs locally and keeps the command, env and every line (to check what a pod would see)."""

    def __init__(self, stop_when: Callable[[str], bool] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.lines: list[str] = []
        self.stop_when = stop_when

    def __call__(self, command: str, env: Mapping[str, str], on_line: Callable[[str], None]) -> int:
        self.calls.append((command, dict(env)))

        def tee(line: str) -> None:
            self.lines.append(line)
            on_line(line)
            if self.stop_when and self.stop_when(line):
                raise KeyboardInterrupt("simulated dropped SSH session")

        return LocalExec()(command, env, tee)


def _download(hub: FakeHub, dest: Path, **kw) -> object:
    kw.setdefault("max_workers", 2)
    return download_to_volume(
        kw.pop("pod_exec", LocalExec()),
        REPO_ID,
        kw.pop("revision", "main"),
        str(dest),
        kw.pop("patterns", INCLUDE),
        endpoint=hub.url,
        install_missing=False,
        python=POD_PYTHON,
        **kw,
    )


def _served(hub: FakeHub, since: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in hub.log[since:]:
        if e.get("file") and e["method"] == "GET":
            out[e["file"]] = out.get(e["file"], 0) + e["bytes"]
    return out


def test_full_download_verified_then_second_run_downloads_nothing(
    hub: FakeHub, repo_dir: Path, tmp_path: Path
) -> None:
    vol = tmp_path / "vol" / "DeepSeek-R1"
    m = _download(hub, vol, volume_size_gb=1000, log_path=tmp_path / "events.jsonl")
    repo = hub.repos[REPO_ID]
    want = {p for p in repo.entries if p.endswith((".safetensors", ".py", ".json")) and p != ".gitattributes"}
    assert {f["path"] for f in m.files} == want and m.complete and m.commit == repo.commit
    for f in m.files:
        assert (vol / f["path"]).read_bytes() == (repo_dir / f["path"]).read_bytes()
        if repo.entries[f["path"]].lfs:
            assert f["sha256"] == repo.entries[f["path"]].sha256
    on_volume = json.loads((vol / ".r1lab" / "manifest.json").read_text())
    assert on_volume["commit"] == repo.commit and on_volume["downloaded_files"] == len(want)
    assert m.downloaded_bytes == m.total_bytes == sum(repo.entries[p].size for p in want)
    events = [json.loads(line)["event"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[0] == "start" and "progress" in events and events[-1] == "done"

    mark = len(hub.log)
    again = _download(hub, vol)
    assert again.downloaded_files == 0 and "nothing downloaded" in again.summary()
    assert _served(hub, mark) == {}  # not one byte of file content fetched again


def test_corrupted_and_truncated_files_are_fetched_again(hub: FakeHub, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    _download(hub, vol)
    corrupt, truncated = vol / SHARDS[2], vol / SHARDS[0]
    raw = bytearray(corrupt.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one bit pattern off: only the sha256 can tell
    corrupt.write_bytes(bytes(raw))
    with open(truncated, "r+b") as f:
        f.truncate(1000)
    (vol / "config.json").write_text('{"tampered": true}')
    mark = len(hub.log)
    m = _download(hub, vol)
    assert m.downloaded_files == 3
    assert set(_served(hub, mark)) == {SHARDS[2], SHARDS[0], "config.json"}
    repo = hub.repos[REPO_ID]
    for p in (SHARDS[2], SHARDS[0]):
        assert next(f for f in m.files if f["path"] == p)["sha256"] == repo.entries[p].sha256


def test_fast_verify_trusts_unchanged_files_but_catches_rewrites(hub: FakeHub, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    _download(hub, vol)
    raw = bytearray((vol / SHARDS[1]).read_bytes())
    raw[100] ^= 0x01
    (vol / SHARDS[1]).write_bytes(bytes(raw))  # rewritten: mtime moves, so fast mode re-hashes it
    log = tmp_path / "fast.jsonl"
    mark = len(hub.log)
    m = _download(hub, vol, verify="fast", log_path=log)
    assert m.downloaded_files == 1 and set(_served(hub, mark)) == {SHARDS[1]}
    reasons = {
        e["path"]: e["reason"]
        for e in map(json.loads, log.read_text().splitlines())
        if e["event"] == "verify"
    }
    assert reasons[SHARDS[0]] == "unchanged since verified" and reasons[SHARDS[1]] == "sha256 mismatch"


def test_interrupted_download_resumes_without_refetching_finished_files(
    repo_dir: Path, tmp_path: Path
) -> None:
    vol = tmp_path / "vol"
    # ~16 MB at 4 MB/s with one worker: the session is cut once shard 1 is in and shard 2 is part-way.
    with FakeHub({REPO_ID: repo_dir}, bytes_per_second=4e6) as hub:
        rec = Recorder(stop_when=lambda line: hub.sent.get(SHARDS[1], 0) > 300_000)
        with pytest.raises(KeyboardInterrupt):
            _download(hub, vol, pod_exec=rec, max_workers=1, progress_interval=0.1)
        done_before = {p for p in _served(hub, 0) if (vol / p).exists()}
        assert SHARDS[0] in done_before and SHARDS[1] not in done_before
        mark = len(hub.log)
        m = _download(hub, vol, max_workers=2)
    again = _served(hub, mark)
    assert not (set(again) & done_before), "files finished before the cut were fetched again"
    assert SHARDS[1] in again and m.downloaded_files == len(m.files) - len(done_before)


def test_partial_file_of_a_killed_run_is_resumed_or_removed(tmp_path: Path) -> None:
    """huggingface_hub 0.3x keeps `<etag>.incomplete` and resumes it with Range in the next process; 1.33 and 2.4
    name partials per process (`<etag>.<8 hex>.incomplete`) and never reuse them, so the pod script removes them."""
    one = build_r1_like_repo(tmp_path / "repo1", shards=1)
    shard = "model-00001-of-000001.safetensors"
    partials = tmp_path / "vol" / ".cache" / "huggingface" / "download"
    chunk = 10 * 1024 * 1024  # huggingface_hub writes in 10 MiB chunks: cut after the first one is on disk
    with FakeHub({REPO_ID: one}) as hub:
        size = hub.repos[REPO_ID].entries[shard].size
        # The link stalls 300 kB into the second chunk; the session drops once the pod reports the first chunk
        # on disk (its progress counts the partial file), so the cut falls between two writes, never inside one.
        release = hub.add_stall(shard, after_bytes=chunk + 300_000)

        def first_chunk_on_disk(line: str) -> bool:
            prefix = "@r1lab "  # the pod script's event lines
            event = json.loads(line[len(prefix) :]) if line.startswith(prefix) else {}
            return event.get("event") == "progress" and event.get("bytes", 0) >= chunk

        rec = Recorder(stop_when=first_chunk_on_disk)
        try:
            with pytest.raises(KeyboardInterrupt):
                _download(
                    hub, tmp_path / "vol", pod_exec=rec, patterns=["*.safetensors"], progress_interval=0.1
                )
        finally:
            release.set()
        (partial,) = partials.glob("*.incomplete")
        kept = partial.stat().st_size
        assert kept == chunk
        mark = len(hub.log)
        log = tmp_path / "resume.jsonl"
        m = _download(hub, tmp_path / "vol", patterns=["*.safetensors"], log_path=log)
    gets = [e for e in hub.log[mark:] if e.get("file") == shard and e["method"] == "GET"]
    events = [json.loads(x) for x in log.read_text().splitlines()]
    cleanups = [e for e in events if e["event"] == "cleanup"]
    if re.search(
        r"\.[0-9a-f]{8}\.incomplete$", partial.name
    ):  # per-process partial (huggingface_hub 1.33, 2.4)
        assert cleanups and cleanups[0]["files"] == 1 and cleanups[0]["bytes"] == kept
        assert [(e["range"], e["bytes"]) for e in gets] == [(None, size)]
    else:  # huggingface_hub 0.3x: resumed where the killed process stopped
        assert not cleanups
        assert [(e["range"], e["bytes"]) for e in gets] == [(f"bytes={kept}-", size - kept)]
    assert m.files[0]["sha256"] == hub.repos[REPO_ID].entries[shard].sha256
    assert not list(partials.glob("*.incomplete"))


def test_dropped_connection_is_resumed_with_range_by_huggingface_hub(tmp_path: Path) -> None:
    # huggingface_hub writes what it receives in 10 MiB chunks and resumes from the last whole chunk with a
    # Range request: one ~12 MB shard, cut after 11 MB, resumes at 10 MiB instead of starting over.
    one = build_r1_like_repo(tmp_path / "repo1", shards=1)
    shard = "model-00001-of-000001.safetensors"
    chunk = 10 * 1024 * 1024
    with FakeHub({REPO_ID: one}) as hub:
        size = hub.repos[REPO_ID].entries[shard].size
        assert size > chunk + 1_000_000
        hub.add_fault(shard, after_bytes=chunk + 500_000)
        m = _download(hub, tmp_path / "vol", patterns=["*.safetensors"])
    gets = [e for e in hub.log if e.get("file") == shard and e["method"] == "GET"]
    assert [e["dropped"] for e in gets] == [True, False] and gets[0]["bytes"] == chunk + 500_000
    assert gets[1]["status"] == 206 and gets[1]["range"] == f"bytes={chunk}-"
    assert gets[1]["bytes"] == size - chunk  # resumed from the last written chunk, not restarted
    assert m.files[0]["sha256"] == hub.repos[REPO_ID].entries[shard].sha256


def test_pattern_matching_nothing_fails_before_any_pod_command(hub: FakeHub, tmp_path: Path) -> None:
    rec = Recorder()
    with pytest.raises(PatternError, match=r"'\*\.fp8' matches no file.*model-\*\.safetensors"):
        _download(hub, tmp_path / "vol", pod_exec=rec, patterns=["*.fp8", "config.json"])
    with pytest.raises(PatternError, match="all removed by exclude"):
        plan_download(REPO_ID, "main", ["*.safetensors"], ["model-*"], endpoint=hub.url)
    with pytest.raises(HubError, match="revision 'v9' does not exist"):
        plan_download(REPO_ID, "v9", ["*.safetensors"], endpoint=hub.url)
    assert rec.calls == []
    assert cli_main(["--endpoint", hub.url, "--include", "*.fp8"]) == 1


def test_volume_sizing_for_r1_and_space_errors(tmp_path: Path) -> None:
    # DeepSeek-R1's real shape: 163 shards of ~4.2 GB, ~688.6 GB in all (facts.md).
    files = tuple(
        RepoFile(
            f"model-{i:05d}-of-000163.safetensors",
            4_224_512_000,
            sha1(b"%d" % i).hexdigest(),
            sha256(b"%d" % i).hexdigest(),
        )
        for i in range(1, 164)
    )
    plan = DownloadPlan(REPO_ID, "main", "c" * 40, files, ("*.safetensors",))
    assert plan.total_bytes == 688_595_456_000
    report = plan.space_report(1000)
    assert "a 1000 GB volume is enough" in report and "at least 710 GB" in report
    assert "297.6 GB to spare" in report  # 1000 - (688.6 + 2 % headroom)
    with pytest.raises(HubError, match="volume.size_gb = 600 is too small.*at least 710"):
        plan.check_volume(600)
    # The whole R1 file list travels inside one command line: well under Linux's 128 KiB per-argument limit.
    assert max(len(arg) for arg in build_command(plan, "/workspace/models/DeepSeek-R1").split()) < 32 * 1024
    # On the pod: more bytes to fetch than the volume has free -> refused before any download.
    huge = DownloadPlan(
        REPO_ID,
        "main",
        "c" * 40,
        (RepoFile("model-00001-of-000001.safetensors", 10**16, "0" * 40, "0" * 64),),
        ("*",),
    )
    rec = Recorder()
    with pytest.raises(HubError, match="space: need 10000000000000000 bytes"):
        download_to_volume(
            rec,
            REPO_ID,
            "main",
            str(tmp_path / "v"),
            ["*"],
            plan=huge,
            install_missing=False,
            python=POD_PYTHON,
        )
    assert not any('"event":"file"' in line for line in rec.lines)


def test_pod_without_huggingface_hub_is_a_clear_error(hub: FakeHub, tmp_path: Path) -> None:
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    with pytest.raises(HubError, match="dependency: huggingface_hub is not installed on the pod"):
        download_to_volume(
            LocalExec(),
            REPO_ID,
            "main",
            str(tmp_path / "v"),
            ["config.json"],
            endpoint=hub.url,
            python=str(venv / "bin" / "python"),
            install_missing=False,
            show=lambda _m: None,
        )


def test_token_only_in_the_environment_never_in_logs(
    repo_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    token = "hf_" + "Zq9XwV3tK8" * 3 + "pL"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with FakeHub({REPO_ID: repo_dir}, token=token) as hub:
        with pytest.raises(HubError, match="gated"):
            plan_download(REPO_ID, "main", INCLUDE, endpoint=hub.url)
        monkeypatch.setenv("HF_TOKEN", token)
        mark = len(hub.log)
        rec = Recorder()
        log = tmp_path / "events.jsonl"
        m = _download(hub, tmp_path / "vol", pod_exec=rec, log_path=log)
        assert m.complete
        api_calls = [e for e in hub.log[mark:] if "/resolve/" in e["path"] or e["path"].startswith("/api/")]
        assert api_calls and all(e["auth"] for e in api_calls)  # the pod used the token it got through env
        assert not any(e["auth"] for e in hub.log if e["path"].startswith("/repos/"))  # never sent to the CDN
    command, env = rec.calls[0]
    assert env["HF_TOKEN"] == token and token not in command
    out = capsys.readouterr()
    texts = [
        log.read_text(),
        out.out,
        out.err,
        *rec.lines,
        (tmp_path / "vol" / ".r1lab" / "manifest.json").read_text(),
    ]
    assert not any(token in t for t in texts)
    assert '"token": true' in log.read_text() or '"token":true' in log.read_text()


def test_cli_plans_and_downloads(hub: FakeHub, tmp_path: Path, capsys) -> None:
    assert cli_main(["--endpoint", hub.url, "--volume-size-gb", "1000", "--list"]) == 0
    out = capsys.readouterr().out
    assert "model-00004-of-000004.safetensors" in out and "a 1000 GB volume is enough" in out
    dest = tmp_path / "cli"
    assert (
        cli_main(
            [
                "--endpoint",
                hub.url,
                "--dest",
                str(dest),
                "--include",
                "config.json",
                "--include",
                "*.safetensors",
            ]
        )
        == 0
    )
    assert json.loads((dest / ".r1lab" / "manifest.json").read_text())["downloaded_files"] == 5
