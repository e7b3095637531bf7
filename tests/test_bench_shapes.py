"""Load shapes hold their targets against the ground-truth server; warm-up is excluded; a killed run keeps its
records."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from r1lab.bench import gtserver
from r1lab.bench.client import completion_body
from r1lab.bench.loadgen import run_point
from r1lab.bench.metrics import summarize_point
from r1lab.bench.records import read_jsonl
from r1lab.bench.shapes import Shape, arrivals


def bodies(tokens: int, n: int = 16) -> list[tuple[bytes, int]]:
    return [(completion_body("gt", "completions", f"p{i}", tokens), 2) for i in range(n)]


def inflight(recs, lo, hi):
    """Time-weighted mean and max number of requests in flight over [lo, hi]."""
    area = sum(max(0.0, min(r["t_end"], hi) - max(r["t_send"], lo)) for r in recs)
    events = sorted([(r["t_send"], 1) for r in recs] + [(r["t_end"], -1) for r in recs])
    cur = peak = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return area / (hi - lo), peak


def test_poisson_arrivals_statistics():
    t = arrivals(50.0, requests=20000, duration_s=None, seed=1)
    gaps = np.diff(t)
    assert len(t) == 20000 and t[0] == 0.0
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV 1
    bursty = np.diff(arrivals(50.0, requests=20000, duration_s=None, seed=1, burstiness=4.0))
    assert bursty.std() / bursty.mean() == pytest.approx(0.5, abs=0.05)  # gamma(k): CV 1/sqrt(k)
    d = arrivals(20.0, requests=None, duration_s=30.0, seed=2)
    assert d.max() < 30.0 and len(d) == pytest.approx(600, rel=0.15)
    assert np.array_equal(d, arrivals(20.0, requests=None, duration_s=30.0, seed=2))


def stall_bound_s(res, extra_s: float) -> dict[int, float]:
    """Per worker: how late a send may be, the worker's own measured worst loop stall in this run plus
    `extra_s`; on a loaded machine the CPU, not the generator, decides how long a process waits to run."""
    return {s["worker"]: s["loop_lag_max_ms"] / 1e3 + extra_s for s in res.worker_stats}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # under SCHED_RR when root (CI), as benchmarks/loadgen_capacity.py runs it: the truth keeps its schedule on a
    # loaded machine, so what these tests measure is the generator
    with gtserver.running(
        ttft_ms=20, itl_ms=10, log=tmp_path_factory.mktemp("gt") / "truth", realtime=True
    ) as url:
        yield url


def test_fixed_concurrency_holds_its_target_across_workers(server, tmp_path):
    shape = Shape("concurrency", concurrency=40, duration_s=3.0, warmup_s=0.5)
    res = run_point(server, bodies(10), shape, scenario="c", out=tmp_path / "r.jsonl", workers=2)
    recs = res.records
    assert res.workers == 2 and all(r["error"] is None for r in recs)
    t0 = res.t0  # the common start the workers were given (a loaded machine may wake them late for it)
    assert t0 is not None and min(r["t_send"] for r in recs) >= t0  # never early (workers.sleep_until)
    lo, hi = t0 + 0.5, t0 + 2.9
    # Each worker keeps its 20 slots full: >= 95% of them in flight, less only what its own measured stalls
    # explain (while a worker's process waits for the CPU, what ends is not refilled: at most all its slots empty
    # for the stalled time). On a quiet machine the stalls are ~0 and this is the plain 95%.
    stats = {s["worker"]: s for s in res.worker_stats}
    assert sorted(stats) == [0, 1]
    for w, st in stats.items():
        mean_w, _ = inflight([r for r in recs if r["worker"] == w], lo, hi)
        need = 20 * (0.95 - min(st["loop_stalled_s"], hi - lo) / (hi - lo))
        assert mean_w >= need, (w, mean_w, need, st)
    mean, peak = inflight(recs, lo, hi)
    assert peak <= 40, (mean, peak)
    assert len({r["request_id"] for r in recs}) == len(recs)
    assert all(
        r["warmup"] == (r["t_send"] < t0 + 0.5 - 1e-3) for r in recs if abs(r["t_send"] - t0 - 0.5) > 2e-3
    )
    s = summarize_point(recs)
    assert s["requests"] == sum(not r["warmup"] for r in recs) and s["warmup_requests"] > 0
    assert len(read_jsonl(tmp_path / "r.jsonl")) == len(recs)
    # TTFT 20 ms and a chunk every 10 ms by the server's clock: the client sees the same within a few ms
    assert 19 < s["ttft_ms"]["p50"] < 30 and 9.5 < s["itl_ms"]["p50"] < 10.5


def test_workers_never_wake_before_their_deadline():
    """uvloop (the workers' loop) rounds a timer to the nearest ms and fires on ms ticks: a plain asyncio.sleep to a
    random deadline ended early about 1 time in 4, by up to 1.2 ms (measured, 5 x 200 here); a point's first sends
    then fell before its start and were flagged warm-up (a 12-request point counted 8). sleep_until never does."""
    import random

    import uvloop

    from r1lab.bench.workers import sleep_until

    async def lateness() -> list[float]:
        rng, out = random.Random(0), []
        for _ in range(200):
            t = time.perf_counter() + 0.002 + rng.random() * 0.002
            await sleep_until(t)
            out.append(time.perf_counter() - t)
        return out

    assert min(uvloop.run(lateness())) >= 0


def test_count_bound_sends_exactly_that_many(server, tmp_path):
    res = run_point(server, bodies(3), Shape("concurrency", concurrency=7, requests=50), scenario="n",
                    out=tmp_path / "r.jsonl", workers=2)  # fmt: skip
    assert len(res.records) == 50 and sorted(
        int(r["request_id"].rsplit("-", 1)[1]) for r in res.records
    ) == list(range(50))


def test_poisson_keeps_its_schedule_and_cap(server, tmp_path):
    shape = Shape("poisson", rate=150.0, requests=300)
    res = run_point(server, bodies(4), shape, scenario="p", out=tmp_path / "r.jsonl", workers=2, seed=3)
    recs = sorted(res.records, key=lambda r: r["t_sched"])
    assert len(recs) == 300 and all(r["error"] is None for r in recs)
    lag = np.array([r["t_send"] - r["t_sched"] for r in recs])
    # sends leave on schedule: never early, the median within 5 ms (plus the workers' typical loop lag in this
    # run); the tail within 100 ms, or within the sending worker's own worst measured stall + 20 ms when the
    # machine stalled it longer (a loaded CI box stalls processes; the generator must add nothing to that)
    typical = max(s["loop_lag_p50_ms"] for s in res.worker_stats) / 1e3
    bound = stall_bound_s(res, 0.02)
    assert lag.min() >= 0 and np.median(lag) < 0.005 + typical, (lag.min(), np.median(lag), typical)
    late = [(r["request_id"], x, bound[r["worker"]]) for r, x in zip(recs, lag, strict=True)
            if x >= max(0.1, bound[r["worker"]])]  # fmt: skip
    assert len(late) <= len(recs) // 100, (late, res.worker_stats)  # (p99: at most 3 of 300 over the bound)
    sched = np.array([r["t_sched"] for r in recs]) - recs[0]["t_sched"]
    expected = arrivals(150.0, requests=300, duration_s=None, seed=3)
    assert np.allclose(sched, expected, atol=0.005)  # the seeded schedule, exactly
    sends = np.array([r["t_send"] for r in recs]) - recs[0]["t_sched"]
    # delivered rate = offered rate: within 2%, plus what the workers' measured stalls can tilt a fit (sends late
    # by anything in [0, L] tilt a line over the span by at most 1.5 L / span; ~0 on a quiet machine)
    tilt = 1.5 * max(0.0, res.loop_lag_max_ms / 1e3 - 0.005) / sched[-1]
    assert np.polyfit(sched, sends, 1)[0] == pytest.approx(1.0, abs=0.02 + tilt)
    capped = run_point(server, bodies(15), Shape("poisson", rate=200.0, requests=120, concurrency=4),
                       scenario="cap", out=tmp_path / "c.jsonl", workers=1)  # fmt: skip
    _, peak = inflight(capped.records, 0, 1e12)
    assert peak <= 4


def test_killed_run_keeps_its_records(server, tmp_path):
    out = tmp_path / "r.jsonl"
    code = textwrap.dedent(f"""
        from r1lab.bench.client import completion_body
        from r1lab.bench.loadgen import run_point
        from r1lab.bench.shapes import Shape
        b = [(completion_body("gt", "completions", "x", 5), 2)]
        run_point({server!r}, b, Shape("concurrency", concurrency=8, duration_s=60), scenario="k", out={str(out)!r})
    """)
    p = subprocess.Popen([sys.executable, "-c", code], start_new_session=True, env=dict(os.environ, CI="1"))
    deadline = time.time() + 30
    while time.time() < deadline and (not out.exists() or out.stat().st_size < 20000):
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    recs = read_jsonl(out)
    assert len(recs) > 20 and all(r["error"] is None for r in recs)
