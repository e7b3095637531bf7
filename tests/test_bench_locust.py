"""Locust end to end, distributed (master + 2 workers), against the local ground-truth server."""

from __future__ import annotations

import csv

from r1lab.bench import gtserver
from r1lab.bench.client import completion_body
from r1lab.bench.locust_run import run_locust, write_workload
from r1lab.bench.metrics import summarize_point
from r1lab.bench.records import COLUMNS, read_jsonl


def test_locust_distributed_records_in_r1lab_schema(tmp_path):
    wl = write_workload(tmp_path / "wl.jsonl", [(completion_body("gt", "completions", f"p{i}", 10), 2)
                                                for i in range(8)])  # fmt: skip
    with gtserver.running(ttft_ms=30, itl_ms=10, log=tmp_path / "truth", extra=["--fail-every", "7"]) as url:
        run = run_locust(
            url, wl, tmp_path / "out", users=8, duration_s=4, workers=2, scenario="loc", point="u8"
        )
    assert run.returncode == 0, run.log
    recs = read_jsonl(run.records_path)
    stats = {r["Type"]: r for r in csv.DictReader(run.stats_csv.open())}
    # every request Locust counted became a record (shipped from both workers to the master)
    assert len(recs) == int(stats["E2E"]["Request Count"]) > 50
    assert {r["worker"] for r in recs} == {0, 1}
    assert all(set(COLUMNS) <= set(r) for r in recs)
    failed = [r for r in recs if r["error"]]
    assert failed and {r["error"] for r in failed} == {
        "stream_error"
    }  # the server's injected mid-stream errors
    assert int(stats["E2E"]["Failure Count"]) == len(failed)
    ok = [r for r in recs if not r["error"]]
    assert all(r["concurrency"] == 8 and r["output_tokens"] == 10 for r in ok)
    s = summarize_point(recs)
    # the server's schedule: TTFT 30 ms, a chunk every 10 ms; Locust's own TTFT metric agrees with our records
    assert 29 < s["ttft_ms"]["p50"] < 40 and 9.5 < s["itl_ms"]["p50"] < 10.5
    assert abs(float(stats["TTFT"]["50%"]) - s["ttft_ms"]["p50"]) <= 5
    assert 9 <= float(stats["TPOT"]["50%"]) <= 11
