"""`r1lab calibrate` without a GPU: refusal with a clear message (no PyTorch; PyTorch without CUDA), the
measurement logic end to end on the CPU (tiny shapes, gloo), and the --pod path over real SSH to an emulated pod."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from r1lab.calibrate import cli_main
from r1lab.calibrate import gpu_bench as gb
from r1lab.calibrate.cli import check_outputs
from r1lab.perf.profile import PROFILE_DIR

ROOT = Path(__file__).resolve().parents[1]
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"  # the project's CPU PyTorch (scripts/bootstrap.sh --vllm)
KEY = "rpa_CALIBRATETEST0123456789abcdef"


def test_refuses_without_pytorch(tmp_path, capfd):
    rc = cli_main(["--local", "--out", str(tmp_path / "cal"), "--python", sys.executable])
    err = capfd.readouterr().err
    assert rc == 2
    assert "needs PyTorch with CUDA" in err and "cannot import torch" in err and "--pod" in err
    assert "nothing was measured" in err and not (tmp_path / "cal").exists()


@pytest.mark.vllm
def test_refuses_pytorch_without_cuda(tmp_path):
    r = subprocess.run(
        [str(VLLM_PY), gb.__file__, "--out", str(tmp_path / "cal")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "needs a CUDA GPU" in r.stderr and "torch.cuda.is_available() is False" in r.stderr
    assert not (tmp_path / "cal").exists()


@pytest.mark.vllm
def test_cpu_dry_run_exercises_every_section(tmp_path):
    """Tiny shapes on the CPU (wall clock, gloo all-reduce over 2 processes): the logic, not the numbers."""
    out = tmp_path / "dry"
    r = subprocess.run(
        [str(VLLM_PY), gb.__file__, "--dry-run-cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in records}
    assert {"meta", "copy", "gpu_check", "gemm", "kv_read", "allreduce"} <= kinds
    gemms = [r for r in records if r["kind"] == "gemm" and r["dtype"] in ("bf16", "fp8")]
    assert gemms and all(r["error"] is None and r["seconds"] > 0 for r in gemms)
    assert all(r["checked_at_m"] == 64 for r in gemms)  # each shape checked against a float32 reference
    assert {r["world"] for r in records if r["kind"] == "allreduce"} == {2}
    (profile,) = out.glob("*.json")
    data = json.loads(profile.read_text())
    assert data["source"].startswith("DRY RUN") and data["gpu"] is None  # never passes for a real card


def test_check_outputs_validates_the_profile_and_compares(tmp_path, capsys):
    """After a run: the profile goes through the model's loader; figures against datasheet and reference."""
    ref_dir = Path(gb.__file__).parent / "reference"
    out = tmp_path / "cal"
    out.mkdir()
    shutil.copy(ref_dir / "h200-x4-2026-11-27.records.jsonl", out / "records.jsonl")
    shutil.copy(PROFILE_DIR / "h200-x4-2026-11-27.json", out / "h200-x4-2026-11-27.json")
    shared = ROOT.parent / "shared" / "calibration" / "h200x4"
    assert check_outputs(out, shared if shared.exists() else None) == 0
    text = capsys.readouterr().out
    assert (
        "% of datasheet 4.8" in text
        and "all-reduce over 4: floor" in text
        and "loads in r1lab.perf.profile" in text
    )
    if shared.exists():
        assert "vs reference: copy x1.0" in text
    bad = json.loads((out / "h200-x4-2026-11-27.json").read_text())
    (out / "h200-x4-2026-11-27.json").write_text(json.dumps(dict(bad, measured="today")))
    assert check_outputs(out, None) == 1
    assert "h200-x4-2026-11-27.json: measured" in capsys.readouterr().err


def test_dry_run_prints_commands_and_never_overwrites(tmp_path, capsys):
    assert cli_main(["--pod", "203.0.113.7:22022", "--out", str(tmp_path / "c"), "--dry-run", "--quick"]) == 0
    text = capsys.readouterr().out
    assert "ssh root@203.0.113.7 -p 22022" in text and "NCCL_NVLS_ENABLE=0" in text and "--quick" in text
    assert not (tmp_path / "c").exists()
    done = tmp_path / "done"
    done.mkdir()
    (done / "records.jsonl").write_text("{}\n")
    assert cli_main(["--local", "--out", str(done)]) == 1
    assert "never overwrites" in capsys.readouterr().err


def _pod_dirs(out: Path) -> set[Path]:
    """The pod work dirs a calibrate run used, from its SSH log."""
    return {Path(m) for m in re.findall(r"/tmp/r1lab-calibrate-[0-9a-f]{8}", (out / "ssh.log").read_text())}


@pytest.mark.integration
def test_pod_path_uploads_runs_and_reports_refusal(tmp_path, monkeypatch, capfd):
    """Real sshd (an emulated RunPod pod on loopback): upload, run, stream, fetch; no GPU there -> exit 2."""
    from r1lab.cloud.emulator import Emulator, LocalSshdBackend, Timings
    from r1lab.cloud.ledger import teardown
    from r1lab.cloud.provision import PodPlan, Provisioner
    from r1lab.cloud.runpod import RunPodClient

    monkeypatch.setenv("RUNPOD_API_KEY", KEY)
    monkeypatch.setenv("R1LAB_PROGRESS", "plain")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    backend = LocalSshdBackend(tmp_path / "pods")
    emu = Emulator(api_key=KEY, backend=backend, timings=Timings(0.1, 0.1, 0.3)).start()
    try:
        prov = Provisioner(run_dir, "cal1", client=RunPodClient(base_url=emu.url), poll_s=0.1)
        prov.ensure_key()
        (pod,) = prov.pods([PodPlan("gpu", "img", "NVIDIA H200", 1, ports=["22/tcp"])])
        ssh = pod.ssh
        pod.ssh.close()
        python = str(VLLM_PY) if VLLM_PY.exists() else sys.executable
        pod_args = [
            "--pod",
            f"{ssh.host}:{ssh.port}",
            "--user",
            ssh.username,
            "--ssh-key",
            str(ssh.key.private_path),
            "--python",
            python,
            "--timeout",
            "240",
        ]
        out = tmp_path / "cal"
        rc = cli_main([*pod_args, "--out", str(out)])
        captured = capfd.readouterr()
        assert rc == 2
        assert "r1lab calibrate needs" in captured.err and "nothing was measured" in captured.err
        assert "upload" in (out / "ssh.log").read_text()  # went through the pod, not this process
        assert not (out / "records.jsonl").exists()
        # the pod's work dir was removed: this run's own (named in its SSH log; other runs on this machine make theirs)
        assert _pod_dirs(out) and not any(d.exists() for d in _pod_dirs(out))
        if python == sys.executable:
            return  # no PyTorch here (.venv-vllm missing): the measuring half below needs it
        dry = tmp_path / "dry"
        rc = cli_main(
            [*pod_args, "--out", str(dry), "--dry-run-cpu", "--skip", "gemm", "--skip", "allreduce"]
        )
        text = capfd.readouterr().out
        assert rc == 0, text
        records = [json.loads(line) for line in (dry / "records.jsonl").read_text().splitlines()]
        assert {"meta", "copy", "kv_read"} <= {r["kind"] for r in records}  # fetched back from the pod
        assert (
            len(list(dry.glob("*-x2-*.json"))) == 1
            and "not validated" in text
            and "copy (read+write)" in text
        )
        assert _pod_dirs(dry) and not any(d.exists() for d in _pod_dirs(dry))
    finally:
        assert teardown(run_dir).ok
        emu.stop()
