"""A ground-truth OpenAI streaming server: emits tokens at scheduled times and logs what it actually sent.

It answers `/v1/completions` and `/v1/chat/completions` (stream only) with the first token `ttft_ms` after the
request arrived and one token every `itl_ms` after that, `max_tokens` tokens in all, then a usage chunk and
`data: [DONE]`. For every request it logs (CLOCK_MONOTONIC seconds, shared with the client processes) when the
request was complete, when each chunk was handed to the kernel, and whether any write had to queue in user space.
The log is written on SIGTERM/SIGINT. Several processes can share the port (SO_REUSEPORT).
Used by benchmarks/loadgen_capacity.py and the tests; `python -m r1lab.bench.gtserver --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

perf_counter = time.perf_counter
HEAD_OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class _Req:
    __slots__ = ("rid", "t_recv", "sent", "queued", "n", "left", "api", "usage", "prompt_tokens", "fail_at",
                 "reasoning", "prefix")  # fmt: skip

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.queued = 0


class GtProtocol(asyncio.Protocol):
    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.req: _Req | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.req is not None:
            self.srv.finish(self.req, aborted=True)
            self.req = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].decode("latin-1")
            lines = head.split("\r\n")
            method, path = (lines[0].split(" ") + ["", ""])[:2]
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length", "0"))
            if len(self.buf) < i + 4 + n:
                return
            body = self.buf[i + 4 : i + 4 + n]
            self.buf = self.buf[i + 4 + n :]
            self.handle(method, path, headers, body)

    def _reply(self, status: str, obj: Any) -> None:
        payload = json.dumps(obj).encode()
        self.transport.write(  # type: ignore[union-attr]
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        t_recv = perf_counter()
        if method == "GET" and path in ("/health", "/v1/health"):
            return self._reply("200 OK", {"status": "ok"})
        if method == "GET" and path == "/v1/models":
            return self._reply(
                "200 OK", {"object": "list", "data": [{"id": self.srv.model, "object": "model"}]}
            )
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return self._reply("404 Not Found", {"error": {"message": f"no route {method} {path}"}})
        try:
            req = json.loads(body)
        except ValueError:
            return self._reply("400 Bad Request", {"error": {"message": "body is not JSON"}})
        if not req.get("stream"):
            return self._reply("400 Bad Request", {"error": {"message": "this server only streams"}})
        r = _Req()
        r.rid = headers.get("x-request-id") or f"gt-{self.srv.seq}"
        self.srv.seq += 1
        r.t_recv = t_recv
        r.n = int(req.get("max_tokens") or 16)
        r.left = r.n
        r.api = "chat" if path.endswith("chat/completions") else "completions"
        r.usage = bool((req.get("stream_options") or {}).get("include_usage"))
        prompt = req.get("prompt") if r.api == "completions" else json.dumps(req.get("messages"))
        r.prompt_tokens = len(str(prompt).split())
        r.fail_at = r.n // 2 if self.srv.fail_every and self.srv.seq % self.srv.fail_every == 0 else -1
        r.reasoning = self.srv.reasoning
        r.prefix = (
            b'data: {"id":"%s","object":"text_completion","model":"%s","choices":[{"index":0,"text":" t'
            % (
                r.rid.encode(),
                self.srv.model.encode(),
            )
        )
        self.req = r
        self.transport.write(HEAD_OK)  # type: ignore[union-attr]
        self.srv.at(t_recv + self.srv.ttft, self)

    def _token(self, r: _Req, i: int) -> bytes:
        if r.api == "completions":  # the hot case: no JSON encoder per chunk
            return r.prefix + b'%d","finish_reason":null}]}\n\n' % i
        key = "reasoning" if (r.reasoning and i < r.n // 2) else "content"
        delta: dict[str, Any] = {key: f" t{i}"}
        if i == 0:
            delta["role"] = "assistant"
        obj = {
            "id": r.rid,
            "object": "chat.completion.chunk",
            "model": self.srv.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def tick(self, when: float) -> None:
        r, tr = self.req, self.transport
        if r is None or tr is None:
            return
        i = r.n - r.left
        if i == r.fail_at:
            payload = (
                _chunk(
                    b'data: {"error":{"message":"injected failure","type":"InternalServerError",'
                    b'"code":500}}\n\n'
                )
                + _chunk(b"data: [DONE]\n\n")
                + b"0\r\n\r\n"
            )
            r.left = 0
        else:
            payload = _chunk(self._token(r, i))
            r.left -= 1
            if r.left == 0:
                if r.usage:
                    usage = {
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.n,
                        "total_tokens": r.prompt_tokens + r.n,
                    }
                    payload += _chunk(
                        b"data: "
                        + json.dumps({"id": r.rid, "choices": [], "usage": usage}).encode()
                        + b"\n\n"
                    )
                payload += _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        t = perf_counter()
        tr.write(payload)
        r.sent.append(t)
        if tr.get_write_buffer_size():
            r.queued += 1
        if r.left == 0:
            self.srv.finish(r)
            self.req = None
            return
        self.srv.at(when + self.srv.itl, self)


class Server:
    """The per-process server state: timing, the log, counters."""

    def __init__(self, ttft_ms: float, itl_ms: float, model: str, fail_every: int, reasoning: bool) -> None:
        self.ttft, self.itl = ttft_ms / 1000.0, itl_ms / 1000.0
        self.model, self.fail_every, self.reasoning = model, fail_every, reasoning
        self.seq = 0
        self.log: list[dict[str, Any]] = []
        self.loop = asyncio.get_event_loop()
        self.wheel: dict[int, list[tuple[float, GtProtocol]]] = {}  # ms slot -> (due time, stream)
        self.k = 0  # the slot the pending turn is for
        self.handle: asyncio.TimerHandle | None = None
        self.turning = False

    def at(self, when: float, proto: GtProtocol) -> None:
        """Run proto.tick(when) in the first 1 ms slot at or after `when`: one timer for all streams instead of
        one per chunk. Nominal times stay exact (no drift builds up) and the log keeps the real send times."""
        key = int(when * 1000.0) + 1
        slot = self.wheel.get(key)
        if slot is None:
            self.wheel[key] = [(when, proto)]
        else:
            slot.append((when, proto))
        if not self.turning and (self.handle is None or key < self.k):
            self._arm(key)

    def _arm(self, key: int) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.k = key
        self.handle = self.loop.call_later(max(0.0, key / 1000.0 - perf_counter()), self._turn)

    def _turn(self) -> None:
        self.handle = None
        self.turning = True
        try:
            now = int(perf_counter() * 1000.0)
            wheel = self.wheel
            for key in sorted(k for k in wheel if k <= now):
                for when, proto in wheel.pop(key):
                    proto.tick(when)
        finally:
            self.turning = False
        if self.wheel:
            self._arm(min(self.wheel))

    def finish(self, r: _Req, aborted: bool = False) -> None:
        self.log.append(
            {
                "id": r.rid,
                "t_recv": r.t_recv,
                "sent": r.sent,
                "queued": r.queued,
                "aborted": aborted,
                "n": r.n,
            }
        )


def _serve(sock: socket.socket, args: argparse.Namespace, log_path: str | None) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = Server(args.ttft_ms, args.itl_ms, args.model, args.fail_every, args.reasoning)
    server = loop.run_until_complete(loop.create_server(lambda: GtProtocol(srv), sock=sock, backlog=8192))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    server.close()
    if log_path:
        with open(log_path, "w") as f:
            f.write(
                json.dumps({"id": "__server__", "cpu_s": time.process_time(), "requests": len(srv.log)})
                + "\n"
            )
            for entry in srv.log:
                f.write(json.dumps(entry) + "\n")


def _listen(port: int, host: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(8192)
    s.setblocking(False)
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m r1lab.bench.gtserver", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ttft-ms", type=float, default=50.0)
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--model", default="gt")
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument(
        "--fail-every", type=int, default=0, help="every Nth request errors mid-stream (0: never)"
    )
    ap.add_argument("--reasoning", action="store_true", help="chat: first half of tokens as delta.reasoning")
    ap.add_argument("--log", default=None, help="JSON-lines truth log (one file per process: LOG.<i>)")
    args = ap.parse_args(argv)
    first = _listen(args.port, args.host)
    port = first.getsockname()[1]
    children = []
    for i in range(1, args.procs):
        pid = os.fork()
        if pid == 0:
            first.close()
            _serve(_listen(port, args.host), args, f"{args.log}.{i}" if args.log else None)
            os._exit(0)
        children.append(pid)
    print(f"LISTENING {port}", flush=True)

    def forward(sig: int, _frame: Any) -> None:
        for pid in children:
            os.kill(pid, sig)

    signal.signal(signal.SIGTERM, forward)
    _serve(first, args, f"{args.log}.0" if args.log else None)
    forward(signal.SIGTERM, None)
    for pid in children:
        os.waitpid(pid, 0)
    return 0


def read_truth(log: str | Path) -> dict[str, dict[str, Any]]:
    """The truth logs of every server process, by request id ("__server__": the processes' CPU seconds)."""
    out: dict[str, dict[str, Any]] = {"__server__": {"cpu_s": 0.0}}
    p = Path(log)
    for f in sorted(p.parent.glob(p.name + ".*")):
        for line in f.read_text().splitlines():
            e = json.loads(line)
            if e["id"] == "__server__":
                out["__server__"]["cpu_s"] += e["cpu_s"]
            else:
                out[e["id"]] = e
    return out


@contextmanager
def running(
    ttft_ms: float = 50.0,
    itl_ms: float = 20.0,
    procs: int = 1,
    log: str | Path | None = None,
    extra: list[str] | None = None,
):
    """Start the server in its own process group; yields the base URL; stops it (and writes the log) on exit."""
    cmd = (
        [
            sys.executable,
            "-m",
            "r1lab.bench.gtserver",
            "--port",
            "0",
            "--ttft-ms",
            str(ttft_ms),
            "--itl-ms",
            str(itl_ms),
            "--procs",
            str(procs),
        ]
        + (["--log", str(log)] if log else [])
        + (extra or [])
    )
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("LISTENING"):
            raise RuntimeError(f"ground-truth server did not start (exit {proc.poll()}): {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


if __name__ == "__main__":
    raise SystemExit(main())
