"""Metric math against hand-computed cases, saturation, trend checks and the summary files."""

from __future__ import annotations

import csv
import json

import pytest

from r1lab.bench.metrics import Slo, summarize_point
from r1lab.bench.saturation import find_knee
from r1lab.bench.scenarios import write_summary
from r1lab.bench.trends import stress_checks


def rec(t_send, chunks, out, *, err=None, warmup=False, in_tok=10, tokens=None):
    return {"scenario": "s", "point": "c2", "concurrency": 2, "rate": None, "warmup": warmup, "t_send": t_send,
            "t_first": chunks[0] if chunks else None, "t_end": (chunks[-1] + 0.01) if chunks else t_send + 0.5,
            "chunk_t": chunks, "chunk_tokens": tokens or [1] * len(chunks), "input_tokens": in_tok,
            "output_tokens": out, "error": err}  # fmt: skip


RECORDS = [
    rec(0.0, [0.1, 0.15, 0.25], 3),  # ttft 100, e2el 250, tpot (250-100)/2 = 75, itl 50, 100
    rec(1.0, [1.2], 1),  # ttft 200, e2el 200, no tpot, no itl
    rec(0.5, [0.9, 1.0, 1.1, 1.2, 1.3], 9, tokens=[1, 2, 2, 2, 2]),  # ttft 400, e2el 800, tpot 400/8 = 50
    rec(0.2, [], None, err="http_500"),
    rec(1.5, [], None, err="timeout"),
    rec(-1.0, [-0.9, -0.8], 2, warmup=True),  # left out entirely
]


def test_hand_computed_point():
    s = summarize_point(RECORDS, slo=Slo(ttft_ms=250, tpot_ms=60), gpus=4, usd_per_hour=36.0)
    # duration: first measured send 0.0 -> last end 1.5 + 0.5 (the timeout record's end) = 2.0 s
    assert s["duration_s"] == pytest.approx(2.0)
    assert (s["requests"], s["errors"], s["warmup_requests"]) == (5, 2, 1)
    assert s["errors_by_kind"] == {"http_500": 1, "timeout": 1}
    assert s["rps"] == pytest.approx(3 / 2.0)
    assert s["input_tok_s"] == pytest.approx(30 / 2.0)
    assert s["output_tok_s"] == pytest.approx(13 / 2.0)
    # TTFT 100, 200, 400: mean 233.33, p50 200, p90 = 200 + 0.8*200 = 360, p99 = 200 + 0.98*200 = 396
    assert s["ttft_ms"]["mean"] == pytest.approx(700 / 3)
    assert s["ttft_ms"]["p50"] == pytest.approx(200)
    assert s["ttft_ms"]["p90"] == pytest.approx(360)
    assert s["ttft_ms"]["p99"] == pytest.approx(396)
    # TPOT only for >1 token: 75, 50
    assert s["tpot_ms"]["mean"] == pytest.approx(62.5) and s["tpot_ms"]["p50"] == pytest.approx(62.5)
    # ITL pooled: 50, 100, 100, 100, 100, 100
    assert s["itl_ms"]["mean"] == pytest.approx(550 / 6)
    assert s["itl_ms"]["p50"] == pytest.approx(100)
    assert s["e2el_ms"]["p50"] == pytest.approx(250)
    # goodput: request 1 (100 <= 250, 75 > 60: no), 2 (200, tpot 0: yes), 3 (400 > 250: no) -> 1 / 2 s
    assert s["goodput_rps"] == pytest.approx(0.5)
    assert s["tok_s_per_gpu"] == pytest.approx(6.5 / 4)
    assert s["tok_s_per_user"] == pytest.approx(1000 / 62.5)
    # $36/h at 6.5 output tok/s: 36 / (6.5 * 3600) * 1e6
    assert s["usd_per_mtok_out"] == pytest.approx(36 / (6.5 * 3600) * 1e6)
    assert s["usd_per_mtok_in"] == pytest.approx(36 / (15 * 3600) * 1e6)


def test_empty_and_all_failed_points_do_not_crash():
    s = summarize_point([rec(0.0, [], None, err="connect")])
    assert s["errors"] == 1 and s["ttft_ms"]["p99"] is None and s["goodput_rps"] is None
    assert summarize_point([])["requests"] == 0


def point(c, thr, e2el):
    return {
        "scenario": "sweep",
        "concurrency": c,
        "rate": None,
        "output_tok_s": thr,
        "e2el_ms": {"p50": e2el},
    }


def test_knee_where_throughput_flattens_and_latency_climbs():
    pts = [point(1, 100, 1000), point(2, 195, 1020), point(4, 380, 1050), point(8, 560, 1400),
           point(16, 600, 2700), point(32, 610, 5300)]  # fmt: skip
    k = find_knee(pts)
    # 8 -> 16: scaling (600/560 - 1)/(2 - 1) = 0.071 < 0.2 and latency x1.93: knee at 8
    assert k["saturated"] and k["knee_concurrency"] == 8 and k["knee_throughput"] == 560
    assert k["max_throughput_concurrency"] == 32
    assert k["steps"][0]["scaling"] == pytest.approx(0.95)


