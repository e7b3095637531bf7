"""Mocker tables: the NPZ format, the CLI args, and the installed dynamo.mocker accepting them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from r1lab.perf.mocker import NPZ_KEYS, check_npz, mocker_setup, mocker_setups_for


def test_tables_and_args(tmp_path):
    s = mocker_setup("H100 NVL", "TP8", "mocker", tmp_path, max_model_len=16384)
    check_npz(s.npz_path)
    with np.load(s.npz_path) as d:
        assert set(NPZ_KEYS) <= set(d.keys())
        assert d["decode_itl"].shape == (len(d["decode_active_kv_tokens"]), len(d["decode_context_length"]))
        assert d["prefill_isl"][-1] == 8192
        assert np.all(np.diff(d["prefill_ttft_ms"]) >= 0)  # more prompt tokens never prefill faster
    a = s.args
    assert a[a.index("--kv-bytes-per-token") + 1] == "70272"
    assert int(a[a.index("--num-gpu-blocks-override") + 1]) == s.num_gpu_blocks == s.memory["num_blocks"]
    assert a[a.index("--block-size") + 1] == "64"
    assert "--max-num-seqs" in a and "--max-num-batched-tokens" in a


def test_does_not_fit_raises(tmp_path):
    with pytest.raises(ValueError, match="H100 SXM TP8: weights alone"):
        mocker_setup("H100 SXM", "TP8", "mocker", tmp_path)


def test_pd_args(tmp_path):
    s = mocker_setup(
        "H100 NVL", "TP8", "mocker", tmp_path, disaggregation_mode="decode", kv_transfer_gb_s=0.0125
    )
    assert s.args[-4:] == ["--disaggregation-mode", "decode", "--kv-transfer-bandwidth", "0.0125"]


def test_installed_mocker_loads_the_tables(tmp_path):
    """Start `python -m dynamo.mocker` with file discovery on loopback and see it load our NPZ and register."""
    from r1lab.tinymodel import write_tiny_model

    model = write_tiny_model(tmp_path / "model")
    s = mocker_setup("H100 NVL", "TP8", "mocker", tmp_path / "tables")
    kv = tmp_path / f"kv-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        DYN_DISCOVERY_BACKEND="file",
        DYN_FILE_KV=str(kv),
        DYN_REQUEST_PLANE="tcp",
        DYN_EVENT_PLANE="zmq",
        DYN_TCP_RPC_HOST="127.0.0.1",
        DYN_TCP_RESPONSE_STREAM_HOST="127.0.0.1",
        DYN_EVENT_PLANE_HOST="127.0.0.1",
        DYN_SYSTEM_HOST="127.0.0.1",
        DYN_HTTP_RPC_HOST="127.0.0.1",
        NO_COLOR="1",
    )
    log = tmp_path / "mocker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dynamo.mocker",
                "--model-path",
                str(model),
                "--model-name",
                "r1",
                *s.args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            if "Registered endpoint" in text or proc.poll() is not None:
                break
            time.sleep(0.3)
        assert proc.poll() is None, f"mocker exited: {text[-2000:]}"
        assert "Loaded performance model" in text
        assert f"num_gpu_blocks: {s.num_gpu_blocks}" in text
        assert "kv_transfer_bytes_per_token: Some(70272)" in text
        assert "Registered endpoint" in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_setups_for_twin_params(tmp_path):
    from pathlib import Path

    from r1lab.config import load_experiment
    from r1lab.resolve import resolve

    r = resolve(load_experiment(Path(__file__).resolve().parents[1] / "params" / "twin.yaml"))
    setups = mocker_setups_for(r, tmp_path)
    assert set(setups) == {"prefill", "decode"}
    d = setups["decode"].args
    assert d[d.index("--disaggregation-mode") + 1] == "decode"
    assert float(d[d.index("--kv-transfer-bandwidth") + 1]) == pytest.approx(0.0125)  # 100 Mbps in GB/s
    assert setups["prefill"].npz_path != setups["decode"].npz_path
    for s in setups.values():
        check_npz(s.npz_path)
    assert setups["decode"].memory == r.group("decode").memory  # the plan the resolved deployment holds


def test_pd_mocker_times_the_transfer_with_one_copy_per_decode_rank(tmp_path):
    """The mocker's --kv-bytes-per-token is its kv_transfer_bytes_per_token: x decode TP under P/D."""
    agg = mocker_setup("H100 NVL", "TP8", "mocker", tmp_path)
    pre = mocker_setup("H100 NVL", "TP8", "mocker", tmp_path, disaggregation_mode="prefill", decode_tp=4)
    dec = mocker_setup("H100 NVL", "TP8", "mocker", tmp_path, disaggregation_mode="decode")
    assert agg.kv_bytes_per_token == 70_272
    assert pre.kv_bytes_per_token == 4 * 70_272
    assert dec.kv_bytes_per_token == 8 * 70_272
    assert dec.args[dec.args.index("--kv-bytes-per-token") + 1] == str(8 * 70_272)
