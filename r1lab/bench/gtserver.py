"""A ground-truth OpenAI streaming server: emits tokens at scheduled times and logs what it actually sent.

It answers `/v1/completions` and `/v1/chat/completions` (stream only) with the first token `ttft_ms` after the
request arrived and one token every `itl_ms` after that, `max_tokens` tokens in all, then a usage chunk and
`data: [DONE]`. With `max_streams` at most that many requests generate at once (per process), as an engine's
`max_num_seqs`: the others wait in arrival order and their TTFT starts when a slot frees, so throughput stops
growing past it and latency climbs (a server with a knee). For every request it logs (CLOCK_MONOTONIC seconds, shared with the client processes) when the
request's last byte reached this machine (the kernel's receive stamp), when each chunk was handed to the kernel,
and whether any write had to queue in user space. The log is written on SIGTERM/SIGINT. Several processes can share the port (SO_REUSEPORT).
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
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from r1lab.bench.client import CMSG_SPACE, SO_TIMESTAMPNS, kernel_receive_time

perf_counter = time.perf_counter
HEAD_OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class _Req:
    __slots__ = ("rid", "t_recv", "sent", "queued", "n", "left", "api", "usage", "prompt_tokens", "fail_at",
                 "reasoning", "prefix", "prompt", "admitted")  # fmt: skip
    rid: str
    t_recv: float
    sent: list[float]
    queued: int
    n: int
    left: int
    api: str
    usage: bool
    prompt_tokens: int
    fail_at: int
    reasoning: bool
    prefix: bytes
    prompt: Any
    admitted: bool

    def __init__(self) -> None:
        self.sent: list[float] = []
        self.queued = 0
        self.admitted = False


class _Conn:
    """One client connection on a raw non-blocking socket: the hot path is one send() per chunk.

    Requests are read with recvmsg, so each carries the kernel's arrival time (SO_TIMESTAMPNS): the truth's TTFT
    starts when the request reached this machine, not when this (possibly busy) process got round to it."""

    __slots__ = ("srv", "sock", "fd", "buf", "out", "req", "closed")

    def __init__(self, srv: Server, sock: socket.socket) -> None:
        self.srv, self.sock, self.fd = srv, sock, sock.fileno()
        self.buf = b""
        self.out = b""
        self.req: _Req | None = None
        self.closed = False
        srv.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            self.close()
            return
        t = perf_counter()
        # realtime -> perf_counter with an offset taken now (a step of the wall clock cannot skew it)
        arrived = kernel_receive_time(anc, time.time() - t)
        if arrived is not None:
            t = min(t, arrived)
        self.buf += data
        while not self.closed:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            lines = self.buf[:i].decode("latin-1").split("\r\n")
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
            self.srv.handle(self, t, method, path, headers, body)

    def write(self, data: bytes) -> bool:
        """Hand `data` to the kernel now; True if some of it had to wait in user space."""
        if self.closed:
            return False
        if self.out:
            self.out += data
            return True
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self.close()
            return False
        if n == len(data):
            return False
        self.out = data[n:]  # (a writer is registered exactly while `out` holds bytes)
        self.srv.loop.add_writer(self.fd, self._writable)
        return True

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        self.out = self.out[n:]
        if not self.out:
            self.srv.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.srv.loop.remove_reader(self.fd)
        if self.out:
            self.srv.loop.remove_writer(self.fd)
        self.sock.close()
        if self.req is not None:
            self.srv.finish(self.req, aborted=True)
            self.req = None


class Server:
    """The per-process server: accepts connections, answers requests, emits tokens on schedule, keeps the log."""

    def __init__(
        self, ttft_ms: float, itl_ms: float, model: str, fail_every: int, reasoning: bool, log_prompts: bool = False,
        tag_text: bool = False, max_streams: int = 0,
    ) -> None:  # fmt: skip
        self.log_prompts, self.tag_text = log_prompts, tag_text
        self.max_streams, self.active = max_streams, 0
        self.waiting: deque[_Conn] = deque()
        self.ttft, self.itl = ttft_ms / 1000.0, itl_ms / 1000.0
        self.model, self.fail_every, self.reasoning = model, fail_every, reasoning
        self.seq = 0
        self.log: list[dict[str, Any]] = []
        self.loop = asyncio.get_event_loop()
        self.conns: set[_Conn] = set()
        self.wheel: dict[int, list[tuple[float, _Conn]]] = {}  # ms slot -> (due time, connection)
        self.done = int(perf_counter() * 1000.0)  # every slot <= this has been run
        self.armed = 1 << 62  # the slot the pending timer is for (0: a turn is running; 1 << 62: none)
        self.timer: asyncio.TimerHandle | None = None

    # -- connections and requests --
    def serve(self, lsock: socket.socket) -> None:
        self.lsock = lsock
        self.loop.add_reader(lsock.fileno(), self._accept)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # SO_TIMESTAMPNS: inherited (_listen)
            self.conns.add(_Conn(self, sock))

    def close(self) -> None:
        self.loop.remove_reader(self.lsock.fileno())
        for c in list(self.conns):
            c.close()

    def _reply(self, conn: _Conn, status: str, obj: Any) -> None:
        payload = json.dumps(obj).encode()
        conn.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )

    def handle(
        self, conn: _Conn, t_recv: float, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> None:
        if method == "GET" and path in ("/health", "/v1/health"):
            return self._reply(conn, "200 OK", {"status": "ok"})
        if method == "GET" and path == "/v1/models":
            return self._reply(
                conn, "200 OK", {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            )
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
            return self._reply(conn, "404 Not Found", {"error": {"message": f"no route {method} {path}"}})
        try:
            req = json.loads(body)
        except ValueError:
            return self._reply(conn, "400 Bad Request", {"error": {"message": "body is not JSON"}})
        if not req.get("stream"):
            return self._reply(conn, "400 Bad Request", {"error": {"message": "this server only streams"}})
        r = _Req()
        r.rid = headers.get("x-request-id") or f"gt-{self.seq}"
        self.seq += 1
        r.t_recv = t_recv
        r.n = int(req.get("max_tokens") or 16)
        r.left = r.n
        r.api = "chat" if path.endswith("chat/completions") else "completions"
        r.usage = bool((req.get("stream_options") or {}).get("include_usage"))
        prompt = req.get("prompt") if r.api == "completions" else json.dumps(req.get("messages"))
        r.prompt_tokens = len(str(prompt).split())
        r.prompt = (
            (req.get("prompt") if r.api == "completions" else req.get("messages"))
            if self.log_prompts
            else None
        )
        r.fail_at = r.n // 2 if self.fail_every and self.seq % self.fail_every == 0 else -1
        r.reasoning = self.reasoning
        r.prefix = (
            b'data: {"id":"%s","object":"text_completion","model":"%s","choices":[{"index":0,"text":" %st'
            % (
                r.rid.encode(),
                self.model.encode(),
                (r.rid.encode() + b".") if self.tag_text else b"",
            )
        )
        conn.req = r
        conn.write(HEAD_OK)
        if self.max_streams and self.active >= self.max_streams:
            self.waiting.append(conn)
            return
        self._admit(conn, t_recv)

    def _admit(self, conn: _Conn, since: float) -> None:
        """Start generating for conn's request: first token `ttft` after `since`."""
        assert conn.req is not None
        conn.req.admitted = True
        self.active += 1
        self.at(since + self.ttft, conn)

    def _token(self, r: _Req, i: int) -> bytes:
        if r.api == "completions":  # the hot case: no JSON encoder per chunk
            return r.prefix + b'%d","finish_reason":null}]}\n\n' % i
        key = "reasoning" if (r.reasoning and i < r.n // 2) else "content"
        delta: dict[str, Any] = {key: f" {r.rid}.t{i}" if self.tag_text else f" t{i}"}
        if i == 0:
            delta["role"] = "assistant"
        obj = {
            "id": r.rid,
            "object": "chat.completion.chunk",
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def tick(self, conn: _Conn, when: float) -> None:
        r = conn.req
        if r is None or conn.closed:
            return
        i = r.n - r.left
        if i == r.fail_at:
            payload = (
                _chunk(
                    b'data: {"error":{"message":"injected failure","type":"InternalServerError","code":500}}\n\n'
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
                    usage = {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.n,
                             "total_tokens": r.prompt_tokens + r.n}  # fmt: skip
                    payload += _chunk(b"data: " + json.dumps({"id": r.rid, "choices": [], "usage": usage}).encode()
                                      + b"\n\n")  # fmt: skip
                payload += _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        t = perf_counter()
        if conn.write(payload):
            r.queued += 1
        r.sent.append(t)
        if r.left == 0:
            self.finish(r)
            conn.req = None
            return
        self.at(when + self.itl, conn)

    # -- the timing wheel: one timer for all streams --
    def at(self, when: float, conn: _Conn) -> None:
        """Run tick(conn, when) in the first 1 ms slot at or after `when` (never a slot already run). Nominal
        times stay exact (no drift builds up); the log keeps the real send times."""
        key = max(int(when * 1000.0) + 1, self.done + 1)
        slot = self.wheel.get(key)
        if slot is None:
            self.wheel[key] = [(when, conn)]
            if key < self.armed:  # (inside a turn `armed` is 0: the turn arms the earliest slot when it ends)
                self._arm(key)
        else:
            slot.append((when, conn))

    def _arm(self, key: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.armed = key
        self.timer = self.loop.call_later(max(0.0, key / 1000.0 - perf_counter()), self._turn)

    def _turn(self) -> None:
        self.timer, self.armed = None, 0
        now = int(perf_counter() * 1000.0)
        wheel = self.wheel
        while wheel:
            key = min(wheel)
            if key > now:
                break
            self.done = key
            for when, conn in wheel.pop(key):
                self.tick(conn, when)  # schedules into slots > self.done
        self.done = max(self.done, now)
        if wheel:
            self._arm(min(wheel))
        else:
            self.armed = 1 << 62

    def finish(self, r: _Req, aborted: bool = False) -> None:
        if r.admitted:
            r.admitted = False
            self.active -= 1
            while self.waiting and self.active < self.max_streams:
                nxt = self.waiting.popleft()
                if not nxt.closed and nxt.req is not None:
                    self._admit(nxt, perf_counter())
        entry = {
            "id": r.rid,
            "t_recv": r.t_recv,
            "sent": r.sent,
            "queued": r.queued,
            "aborted": aborted,
            "n": r.n,
        }
        if self.log_prompts:
            entry["prompt"] = r.prompt
        self.log.append(entry)


def _serve(sock: socket.socket, args: argparse.Namespace, log_path: str | None) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = Server(args.ttft_ms, args.itl_ms, args.model, args.fail_every, args.reasoning, args.log_prompts,
                 args.tag_text, args.max_streams)  # fmt: skip
    srv.serve(sock)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.run_until_complete(stop.wait())
    srv.close()
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
    # Kernel receive stamps on the listener: accepted sockets inherit them, so a connection's first request that
    # arrives before the busy loop accepts it still carries its arrival time (set only after accept, the bytes
    # already queued carry no stamp and were stamped when read, late).
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        pass  # no kernel stamps here: reads are stamped in user space
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
    ap.add_argument(
        "--log-prompts", action="store_true", help="keep each request's prompt/messages in the log"
    )
    ap.add_argument(
        "--tag-text", action="store_true", help="each token's text carries its request id (rid.tN)"
    )
    ap.add_argument(
        "--max-streams",
        type=int,
        default=0,
        help="at most N requests generate at once, the rest wait (0: no cap)",
    )
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


def realtime_allowed() -> bool:
    """Whether this process may start real-time (SCHED_RR) processes: root on Linux, and the kernel grants it
    (tried on a short-lived thread: a container without CAP_SYS_NICE, or a cgroup with no real-time runtime,
    refuses it even to root)."""
    if not hasattr(os, "sched_setscheduler") or os.geteuid() != 0:
        return False
    import threading

    granted: list[bool] = []

    def probe() -> None:  # (the scheduling policy is per thread on Linux: this one ends right after)
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_RR, os.sched_param(1))
            granted.append(True)
        except OSError:
            granted.append(False)

    t = threading.Thread(target=probe, name="r1lab-rt-probe")
    t.start()
    t.join()
    return granted == [True]


def _realtime() -> None:  # in the child, before exec: inherited by the server's processes
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except OSError:
        pass  # refused after all (realtime_allowed said yes): run at normal priority rather than not at all


@contextmanager
def running(
    ttft_ms: float = 50.0,
    itl_ms: float = 20.0,
    procs: int = 1,
    log: str | Path | None = None,
    extra: list[str] | None = None,
    realtime: bool = False,
):
    """Start the server in its own process group; yields the base URL; stops it (and writes the log) on exit.
    `realtime`: run it (and its processes) under SCHED_RR when this process may (root), so the truth's own
    schedule is not what a busy machine delays; without the privilege it runs at normal priority."""
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
    pre = _realtime if realtime and realtime_allowed() else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=pre)
    try:
        assert proc.stdout is not None  # stdout=PIPE
        line = proc.stdout.readline()
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