def test_no_knee_while_throughput_still_scales():
    k = find_knee([point(1, 100, 1000), point(2, 190, 1000), point(4, 360, 1010)])
    assert not k["saturated"] and "extend the sweep" in k["note"]
    # flat throughput but flat latency too is not a knee (e.g. a client-side limit shows up elsewhere)
    assert not find_knee([point(1, 100, 1000), point(2, 101, 1000)])["saturated"]


def test_knee_where_the_server_turns_the_excess_away():
    """Past its capacity the twin's Dynamo answers most requests 500/503 at once: throughput falls while the few
    requests that succeed keep their latency (measured on the twin: c=256 2,469 tok/s, c=512 1,930 tok/s with
    10,471 of 10,773 requests failed, e2el p50 x1.00). The failures, not the latency, show the overload."""
    pts = [point(128, 1596, 4946), point(256, 2469, 5628), point(512, 1930, 5643)]
    for p, (n, err) in zip(pts, [(257, 0), (441, 0), (10773, 10471)], strict=True):
        p.update(requests=n, errors=err)
    k = find_knee(pts)
    assert k["saturated"] and k["knee_concurrency"] == 256 and "97% of requests failed" in k["knee_why"]
    # a few failures where throughput still grows are no knee; nor are failures as frequent as before
    pts[2].update(requests=1000, errors=40)
    assert not find_knee(pts)["saturated"]
    pts[1].update(requests=1000, errors=990)
    pts[2].update(requests=1000, errors=990)
    k = find_knee(pts)  # 512 fails no more than 256 did: the knee is before 256, where most first failed
    assert k["knee_concurrency"] == 128 and "99% of requests failed at concurrency 256" in k["knee_why"]


def test_a_point_where_most_requests_fail_is_past_the_knee_even_if_throughput_grew():
    """Seen in the twin demo (main 9ac43db): c=512 had 7,143 of 7,655 requests fail (500/503, answered at once,
    so the closed loop sent more) while the 512 that succeeded still raised throughput; the sweep then went on to
    c=1024, which took the frontend down. A majority of failures is past capacity: the knee is the point before."""
    pts = [point(128, 1596, 4946), point(256, 2129, 5628), point(512, 2536 * 1.5, 5643)]
    for p, (n, err) in zip(pts, [(257, 0), (344, 0), (7655, 7143)], strict=True):
        p.update(requests=n, errors=err)
    assert find_knee(pts)["steps"][-1]["scaling"] > 0.2  # throughput "still scaled"
    k = find_knee(pts)
    assert k["saturated"] and k["knee_concurrency"] == 256 and "93% of requests failed" in k["knee_why"]
    pts[2].update(errors=3000)  # 39%: a minority, and throughput grew: not a knee
    assert not find_knee(pts)["saturated"]


def test_stress_trend_checks_flag_rising_latency_and_errors():
    steady = [rec(t, [t + 0.1, t + 0.2], 2) for t in [i * 0.5 for i in range(120)]]
    out = stress_checks(steady, window_s=10)
    assert out["ok"], out["checks"]
    rising = [rec(t, [t + 0.1 + t / 30, t + 0.2 + t / 30], 2, err="timeout" if t > 45 and int(t * 2) % 3 == 0
                  else None) for t in [i * 0.5 for i in range(120)]]  # fmt: skip
    out = stress_checks(rising, window_s=10)
    bad = {c["name"] for c in out["checks"] if c["ok"] is False}
    assert not out["ok"] and {"ttft_p50_ms", "error_rate"} <= bad


def test_stress_checks_read_scraped_server_series():
    import pandas as pd

    recs = [rec(t, [t + 0.1, t + 0.2], 2) for t in [i * 0.5 for i in range(120)]]
    rows = [{"time": t, "source": "w0", "metric": "vllm:kv_cache_usage_perc", "labels": "{}", "value": 0.2 + t / 100}
            for t in range(0, 60, 5)]  # fmt: skip
    out = stress_checks(recs, window_s=10, metrics=pd.DataFrame(rows))
    kv = next(c for c in out["checks"] if c["name"] == "kv_cache_usage")
    assert kv["ok"] is False and kv["last"] > kv["first"]


def test_summary_files_are_flat_and_never_overwritten(tmp_path):
    s = summarize_point(RECORDS, slo=Slo(ttft_ms=250))
    summary = {"schema_version": 1, "run_id": "r", "points": [s], "saturation": {}, "trends": {}}
    js, cs = write_summary(tmp_path, summary)
    assert json.loads(js.read_text())["points"][0]["ttft_ms"]["p50"] == pytest.approx(200)
    row = next(csv.DictReader(cs.open()))
    assert (
        float(row["ttft_ms_p99"]) == pytest.approx(396) and json.loads(row["errors_by_kind"])["timeout"] == 1
    )
    with pytest.raises(FileExistsError, match="never overwritten"):
        write_summary(tmp_path, summary)
