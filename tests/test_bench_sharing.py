"""Workloads that share prefixes, against the ground-truth server: multi-turn turns carry the streamed answer,
shared-prefix prompts share exactly the configured prefix tokens, a trace replays at its times with its lengths."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from r1lab.bench import gtserver
from r1lab.bench.loadgen import run_point
from r1lab.bench.records import read_jsonl
from r1lab.bench.scenarios import prefix_cache_lines, prefix_cache_of, run_scenario, summarize_run
from r1lab.bench.shapes import Shape
from r1lab.bench.traces import block_texts, build_trace_workload, read_trace, trace_offsets
from r1lab.bench.workloads import (
    ModelTokenizer,
    WorkloadError,
    bodies,
    build_shared_prefix,
    conversation_plan,
    head_tokens,
    server_ids,
)
from r1lab.config import Scenario
from r1lab.tinymodel import write_tiny_model


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return ModelTokenizer(write_tiny_model(tmp_path_factory.mktemp("tiny")))


def _lcp(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_multi_turn_turn_k_carries_turn_k_minus_1_streamed_answer(tmp_path, tok, api):
    conv = conversation_plan(
        tok, conversations=3, turns=3, user_tokens=20, output_tokens=5, model="gt", api=api, seed=2
    )
    out = tmp_path / "requests.jsonl"
    with gtserver.running(
        ttft_ms=5, itl_ms=2, log=tmp_path / "truth", extra=["--log-prompts", "--tag-text"]
    ) as url:
        res = run_point(url, [], Shape("concurrency", concurrency=2, requests=9), scenario="mt", out=out, api=api,
                        workers=1, conversations=conv)  # fmt: skip
    truth = gtserver.read_truth(tmp_path / "truth")
    recs = {r["request_id"]: r for r in read_jsonl(out)}
    assert len(recs) == 9 and all(r["error"] is None and r["loop"] == "closed" for r in recs.values())
    for c in conv:
        for j in range(1, 3):
            prev, cur = f"{res.scenario}-{res.point}-{c['first_k'] + j - 1}", f"mt-c2-{c['first_k'] + j}"
            answer = "".join(f" {prev}.t{i}" for i in range(c["max_tokens"][j - 1]))
            p = truth[cur]["prompt"]
            if api == "chat":
                assert p[-3] == {"role": "user", "content": c["user"][j - 1]}
                assert p[-2] == {"role": "assistant", "content": answer} and p[-1]["content"] == c["user"][j]
                assert p[:-2] == truth[prev]["prompt"]
            else:
                assert p == truth[prev]["prompt"] + answer + c["user"][j]
            # sequential per user: turn j was sent only after turn j-1 had ended
            assert recs[cur]["t_send"] >= recs[prev]["t_end"]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_shared_prefix_prompts_share_exactly_the_prefix_tokens(tmp_path, tok, api):
    wl = build_shared_prefix(tok, n=8, groups=2, prefix_tokens=60, suffix_tokens=25, output_tokens=4, model="gt",
                             api=api, seed=3)  # fmt: skip
    head = head_tokens(tok, api)
    ids = [server_ids(tok, r.prompt, api) for r in wl]
    for i in range(8):
        for j in range(i + 1, 8):
            same = i % 2 == j % 2
            assert _lcp(ids[i], ids[j]) == (head + 60 if same else _lcp(ids[i], ids[j]))
            if same:
                assert _lcp(ids[i], ids[j]) == head + 60
            else:
                assert _lcp(ids[i], ids[j]) < head + 60
    count = tok.count_chat if api == "chat" else tok.count_completion
    assert all(count(r.prompt) == r.input_tokens for r in wl)
    with gtserver.running(ttft_ms=5, itl_ms=2, log=tmp_path / "truth", extra=["--log-prompts"]) as url:
        run_point(url, bodies(wl), Shape("concurrency", concurrency=4, requests=8), scenario="sp",
                  out=tmp_path / "r.jsonl", api=api, workers=1)  # fmt: skip
    sent = [e["prompt"] for k, e in gtserver.read_truth(tmp_path / "truth").items() if k != "__server__"]
    want = {
        r.prompt if api == "completions" else json.dumps([{"role": "user", "content": r.prompt}]) for r in wl
    }
    assert {p if api == "completions" else json.dumps(p) for p in sent} == want


def _trace(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_trace_replay_sends_at_trace_times_with_trace_lengths(tmp_path, tok):
    rows = [
        {"timestamp": 0, "input_length": 60, "output_length": 6, "hash_ids": [7, 8]},
        {"timestamp": 150, "input_length": 96, "output_length": 3, "hash_ids": [7, 8, 9]},
        {"timestamp": 400, "input_length": 50, "output_length": 8, "hash_ids": [7, 10]},
        {"timestamp": 400, "input_length": 64, "output_length": 2, "hash_ids": [11, 8]},
        {"timestamp": 900, "input_length": 128, "output_length": 5, "hash_ids": [7, 8, 9, 12]},
    ]
    f = _trace(tmp_path / "t.jsonl", rows)
    tr = read_trace(f, block_size=32)
    wl = build_trace_workload(tok, tr, model="gt", block_size=32, seed=1)
    assert [tok.count_completion(r.prompt) for r in wl] == [r["input_length"] for r in rows]
    texts = [block_texts(r, tok, 32, seed=1) for r in tr]
    # equal hash ids: identical (full) blocks, wherever they stand; a request's last block is cut to its length
    assert (
        texts[0][0] == texts[1][0] == texts[2][0] == texts[4][0] and texts[1][1] == texts[3][1] == texts[4][1]
    )
    assert texts[1][2] == texts[4][2] and texts[3][0] != texts[0][0] and texts[2][1] != texts[1][1]
    assert wl[4].prompt.startswith("".join(texts[1])) and wl[1].prompt.startswith(texts[1][0] + texts[1][1])
    assert wl[2].prompt.startswith(texts[0][0]) and not wl[2].prompt.startswith(texts[1][0] + texts[1][1])
    shape = Shape("trace", offsets=trace_offsets(tr, 2.0))  # scaled: 0, 0.3, 0.8, 0.8, 1.8 s
    out = tmp_path / "r.jsonl"
    with gtserver.running(ttft_ms=5, itl_ms=2, log=tmp_path / "truth", extra=["--log-prompts"]) as url:
        res = run_point(url, bodies(wl), shape, scenario="tr", out=out, workers=1)
    recs = sorted(read_jsonl(out), key=lambda r: int(r["request_id"].rsplit("-", 1)[1]))
    truth = gtserver.read_truth(tmp_path / "truth")
    t0 = recs[0]["t_sched"]
    # sent no earlier than scheduled and within 200 ms of it (the smallest non-zero gap of the scaled trace is
    # 300 ms), or, when a loaded machine stalled the worker longer, within its own worst measured stall + 50 ms:
    # the generator adds nothing to what the CPU made it wait
    late_ok = max(0.2, res.loop_lag_max_ms / 1e3 + 0.05)
    for k, (r, row) in enumerate(zip(recs, rows, strict=True)):
        assert r["loop"] == "open" and r["error"] is None
        assert r["t_sched"] - t0 == pytest.approx(row["timestamp"] / 1000 * 2.0, abs=1e-6)  # the trace's time
        lag = r["t_send"] - r["t_sched"]
        assert 0 <= lag < late_ok, (lag, res.worker_stats)  # never early (workers.sleep_until, fire)
        assert r["output_tokens"] == row["output_length"]
        assert (
            truth[r["request_id"]]["prompt"] == wl[k].prompt
            and truth[r["request_id"]]["n"] == row["output_length"]
        )


def test_trace_errors_name_file_line_and_fix(tmp_path, tok):
    bad = _trace(
        tmp_path / "b.jsonl", [{"timestamp": 0, "input_length": 900, "output_length": 2, "hash_ids": [1]}]
    )
    with pytest.raises(WorkloadError, match=r"b.jsonl:1: input_length 900 .*block_size"):
        read_trace(bad)
    bad = _trace(tmp_path / "c.jsonl", [{"timestamp": 0, "input_length": 9, "hash_ids": [1]}])
    with pytest.raises(WorkloadError, match=r"c.jsonl:1: no 'output_length'"):
        read_trace(bad)
    with pytest.raises(WorkloadError, match="no such trace file"):
        read_trace(tmp_path / "none.jsonl")


def test_config_validates_workload_parameters():
    with pytest.raises(ValueError, match="workload shared-prefix needs its parameters"):
        Scenario(name="s", workload="shared-prefix")
    with pytest.raises(ValueError, match="only workload: multi-turn uses multi_turn"):
        Scenario(name="s", multi_turn={"conversations": 2, "turns": 2, "user_tokens": 8})
    with pytest.raises(ValueError, match="closed-loop"):
        Scenario(name="s", shape="poisson", rate=[1.0], workload="multi-turn",
                 multi_turn={"conversations": 2, "turns": 2, "user_tokens": 8})  # fmt: skip
    with pytest.raises(ValueError, match="shape: trace needs trace"):
        Scenario(name="s", shape="trace")
    # the file itself is checked where the trace is read (params may be loaded where it is absent: a pod)
    assert (
        not Scenario(name="s", shape="trace", trace={"file": "params/traces/none.jsonl"})
        .trace.path()
        .exists()
    )
    ok = Scenario(name="s", shape="trace", trace={"file": "params/traces/mooncake-conversation-60s.jsonl"})
    assert ok.trace.path().is_file() and ok.trace.block_size == 512
    with pytest.raises(ValueError, match="groups"):
        Scenario(
            name="s",
            workload="shared-prefix",
            shared_prefix={"groups": 0, "prefix_tokens": 8, "suffix_tokens": 8},
        )


def test_scenarios_run_and_summary_states_loop_and_prefix_cache(tmp_path, tok):
    f = _trace(tmp_path / "t.jsonl", [{"timestamp": 10 * i, "input_length": 40, "output_length": 3,
                                        "hash_ids": [1, i]} for i in range(4)])  # fmt: skip
    scs = [
        Scenario(name="sp", workload="shared-prefix", concurrency=[2], requests_per_point=4, output_tokens=3,
                 shared_prefix={"groups": 2, "prefix_tokens": 30, "suffix_tokens": 10}),
        Scenario(name="mt", workload="multi-turn", concurrency=[2], output_tokens=3,
                 multi_turn={"conversations": 2, "turns": 2, "user_tokens": 10}),
        Scenario(name="tr", shape="trace", trace={"file": str(f), "block_size": 32}),
    ]  # fmt: skip
    with gtserver.running(ttft_ms=5, itl_ms=2) as url:
        for sc in scs:
            run_scenario(sc, url=url, tokenizer=tok, model="gt", run_dir=tmp_path / "run", workers=1)
    s = summarize_run(tmp_path / "run", scenarios=scs, write=False)
    by = {p["scenario"]: p for p in s["points"]}
    assert {k: (p["loop"], p["requests"], p["errors"]) for k, p in by.items()} == {
        "sp": ("closed", 4, 0),
        "mt": ("closed", 4, 0),
        "tr": ("open", 4, 0),
    }
    assert all(p["prefix_cache"]["hit_rate"] is None and "not measured" in p["prefix_cache"]["note"]
               for p in s["points"])  # fmt: skip


def test_prefix_cache_hit_rate_from_engine_counters():
    recs = [{"t_send": 100.0, "t_end": 110.0}]
    rows = []
    for src, hits, queries in (("w0", (50, 80, 200), (100, 200, 400)), ("w1", (0, 0, 10), (0, 20, 40))):
        for t, h, q in zip((99.0, 105.0, 111.0), hits, queries, strict=True):
            rows += [(t, src, "vllm:prefix_cache_hits_total", "{}", float(h)),
                     (t, src, "vllm:prefix_cache_queries_total", "{}", float(q))]  # fmt: skip
    m = pd.DataFrame(rows, columns=["time", "source", "metric", "labels", "value"])
    pc = prefix_cache_of(m, recs)
    # increase up to the last sample at or before the end (105 s): w0 30/100, w1 0/20
    assert pc["hits"] == 30 and pc["queries"] == 120 and pc["hit_rate"] == pytest.approx(0.25)
    other = pd.DataFrame([(100.0, "w0", "vllm:num_requests_running", "{}", 1.0)], columns=m.columns)
    assert prefix_cache_of(other, recs)["hit_rate"] is None
    note = prefix_cache_of(other, recs)["note"]
    assert "vllm:prefix_cache_*" in note and "router_kv_selected_cached_prefix_tokens" in note, note
    assert pc["source"].startswith("engine counters")


def test_prefix_cache_hit_rate_from_dynamos_kv_router_when_engines_export_none():
    """Dynamo's mocker exports no vllm:prefix_cache_* counter: the frontend's KV router says how many input tokens
    of the requests it routed it found cached on the chosen worker (labelled as the router's, not the engine's).
    Under P/D only the prefill phase counts: the decode phase routes the same tokens again and caches none
    (as measured on the twin's P/D mocker: prefill 2,048 of 4,352 tokens, decode 0 of 4,352)."""
    recs = [{"t_send": 100.0, "t_end": 110.0}]
    rows = []
    for phase, series in (("prefill", ((99.0, 0, 0), (104.0, 512, 2176), (109.0, 2048, 4352), (120.0, 9e3, 9e3))),
                          ("decode", ((99.0, 0, 0), (109.0, 0, 4352)))):  # fmt: skip
        lab = json.dumps({"model": "r1", "phase": phase, "worker_id": "w"}, sort_keys=True)
        for t, cached, inp in series:
            rows += [(t, "head/dynamo-frontend", "dynamo_component_router_kv_selected_cached_prefix_tokens_total",
                      lab, float(cached)),
                     (t, "head/dynamo-frontend", "dynamo_component_router_input_sequence_tokens_sum", lab,
                      float(inp))]  # fmt: skip
    m = pd.DataFrame(rows, columns=["time", "source", "metric", "labels", "value"])
    pc = prefix_cache_of(m, recs)
    assert (pc["hits"], pc["queries"]) == (2048, 4352) and "KV router" in pc["source"], pc
    # an engine's own counters win where both are scraped
    eng = pd.DataFrame([(99.0, "w", "vllm:prefix_cache_hits_total", "{}", 0.0),
                        (109.0, "w", "vllm:prefix_cache_hits_total", "{}", 10.0),
                        (99.0, "w", "vllm:prefix_cache_queries_total", "{}", 0.0),
                        (109.0, "w", "vllm:prefix_cache_queries_total", "{}", 40.0)], columns=m.columns)  # fmt: skip
    both = prefix_cache_of(pd.concat([m, eng]), recs)
    assert both["hit_rate"] == pytest.approx(0.25) and both["source"].startswith("engine counters")


def test_trace_skips_requests_over_max_total_tokens_and_says_so(tmp_path, capsys):
    rows = [{"timestamp": 10 * i, "input_length": 10 + 40 * i, "output_length": 5, "hash_ids": [1, 2, 3, 4]}
            for i in range(4)]  # fmt: skip
    tr = read_trace(_trace(tmp_path / "t.jsonl", rows), block_size=64, max_total_tokens=100)
    assert [r.input_length for r in tr] == [10, 50, 90] and "skipped 1 requests" in capsys.readouterr().out
    assert [len(r.hash_ids) for r in tr] == [1, 1, 2]
    with pytest.raises(WorkloadError, match="no requests"):
        read_trace(tmp_path / "t.jsonl", block_size=64, max_total_tokens=10)


def test_the_params_trace_is_a_valid_mooncake_trace():
    from pathlib import Path

    f = Path(__file__).resolve().parent.parent / "params" / "traces" / "mooncake-conversation-60s.jsonl"
    rows = read_trace(f, block_size=512)
    assert len(rows) == 162 and rows[-1].timestamp_ms < 60_000
    assert all(len(r.hash_ids) == -(-r.input_length // 512) for r in rows)
    assert len(read_trace(f, block_size=512, max_total_tokens=8192)) < len(rows)


def test_prefix_cache_lines_say_loop_and_rate_or_why_not():
    pts = [{"scenario": "sp", "point": "c2", "loop": "closed", "prefix_cache": {"hit_rate": 0.25, "hits": 30,
            "queries": 120}}, {"scenario": "tr", "point": "trace4", "loop": "open",
            "prefix_cache": {"hit_rate": None, "note": "no engine metrics in this run"}}]  # fmt: skip
    assert prefix_cache_lines({"points": pts}) == [
        "sp c2 (closed-loop): prefix-cache hit rate 25.0% (30 of 120 tokens, engine counters)",
        "tr trace4 (open-loop): no engine metrics in this run",
    ]
