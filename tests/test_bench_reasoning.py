"""Reasoning-aware records: time to first (any) token, time to first answer token (TTFO), reasoning and answer
tokens per request, for every stream shape vLLM (`--reasoning-parser deepseek_r1`) and Dynamo's frontend send,
and end to end through the generator against a server with a reasoning phase."""

from __future__ import annotations

import json

import pytest

from r1lab.bench import gtserver
from r1lab.bench.client import Raw, completion_body
from r1lab.bench.loadgen import run_point
from r1lab.bench.metrics import summarize_point
from r1lab.bench.records import build_record
from r1lab.bench.shapes import Shape

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def ev(obj: object) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def delta(**d) -> bytes:
    return ev(
        {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
    )


FINISH = ev({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
USAGE = ev({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 5,
                                     "completion_tokens_details": {"reasoning_tokens": 3}}})  # fmt: skip
DONE = ev(b"[DONE]")

SHAPES = {
    # vLLM >= 0.10 with --reasoning-parser deepseek_r1: `reasoning`, content absent until the answer
    "vllm-reasoning": [delta(role="assistant", content=""), delta(reasoning="Let"), delta(reasoning=" me"),
                       delta(reasoning=" see"), delta(content="4"), delta(content=".")],
    # older vLLM and Dynamo's frontend: `reasoning_content`, content null
    "reasoning_content": [delta(role="assistant", content=None, reasoning_content=""),
                          delta(content=None, reasoning_content="Let"), delta(content=None, reasoning_content=" me"),
                          delta(content=None, reasoning_content=" see"), delta(content="4", reasoning_content=None),
                          delta(content=".", reasoning_content=None)],
    # the chunk where </think> falls carries the end of the reasoning and the start of the answer
    "transition": [delta(role="assistant"), delta(reasoning_content="Let"), delta(reasoning_content=" me"),
                   delta(reasoning_content=" see"), delta(reasoning_content="", content="4"), delta(content=".")],
    # no reasoning parser on the server (vLLM without --reasoning-parser): R1's template opened <think> in the
    # prompt, so the reasoning streams as content and </think> closes it
    "inline-chat": [delta(role="assistant", content=""), delta(content="Let"), delta(content=" me"),
                    delta(content=" see</think>"), delta(content="4"), delta(content=".")],
}  # fmt: skip
SOURCE = {
    "vllm-reasoning": "server",
    "reasoning_content": "server",
    "transition": "server",
    "inline-chat": "inline",
}


@pytest.mark.parametrize("name", SHAPES)
def test_reasoning_shapes(name):
    evs = SHAPES[name]
    reads = [(0.0, HEAD)] + [(0.1 * (i + 1), chunk(e)) for i, e in enumerate(evs)]
    reads.append((0.1 * len(evs) + 0.01, chunk(FINISH) + chunk(USAGE) + chunk(DONE) + END))
    rec = build_record(Raw("r", t_send=0.0, t_end=1.0, reads=reads), scenario="s", point="p", worker=0,
                       concurrency=1, rate=None, offset=0.0)  # fmt: skip
    assert rec["error"] is None, rec["error_detail"]
    assert rec["t_first"] == pytest.approx(0.1)  # the role chunk, as vllm bench counts TTFT
    assert rec["t_first_token"] == pytest.approx(0.2)  # the first reasoning token
    assert rec["t_first_answer"] == pytest.approx(0.5)  # TTFO: the first answer token
    assert (rec["reasoning_tokens"], rec["answer_tokens"]) == (3, 2)
    assert rec["reasoning_source"] == SOURCE[name]
    s = summarize_point([rec])
    assert s["ttfo_ms"]["p50"] == pytest.approx(500) and s["ttft_token_ms"]["p50"] == pytest.approx(200)
    assert (
        s["reasoning_tokens"]["mean"] == 3
        and s["answer_tokens"]["mean"] == 2
        and s["reasoning_requests"] == 1
    )


def test_completions_without_reasoning_have_ttfo_equal_to_first_token():
    tok = ev({"choices": [{"index": 0, "text": "a"}]})
    reads = [(0.0, HEAD), (0.1, chunk(tok)), (0.2, chunk(tok)), (0.3, chunk(DONE) + END)]
    rec = build_record(Raw("r", t_send=0.0, t_end=0.3, reads=reads), scenario="s", point="p", worker=0,
                       concurrency=1, rate=None, offset=0.0)  # fmt: skip
    assert rec["t_first_answer"] == rec["t_first_token"] == pytest.approx(0.1)
    assert (rec["reasoning_tokens"], rec["answer_tokens"]) == (0, 2)


def test_inline_think_tags_of_dynamos_mocker():
    """Dynamo's mocker with --reasoning (completions): `<think>` first, reasoning tokens, `</think>`, then the
    answer, all in `text` (the frontend splits nothing without a parser registered by the worker)."""
    texts = ["<think>", "For", "goud", "</think>", " thut", "aij"]
    evs = [ev({"choices": [{"index": 0, "text": t}]}) for t in texts]
    reads = (
        [(0.0, HEAD)] + [(0.1 * (i + 1), chunk(e)) for i, e in enumerate(evs)] + [(0.7, chunk(DONE) + END)]
    )
    rec = build_record(Raw("r", t_send=0.0, t_end=0.7, reads=reads), scenario="s", point="p", worker=0,
                       concurrency=1, rate=None, offset=0.0)  # fmt: skip
    assert rec["t_first_token"] == pytest.approx(0.1) and rec["t_first_answer"] == pytest.approx(0.5)
    assert (rec["reasoning_tokens"], rec["answer_tokens"], rec["reasoning_source"]) == (4, 2, "inline")
    # a text that never closes a reasoning phase stays all answer
    plain = [(0.0, HEAD), (0.1, chunk(ev({"choices": [{"index": 0, "text": "<think> is a tag"}]}))),
             (0.2, chunk(DONE) + END)]  # fmt: skip
    rec = build_record(Raw("r", t_send=0.0, t_end=0.2, reads=plain), scenario="s", point="p", worker=0,
                       concurrency=1, rate=None, offset=0.0)  # fmt: skip
    assert (rec["reasoning_tokens"], rec["answer_tokens"], rec["reasoning_source"]) == (0, 1, None)


def test_reasoning_phase_end_to_end(tmp_path):
    """The truth server in reasoning mode (chat, the first half of the tokens as delta.reasoning): TTFO is the
    TTFT plus the reasoning tokens' time, measured through the real client and workers."""
    n, itl = 20, 0.01
    bodies = [(completion_body("gt", "chat", f"q{i}", n), 2) for i in range(8)]
    with gtserver.running(ttft_ms=30, itl_ms=itl * 1e3, log=tmp_path / "t", extra=["--reasoning"]) as url:
        res = run_point(url, bodies, Shape("concurrency", concurrency=4, requests=12), scenario="r",
                        out=tmp_path / "requests.jsonl", api="chat", workers=1, timeout_s=30)  # fmt: skip
    recs = res.records
    assert all(r["error"] is None for r in recs)
    assert all((r["reasoning_tokens"], r["answer_tokens"]) == (n // 2, n - n // 2) for r in recs)
    s = summarize_point(recs)
    # the answer starts n/2 tokens after the first one
    assert s["ttfo_ms"]["p50"] - s["ttft_token_ms"]["p50"] == pytest.approx(n // 2 * itl * 1e3, abs=5)


def test_a_conversation_carries_the_answer_without_the_inline_reasoning():
    from r1lab.bench.sse import answer_text

    texts = ["<think>", "hmm", "</think>", " four", "."]
    body = b"".join(chunk(ev({"choices": [{"index": 0, "text": t}]})) for t in texts) + chunk(DONE) + END
    assert answer_text([(0.0, HEAD), (0.1, body)]) == " four."
    plain = chunk(ev({"choices": [{"index": 0, "text": "four"}]})) + chunk(DONE) + END
    assert answer_text([(0.0, HEAD), (0.1, plain)]) == "four"
