"""SSE and HTTP framing edge cases: every malformed or cut stream becomes a recorded error, never a crash."""

from __future__ import annotations

import json

import pytest

from r1lab.bench.sse import Framer, FramingError, dechunk, iter_events, parse_response

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def ev(obj: object) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


def tok(text: str, usage: dict | None = None) -> bytes:
    o: dict = {"object": "text_completion", "choices": [{"index": 0, "text": text, "finish_reason": None}]}
    if usage:
        o["usage"] = usage
    return ev(o)


USAGE = ev({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}})
DONE = b"data: [DONE]\n\n"


def test_well_formed_stream_with_usage_chunk():
    reads = [(1.0, HEAD), (1.1, chunk(tok("a"))), (1.2, chunk(tok("b"))), (1.3, chunk(tok("c"))),
             (1.31, chunk(USAGE) + chunk(DONE) + END)]  # fmt: skip
    s = parse_response(reads)
    assert s.error is None and s.done
    assert s.chunk_t == [1.1, 1.2, 1.3]  # the usage chunk (choices == []) is not a token chunk
    assert s.chunk_tokens == [1, 1, 1]
    assert (s.prompt_tokens, s.completion_tokens) == (7, 3)


def test_event_split_across_reads_and_chunks_takes_the_time_of_its_last_byte():
    body = tok("hello")
    c = chunk(body)
    # head and the first half of the chunk in one read, the rest (and the end) later; the size line itself split
    reads = [(1.0, HEAD + c[:1]), (1.5, c[1:10]), (2.0, c[10:]), (2.5, chunk(DONE) + END)]
    s = parse_response(reads)
    assert s.error is None
    assert s.chunk_t == [2.0]
    # an event split over two HTTP chunks
    reads = [(1.0, HEAD), (1.2, chunk(body[:7])), (1.4, chunk(body[7:])), (1.5, chunk(DONE) + END)]
    assert parse_response(reads).chunk_t == [1.4]


def test_empty_first_chat_chunk_counts_for_ttft_like_vllm_bench():
    role = ev({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    c1 = ev({"choices": [{"index": 0, "delta": {"content": "Hi"}}]})
    s = parse_response([(0.0, HEAD), (0.5, chunk(role)), (0.6, chunk(c1)), (0.7, chunk(DONE) + END)])
    assert s.chunk_t == [0.5, 0.6]
    assert s.chunk_tokens == [0, 1]


def test_reasoning_deltas_are_tokens():
    r1 = ev({"choices": [{"index": 0, "delta": {"reasoning": "think"}}]})
    r2 = ev({"choices": [{"index": 0, "delta": {"reasoning_content": "more"}}]})
    c = ev({"choices": [{"index": 0, "delta": {"content": "answer"}, "finish_reason": "length"}]})
    s = parse_response(
        [(0.0, HEAD), (0.1, chunk(r1)), (0.2, chunk(r2)), (0.3, chunk(c)), (0.4, chunk(DONE) + END)]
    )
    assert s.error is None and s.chunk_tokens == [1, 1, 1]
    assert s.reasoning_chars == len("think") + len("more") and s.text_chars == len("answer")
    assert s.finish_reason == "length"


def test_continuous_usage_gives_tokens_per_chunk():
    reads = [(0.0, HEAD), (0.1, chunk(tok("ab", {"completion_tokens": 1}))),
             (0.2, chunk(tok("cde", {"completion_tokens": 4}))), (0.3, chunk(DONE) + END)]  # fmt: skip
    s = parse_response(reads)
    assert s.chunk_tokens == [1, 3] and s.completion_tokens == 4


def test_error_event_mid_stream_is_recorded_and_keeps_earlier_chunks():
    err = ev({"error": {"message": "engine died", "type": "InternalServerError", "code": 500}})
    s = parse_response([(0.0, HEAD), (0.1, chunk(tok("a"))), (0.2, chunk(err) + chunk(DONE) + END)])
    assert s.error == "stream_error" and "engine died" in s.error_detail
    assert s.chunk_t == [0.1]


def test_non_json_line_is_an_error_not_a_crash():
    s = parse_response(
        [(0.0, HEAD), (0.1, chunk(b"data: {not json\n\n")), (0.2, chunk(tok("a")) + chunk(DONE) + END)]
    )
    assert s.error == "bad_json"
    assert s.chunk_t == [0.2]  # parsing went on


def test_missing_done_and_no_output():
    assert parse_response([(0.0, HEAD), (0.1, chunk(tok("a")) + END)]).error == "incomplete"
    assert parse_response([(0.0, HEAD), (0.1, chunk(DONE) + END)]).error == "no_output"


def test_http_error_status_and_wrong_content_type():
    body = b'{"error":{"message":"too long"}}'
    resp = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(
        body
    )
    s = parse_response([(0.0, resp + body)])
    assert s.error == "http_400" and "too long" in s.error_detail
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    assert parse_response([(0.0, resp)]).error == "not_a_stream"


def test_garbage_is_a_framing_error():
    assert parse_response([(0.0, b"SSH-2.0-OpenSSH\r\n\r\n")]).error == "bad_http"
    f = Framer()
    with pytest.raises(FramingError):
        f.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


def test_crlf_line_endings_comments_and_multiline_data():
    body = (
        b': keep-alive\r\n\r\ndata: {"choices":[{"text":"x"}]}\r\n\r\nevent: message\r\ndata: [DONE]\r\n\r\n'
    )
    s = parse_response([(0.0, HEAD), (0.3, chunk(body) + END)])
    assert s.error is None and s.done and s.chunk_t == [0.3]
    assert iter_events(b'data: {"a":\ndata: 1}\n\n') == [(22, "message", b'{"a":\n1}')]


def test_content_length_and_close_delimited_bodies():
    body = tok("a") + DONE
    h = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n" % len(body)
    f = Framer()
    assert not f.feed(h + body[:5]) and f.feed(body[5:])
    assert parse_response([(0.0, h + body[:5]), (0.2, body[5:])]).chunk_t == [0.2]
    h2 = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    f = Framer()
    assert not f.feed(h2 + body) and f.until_close and not f.keep_alive
    assert parse_response([(0.0, h2 + body)]).error is None


def test_framer_byte_by_byte_matches_dechunk():
    raw = HEAD + chunk(tok("a")) + chunk(b"x" * 300) + chunk(DONE) + b"0\r\nX-Trailer: 1\r\n\r\n"
    f = Framer()
    done = [f.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert done[-1] and not any(done[:-1])
    b = dechunk([(float(i), raw[i : i + 1]) for i in range(len(raw))])
    assert b.complete and b.data == tok("a") + b"x" * 300 + DONE


def test_framer_at_every_split_point():
    raw = HEAD + chunk(tok("a")) + chunk(tok("bb")) + chunk(DONE) + END
    for cut in range(1, len(raw)):
        for cut2 in (cut + 1, cut + 7, len(raw)):
            f = Framer()
            parts = [raw[:cut], raw[cut:cut2], raw[cut2:]]
            done = [f.feed(p) for p in parts if p]
            assert done[-1] and not any(done[:-1]), (cut, cut2)
