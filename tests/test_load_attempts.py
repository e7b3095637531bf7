"""Resume of a load test cut short: the points the earlier attempt completed are carried over byte for byte, the
cut-short point runs again whole from its first request, so every point has exactly its planned requests from one
attempt (against the ground-truth server, which counts what it served)."""

from __future__ import annotations

import json
from pathlib import Path

from r1lab.bench import gtserver
from r1lab.bench.attempts import carry_complete_points, complete_points
from r1lab.bench.loadgen import CLIENT_STATS
from r1lab.bench.scenarios import run_load
from r1lab.config import Load, Scenario
from r1lab.tinymodel import write_tiny_model


def _load() -> Load:
    return Load(scenarios=[Scenario(name="sweep", concurrency=[2, 4, 8], input_tokens=32, output_tokens=6,
                                    requests_per_point=20)])  # fmt: skip


def test_resume_carries_complete_points_and_reruns_the_cut_short_one(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny")
    first, resumed = tmp_path / "first", tmp_path / "resumed"
    with gtserver.running(ttft_ms=5, itl_ms=1, log=tmp_path / "truth") as url:
        run_load(_load(), url=url, model_dir=model, model="gt", run_dir=first)
    sweep = first / "load" / "sweep"
    lines = (sweep / "requests.jsonl").read_bytes().splitlines(keepends=True)
    # cut c8 short as a kill does: 7 of its records written, the last one torn, and no client line for it
    kept = [x for x in lines if json.loads(x)["point"] != "c8"]
    c8 = [x for x in lines if json.loads(x)["point"] == "c8"]
    (sweep / "requests.jsonl").write_bytes(b"".join(kept + c8[:7]) + c8[7][:40])
    client = [x for x in (sweep / CLIENT_STATS).read_text().splitlines() if json.loads(x)["point"] != "c8"]
    (sweep / CLIENT_STATS).write_text("\n".join(client) + '\n{"scenario": "sweep", "poi')
    assert complete_points(sweep) == {"c2", "c4"}

    assert carry_complete_points(first / "load", resumed / "load") == {"sweep": ["c2", "c4"]}
    carried = (resumed / "load" / "sweep" / "requests.jsonl").read_bytes()
    assert carried == b"".join(kept)  # byte for byte, one attempt's records
    with gtserver.running(ttft_ms=5, itl_ms=1, log=tmp_path / "truth2") as url:
        got = run_load(_load(), url=url, model_dir=model, model="gt", run_dir=resumed)
    recs = [json.loads(x) for x in (resumed / "load" / "sweep" / "requests.jsonl").read_text().splitlines()]
    per_point = {p: sum(r["point"] == p for r in recs) for p in ("c2", "c4", "c8")}
    assert per_point == {"c2": 20, "c4": 20, "c8": 20} and len(got["sweep"]) == 60
    assert len({r["request_id"] for r in recs}) == 60  # nothing twice
    assert complete_points(resumed / "load" / "sweep") == {"c2", "c4", "c8"}
    # the server saw exactly c8's 20 requests again, nothing of the points carried over
    served = sorted(k for k in gtserver.read_truth(tmp_path / "truth2") if k != "__server__")
    assert len(served) == 20 and all(k.startswith("sweep-c8-") for k in served), served


def test_resume_after_a_teardown_rents_again(tmp_path: Path) -> None:
    """Completed renting notebooks are skipped only while what they rented stands (a SIGKILL left it up); after a
    teardown or a reap they run again, or 05 would load an endpoint that no longer exists."""
    from types import SimpleNamespace

    from r1lab.runner import _still_standing
    from r1lab.teardown import Ledger

    ctx = SimpleNamespace(run_dir=tmp_path)
    done = {"00_plan", "01_environment", "02_single_node", "03_multi_node", "04_dynamo"}
    ledger = Ledger(tmp_path)
    ledger.record("runpod-volume", "v1", "vol", "twin")
    assert _still_standing(ctx, {"00_plan", "01_environment"}) == {"00_plan", "01_environment"}
    assert _still_standing(ctx, done) == {"00_plan"}  # 02-04 completed, yet no pod stands
    ledger.record("runpod-pod", "p1", "head", "twin")
    assert _still_standing(ctx, done) == done  # killed outright: everything still up, resume skips it
    ledger.deleted("runpod-pod", "p1")
    ledger.deleted("runpod-volume", "v1")
    assert _still_standing(ctx, done) == {"00_plan"}  # torn down: rent again
