"""Download to a "pod" over real SSH (r1lab.cloud.pods.PodSSH to an emulated pod backed by a real sshd):
the pod script runs remotely, progress streams back, HF_TOKEN crosses only through the channel's stdin."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from r1lab.hub import download_to_volume, ssh_exec
from r1lab.hub.fake import FakeHub, build_r1_like_repo

pytestmark = pytest.mark.integration

REPO_ID = "deepseek-ai/DeepSeek-R1"
RUNPOD_KEY = "rpa_HUBSSHTEST0123456789abcdefghij"
HF_TOKEN = "hf_" + "Hs7TokenQ2" * 3 + "zz"


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory):
    from r1lab.cloud.emulator import Emulator, LocalSshdBackend, Timings
    from r1lab.cloud.ledger import teardown
    from r1lab.cloud.provision import PodPlan, Provisioner
    from r1lab.cloud.runpod import RunPodClient

    mp = pytest.MonkeyPatch()
    mp.setenv("RUNPOD_API_KEY", RUNPOD_KEY)
    run_dir = tmp_path_factory.mktemp("hubssh") / "run"
    run_dir.mkdir()
    backend = LocalSshdBackend(tmp_path_factory.mktemp("pods"))
    emu = Emulator(api_key=RUNPOD_KEY, backend=backend, timings=Timings(0.1, 0.1, 0.3)).start()
    pods = []
    try:
        prov = Provisioner(run_dir, "hubssh", client=RunPodClient(base_url=emu.url), poll_s=0.1)
        prov.ensure_key()
        pods = prov.pods(
            [PodPlan("utility", "runpod/base:0.6.2-cpu", "NVIDIA H100 NVL", 0, ports=["22/tcp"])]
        )
        yield {"pod": pods[0], "run_dir": run_dir}
    finally:
        for p in pods:
            p.ssh.close()
        report = teardown(run_dir)  # the utility pod goes away through the run's ledger
        assert report.ok and backend.running() == []
        emu.stop()
        mp.undo()


def test_download_over_ssh_with_token_only_in_the_channel(pod, tmp_path: Path, monkeypatch) -> None:
    repo_dir = build_r1_like_repo(tmp_path / "repo", shards=2)
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    dest = tmp_path / "volume" / "models" / "DeepSeek-R1"
    calls: list[tuple[str, dict]] = []

    class Spy:  # records exactly what reaches PodSSH.run
        def __init__(self, ssh) -> None:
            self.ssh = ssh

        def run(self, command, **kw):
            calls.append((command, kw))
            return self.ssh.run(command, **kw)

    with FakeHub({REPO_ID: repo_dir}, token=HF_TOKEN) as hub:
        m = download_to_volume(
            ssh_exec(Spy(pod["pod"].ssh)),
            REPO_ID,
            "main",
            str(dest),
            ["*.safetensors", "config.json", "tokenizer*"],
            endpoint=hub.url,
            python=sys.executable,
            install_missing=False,
            log_path=tmp_path / "events.jsonl",
            progress_interval=0.2,
        )
        assert m.complete and m.downloaded_files == 5
        assert all(e["auth"] for e in hub.log if e["path"].startswith(("/api/", f"/{REPO_ID}/resolve/")))
        again = download_to_volume(
            ssh_exec(pod["pod"].ssh),
            REPO_ID,
            "main",
            str(dest),
            ["*.safetensors", "config.json", "tokenizer*"],
            endpoint=hub.url,
            python=sys.executable,
            install_missing=False,
        )
        assert again.downloaded_files == 0
    command, kw = calls[0]
    assert HF_TOKEN not in command and HF_TOKEN not in json.dumps(kw.get("env") or {})
    assert kw["stdin"] == HF_TOKEN + "\n"
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events[0]["event"] == "start" and events[0]["token"] is True and events[-1]["event"] == "done"
    for f in [*pod["run_dir"].rglob("*"), tmp_path / "events.jsonl", dest / ".r1lab" / "manifest.json"]:
        if f.is_file():
            assert HF_TOKEN not in f.read_text(errors="replace"), f
