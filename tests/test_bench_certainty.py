"""Never silently wrong: wrong-shaped events and a garbage server cost one request each, never a point; a client
starved on purpose (its worker SIGSTOPped for 200 ms mid-stream) is flagged client-limited and reports no TPOT
faster than the server produced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from r1lab.bench import gtserver
from r1lab.bench.client import completion_body
from r1lab.bench.loadgen import run_point
from r1lab.bench.metrics import request_latencies, summarize_point
from r1lab.bench.records import build_record
from r1lab.bench.scenarios import client_stats
from r1lab.bench.shapes import Shape
from r1lab.bench.sse import parse_response

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def ev(obj: object) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


TOK = ev({"choices": [{"index": 0, "text": "a"}]})
DONE = ev(b"[DONE]")

WRONG_SHAPES = [
    {"choices": 5},
    {"choices": [{"text": 5}]},
    {"choices": [{"delta": "x"}]},
    {"choices": [{"text": "a"}], "usage": {"completion_tokens": "many"}},
    {"choices": [5]},
    {"choices": [{"text": "a"}], "usage": 7},
    {"choices": [{"delta": {"content": ["x"]}}]},
    {"choices": [{"text": "a", "finish_reason": 3}]},
    {"choices": [], "usage": {"prompt_tokens": -1}},
]


@pytest.mark.parametrize("obj", WRONG_SHAPES, ids=[json.dumps(o)[:40] for o in WRONG_SHAPES])
def test_wrong_shaped_json_is_an_error_of_that_request(obj):
    s = parse_response(
        [(0.0, HEAD), (0.1, chunk(TOK)), (0.2, chunk(ev(obj))), (0.3, chunk(TOK) + chunk(DONE) + END)]
    )
    assert s.error == "bad_shape", (s.error, s.error_detail)
    assert s.chunk_t == [0.1, 0.3]  # parsing went on past the bad event


def test_coalesced_reads_are_marked_with_a_bound():
    # chunks 1-3 came in one read (a client that read 200 ms late): 1 and 2 are late-biased, 3 ended the read
    reads = [
        (0.0, HEAD),
        (0.05, chunk(TOK)),
        (0.3, chunk(TOK) * 3),
        (0.32, chunk(TOK)),
        (0.33, chunk(DONE) + END),
    ]
    s = parse_response(reads)
    assert s.error is None and s.chunk_t == [0.05, 0.3, 0.3, 0.3, 0.32]
    assert s.uncertain == [1, 2] and s.uncert_s[1] == pytest.approx(0.25)
    rec = build_record(_raw(reads, t_send=-0.01), scenario="s", point="p", worker=0, concurrency=1, rate=None,
                       offset=0.0)  # fmt: skip
    assert rec["stamp_uncertain"] == [1, 2] and rec["stamp_uncert_s"] == pytest.approx(0.25)
    lat = request_latencies(rec)
    # gaps 0->1, 1->2, 2->3 touch an uncertain chunk; 3->4 is between two exact stamps
    assert lat["itl"] == [pytest.approx(0.02)] and lat["ttft"] == pytest.approx(0.06)
    # the first chunk coalesced with the second: TTFT and TPOT (which it would make too fast) are left out
    reads = [(0.0, HEAD), (0.25, chunk(TOK) * 2), (0.27, chunk(TOK)), (0.28, chunk(DONE) + END)]
    rec = build_record(_raw(reads, t_send=0.0), scenario="s", point="p", worker=0, concurrency=1, rate=None,
                       offset=0.0)  # fmt: skip
    lat = request_latencies(rec)
    assert rec["stamp_uncertain"] == [0] and lat["ttft"] is None and lat["tpot"] is None
    # a role chunk written with the first token, and usage + [DONE] written with the last, are not coalescing
    role = ev({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    c = ev({"choices": [{"index": 0, "delta": {"content": "x"}}]})
    usage = ev({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    s = parse_response(
        [(0.0, HEAD), (0.1, chunk(role) + chunk(c)), (0.2, chunk(c) + chunk(usage) + chunk(DONE) + END)]
    )
    assert s.error is None and s.uncertain == [] and s.chunk_tokens == [0, 1, 1]


def _raw(reads, t_send):
    from r1lab.bench.client import Raw

    return Raw("r", t_send=t_send, t_end=reads[-1][0], reads=reads)


# --- a garbage server: every way a response can be wrong, one per request -------------------------------------

GOOD = HEAD + chunk(TOK) + chunk(TOK) + chunk(DONE) + END
MODES = {
    "good": GOOD,
    "malformed": HEAD + chunk(TOK) + chunk(b"data: {not json\n\n") + chunk(DONE) + END,
    "truncated": HEAD + chunk(TOK) + b'40\r\ndata: {"choi',
    "choices5": HEAD + chunk(ev({"choices": 5})) + chunk(TOK) + chunk(DONE) + END,
    "text5": HEAD + chunk(ev({"choices": [{"text": 5}]})) + chunk(DONE) + END,
    "delta_x": HEAD + chunk(ev({"choices": [{"delta": "x"}]})) + chunk(DONE) + END,
    "many": HEAD
    + chunk(ev({"choices": [{"text": "a"}], "usage": {"completion_tokens": "many"}}))
    + chunk(DONE)
    + END,
    "stalled": b"",
    "http500": b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
    b'{"error":"x"}',
    "huge_line": HEAD + chunk(ev({"choices": [{"text": "x" * 2_000_000}]})) + chunk(DONE) + END,
    "huge_head": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 100_000 + b"\r\n\r\n",
    "not_http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n" + b"\x00\xff" * 100,
    "bad_chunk_size": HEAD + b"zz\r\n" + TOK,
}
EXPECT = {"good": None, "malformed": "bad_json", "truncated": "disconnect", "choices5": "bad_shape",
          "text5": "bad_shape", "delta_x": "bad_shape", "many": "bad_shape", "stalled": "timeout",
          "http500": "http_500", "huge_line": None, "huge_head": "bad_http", "not_http": "bad_http",
          "bad_chunk_size": "bad_http"}  # fmt: skip


class GarbageServer:
    """One mode per request (by the request id's index), then the connection is closed."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        try:
            while True:  # keep-alive, like a real server, until a mode breaks the connection
                head = await reader.readuntil(b"\r\n\r\n")
                hs = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
                hs = {k.strip().lower(): v.strip() for k, v in hs.items()}
                await reader.readexactly(int(hs[b"content-length"]))
                k = int(hs[b"x-request-id"].rsplit(b"-", 1)[1])
                mode = list(MODES)[k % len(MODES)]
                data = MODES[mode]
                if not data:  # stalled: say nothing until the client gives up
                    await reader.read()
                    break
                for i in range(0, len(data), 65536):
                    writer.write(data[i : i + 65536])
                    await writer.drain()
                if EXPECT[mode] not in (None, "bad_json", "bad_shape", "http_500"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_garbage_server_never_crashes_a_point(tmp_path):
    srv = GarbageServer()
    try:
        n = 2 * len(MODES)
        bodies = [(completion_body("m", "completions", "p", 4), 1)]
        res = run_point(srv.url, bodies, Shape("concurrency", concurrency=4, requests=n), scenario="g",
                        out=tmp_path / "requests.jsonl", workers=1, timeout_s=1.5)  # fmt: skip
    finally:
        srv.close()
    assert len(res.records) == n
    names = list(MODES)
    for r in res.records:
        mode = names[int(r["request_id"].rsplit("-", 1)[1]) % len(MODES)]
        assert r["error"] == EXPECT[mode], (mode, r["error"], r["error_detail"])
    s = summarize_point(res.records)
    assert s["requests"] == n and s["errors"] == n - 4  # good and huge_line, twice each


# --- a starved client ------------------------------------------------------------------------------------------


def _children(name: str) -> list[int]:
    me = os.getpid()
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me and name.encode() in cmd:
            out.append(int(p.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_starved_client_is_flagged_and_reports_no_impossible_tpot(tmp_path):
    bodies = [(completion_body("gt", "completions", f"p{i}", 6 + (i * 7) % 30), 2) for i in range(64)]
    shape = Shape("concurrency", concurrency=32, duration_s=3.0)
    out = tmp_path / "load" / "s" / "requests.jsonl"
    got: dict = {}
    with gtserver.running(ttft_ms=50, itl_ms=20, log=tmp_path / "truth") as url:
        th = threading.Thread(target=lambda: got.setdefault("res", run_point(
            url, bodies, shape, scenario="s", out=out, workers=1, timeout_s=30)))  # fmt: skip
        th.start()
        deadline = time.monotonic() + 20
        while not (pids := _children("r1lab.bench.workers")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pids, "no load worker appeared"
        while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 20):
            time.sleep(0.01)  # streams are flowing once requests complete
        os.kill(pids[0], signal.SIGSTOP)
        time.sleep(0.2)
        os.kill(pids[0], signal.SIGCONT)
        th.join(60)
    res = got["res"]
    recs = [r for r in res.records if r["error"] is None]
    assert len(recs) > 50
    # the stall left its mark on the requests: chunks delivered together, with a bound near the stall
    marked = [r for r in recs if r["stamp_uncertain"]]
    assert marked and max(r["stamp_uncert_s"] for r in marked) > 0.1
    # what the server really did per request: its own TPOT over the chunks it handed to the kernel
    truth = gtserver.read_truth(tmp_path / "truth")
    server_tpot = {rid: (t["sent"][-1] - t["sent"][0]) / (len(t["sent"]) - 1)
                   for rid, t in truth.items() if rid != "__server__" and len(t.get("sent", [])) > 1}  # fmt: skip
    slack = 0.0005  # loopback delivery of the first chunk, spread over the request's tokens
    # without the guard the stall makes some TPOTs faster than the server produced (the test has teeth) ...
    naive = [((r["chunk_t"][-1] - r["t_first"]) / (r["output_tokens"] - 1), r["request_id"]) for r in recs
             if r["output_tokens"] > 1]  # fmt: skip
    # (by more than 4x the slack below: a 200 ms stall shifts a first stamp by far more over <= 36 tokens)
    gain = max(server_tpot[rid] - v for v, rid in naive)
    assert gain > 4 * slack, f"the stall shifted no first stamp: best naive TPOT gain {gain * 1e3:.2f} ms"
    # ... with it, none is reported, and the point says it is client-limited, why, and what to do
    reported = [(request_latencies(r)["tpot"], r["request_id"]) for r in recs]
    reported = [(v, rid) for v, rid in reported if v is not None]
    assert len(reported) > len(recs) / 2
    bad = [(v, server_tpot[rid]) for v, rid in reported if v < server_tpot[rid] - slack]
    assert not bad, bad
    s = summarize_point(res.records, client=client_stats(tmp_path)[("s", "c32")])
    assert s["client_limited"] and "load.run_on: pod" in s["client_fix"], s["client_limited_why"]
    assert s["ttft_uncertain_requests"] > 0 and s["itl_gaps_uncertain"] > 0
