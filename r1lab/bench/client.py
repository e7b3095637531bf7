"""A lean asyncio HTTP/1.1 streaming client whose hot path only stamps and stores.

Per request it keeps `(receive time, bytes)` for every read (the kernel's receive stamp on plain HTTP on Linux,
else perf_counter when the read ran) and lets `sse.Framer` find the end of the response; parsing happens later
(`sse.parse_response`), in another process when run by `workers`. The send is stamped when
the last byte of the request has been handed to the kernel (write buffer drained), not when a coroutine decided
to send. Connections are opened ahead of time and kept alive, so connection setup is never inside a TTFT.
"""

from __future__ import annotations

import asyncio
import json
import socket as _socket
import ssl as _ssl
import struct as _struct
import sys
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from r1lab.bench.sse import Framer, FramingError

perf_counter = time.perf_counter


@dataclass(slots=True)
class Raw:
    """What the hot path saw for one request (perf_counter seconds; parse later)."""

    request_id: str
    seq: int = 0
    t_sched: float | None = None
    t_send: float | None = None
    t_end: float | None = None
    reads: list[tuple[float, bytes]] = field(default_factory=list)
    error: str | None = None
    error_detail: str | None = None
    input_tokens: int | None = None
    warmup: bool = False


@dataclass(frozen=True)
class Endpoint:
    """Where requests go: scheme, host, port, path prefix; the Host header and TLS settings."""

    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"expected an http(s)://host[:port] URL, got {url!r}")
        port = u.port or (443 if u.scheme == "https" else 80)
        base = u.path.rstrip("/")
        if base.endswith("/v1"):  # an OpenAI base URL (".../v1"): the API paths carry /v1 themselves
            base = base[:-3]
        return cls(u.scheme, u.hostname, port, base)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def request_bytes(ep: Endpoint, path: str, body: bytes, request_id: str, api_key: str | None = None) -> bytes:
    """A complete HTTP/1.1 POST with a JSON body, ready to write."""
    return request_bytes_plain(ep.host_header, ep.base_path + path, body, request_id, api_key)


def request_bytes_plain(
    host_header: str, path: str, body: bytes, request_id: str, api_key: str | None = None
) -> bytes:
    """A complete HTTP/1.1 POST of `body` to `path` (base path included)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\nX-Request-Id: {request_id}\r\n"
    )
    if api_key:
        head += f"Authorization: Bearer {api_key}\r\n"
    return (head + "\r\n").encode("latin-1") + body


class _Exchange:
    """The request state both connection kinds share, and how a request ends."""

    raw: Raw | None
    waiter: asyncio.Future | None
    timer: asyncio.TimerHandle | None

    def _finish(self, error: str | None, detail: str | None) -> None:
        raw = self.raw
        if raw is not None and error and raw.error is None:
            raw.error, raw.error_detail = error, detail
            if raw.t_end is None:
                raw.t_end = perf_counter()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class Connection(asyncio.Protocol, _Exchange):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.framer = Framer()
        self.raw: Raw | None = None
        self.waiter: asyncio.Future | None = None
        self.paused = False
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks (the hot path) --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # high water 0: pause_writing fires while any byte is still queued, resume_writing once all left.
        self.transport.set_write_buffer_limits(high=0, low=0)  # type: ignore[union-attr]

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        raw = self.raw
        if raw is not None and raw.t_send is None:
            raw.t_send = perf_counter()

    def data_received(self, data: bytes) -> None:
        t = perf_counter()
        raw = self.raw
        if raw is None:
            return
        raw.reads.append((t, data))
        try:
            done = self.framer.feed(data)
        except FramingError as exc:
            self._finish("bad_http", str(exc))
            self.transport.abort()  # type: ignore[union-attr]
            return
        if done:
            raw.t_end = t
            self._finish(None, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.raw is not None and self.waiter is not None and not self.waiter.done():
            if self.framer.until_close and exc is None:
                self.raw.t_end = perf_counter()
                self._finish(None, None)
            else:
                self._finish("disconnect", f"connection closed before the response ended ({exc or 'EOF'})")

    def eof_received(self) -> bool | None:
        return False

    # -- control --
    def _timeout(self) -> None:
        self.timer = None
        self._finish("timeout", "no complete response within the request timeout")
        if self.transport is not None:
            self.transport.abort()

    def start(self, raw: Raw, payload: bytes, timeout_s: float) -> asyncio.Future:
        """Write one request; the returned future resolves when its response ended (or failed)."""
        self.framer.reset()
        self.raw = raw
        self.waiter = self.loop.create_future()
        self.timer = self.loop.call_later(timeout_s, self._timeout)
        self.transport.write(payload)  # type: ignore[union-attr]
        if not self.paused:
            raw.t_send = perf_counter()
        return self.waiter

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and self.framer.done
            and self.framer.keep_alive
            and self.raw is not None
            and self.raw.error is None
        )


SO_TIMESTAMPNS = getattr(_socket, "SO_TIMESTAMPNS", 35)
CMSG_SPACE = _socket.CMSG_SPACE(16) if hasattr(_socket, "CMSG_SPACE") else 0  # recvmsg's ancillary room
_TIMESPEC = _struct.Struct("@qq")


def kernel_receive_time(anc: list[tuple[int, int, bytes]], rt_to_perf: float) -> float | None:
    """The kernel's receive stamp in a recvmsg's ancillary data (SO_TIMESTAMPNS, CLOCK_REALTIME) as a
    perf_counter time (`rt_to_perf` = time.time() - perf_counter()), or None when the read carried none."""
    for level, kind, payload in anc:
        if level == _socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(payload)
            return sec + nsec * 1e-9 - rt_to_perf
    return None


class StampedConnection(_Exchange):
    """A plain-TCP connection whose reads carry the kernel's receive time (SO_TIMESTAMPNS, Linux): the default.

    TCP returns the arrival time of the last segment copied, so a read is stamped when its bytes reached this
    machine, not when this process got to them: a client that is a few ms late (a busy core, a collector pause)
    still records exact times. Limit (measured, tests/test_bench_client.py): segments that queue while the reader
    is stalled for longer than an inter-token gap are merged by the kernel, which keeps the newest arrival time,
    so inside such a stall stamps are bounded by the last arrival (never later than a user-space stamp). TLS
    decrypts in user space, so https endpoints use the protocol path (`Connection`, user-space stamps).
    benchmarks/loadgen_capacity.py compares both (`--user-stamps`).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: _socket.socket, rt_to_perf: float) -> None:
        self.loop, self.sock, self.rt_to_perf = loop, sock, rt_to_perf
        self.fd = sock.fileno()
        self.framer = Framer()
        self.raw: Raw | None = None
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.timer: asyncio.TimerHandle | None = None
        self.out = b""
        self.kernel_stamps = 0
        loop.add_reader(self.fd, self._readable)

    @classmethod
    async def open(cls, host: str, port: int, timeout: float, rt_to_perf: float) -> StampedConnection:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=_socket.SOCK_STREAM)
        family, type_, proto, _, addr = infos[0]
        sock = _socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
            sock.setsockopt(_socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
        except BaseException:
            sock.close()
            raise
        return cls(loop, sock, rt_to_perf)

    def _readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        t = kernel_receive_time(anc, self.rt_to_perf)
        if t is None:
            t = perf_counter()
        else:
            self.kernel_stamps += 1
        raw = self.raw
        if raw is None or (self.waiter is not None and self.waiter.done()):
            self.close()  # bytes nobody asked for: the connection is not in a known state
            return
        raw.reads.append((t, data))
        try:
            done = self.framer.feed(data)
        except FramingError as exc:
            self._finish("bad_http", str(exc))
            self.close()
            return
        if done:
            raw.t_end = t
            self._finish(None, None)

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.loop.remove_writer(self.fd)
            self._lost(exc)
            return
        self.out = self.out[n:]
        if not self.out:
            self.loop.remove_writer(self.fd)
            if self.raw is not None and self.raw.t_send is None:
                self.raw.t_send = perf_counter()

    def _lost(self, exc: Exception | None) -> None:
        if self.raw is not None and self.waiter is not None and not self.waiter.done():
            if self.framer.until_close and exc is None:
                self.raw.t_end = perf_counter()
                self._finish(None, None)
            else:
                self._finish("disconnect", f"connection closed before the response ended ({exc or 'EOF'})")
        self.close()

    def _timeout(self) -> None:
        self.timer = None
        self._finish("timeout", "no complete response within the request timeout")
        self.close()

    def start(self, raw: Raw, payload: bytes, timeout_s: float) -> asyncio.Future:
        self.framer.reset()
        self.raw = raw
        self.waiter = self.loop.create_future()
        self.timer = self.loop.call_later(timeout_s, self._timeout)
        # per request: a step of the wall clock cannot skew later stamps
        self.rt_to_perf = time.time() - perf_counter()
        try:
            n = self.sock.send(payload)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._lost(exc)
            return self.waiter
        if n == len(payload):
            raw.t_send = perf_counter()
        else:
            self.out = payload[n:]
            self.loop.add_writer(self.fd, self._writable)
        return self.waiter

    @property
    def reusable(self) -> bool:
        return (not self.closed and self.framer.done and self.framer.keep_alive and self.raw is not None
                and self.raw.error is None)  # fmt: skip

    @property
    def transport(self) -> StampedConnection:
        return self  # what Client calls close() on

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.fd)
            self.loop.remove_writer(self.fd)
            self.sock.close()


class Client:
    """Opens connections to one endpoint and runs requests over them."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 30.0,
        verify_tls: bool = True,
        kernel_stamps: bool = True,
    ) -> None:
        self.ep = Endpoint.parse(url)
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.ssl: _ssl.SSLContext | None = None
        if self.ep.scheme == "https":
            self.ssl = _ssl.create_default_context()
            if not verify_tls:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = _ssl.CERT_NONE
        self.idle: list = []
        # kernel receive stamps: plain HTTP on Linux (TLS decrypts in user space, so it keeps the protocol path)
        self.kernel_stamps = kernel_stamps and self.ep.scheme == "http" and sys.platform == "linux"
        self.rt_to_perf = time.time() - perf_counter()

    async def connect(self) -> Connection | StampedConnection:
        if self.kernel_stamps:
            return await StampedConnection.open(
                self.ep.host, self.ep.port, self.connect_timeout_s, self.rt_to_perf
            )
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: Connection(loop), self.ep.host, self.ep.port, ssl=self.ssl),
            self.connect_timeout_s,
        )
        return proto

    async def prewarm(self, n: int) -> None:
        """Open `n` idle connections now (in batches, so a listen backlog is not overrun)."""
        for i in range(0, n, 256):
            self.idle += await asyncio.gather(*(self.connect() for _ in range(min(256, n - i))))

    async def send(self, raw: Raw, path: str, body: bytes) -> Raw:
        """Send one request (on an idle connection or a new one) and wait for its end."""
        conn = None
        while self.idle:
            c = self.idle.pop()
            if not c.closed:
                conn = c
                break
        if conn is None:
            try:
                conn = await self.connect()
            except (TimeoutError, OSError) as exc:
                raw.error, raw.error_detail = "connect", f"{type(exc).__name__}: {exc}"
                return raw
        payload = request_bytes(self.ep, path, body, raw.request_id, self.api_key)
        await conn.start(raw, payload, self.timeout_s)
        if conn.reusable:
            self.idle.append(conn)
        elif conn.transport is not None and not conn.closed:
            conn.transport.close()
        return raw

    def close(self) -> None:
        for c in self.idle:
            if c.transport is not None:
                c.transport.close()
        self.idle.clear()


def completion_body(
    model: str,
    api: str,
    prompt: str | list[dict],
    max_tokens: int,
    force_output: bool = True,
    extra: dict | None = None,
) -> bytes:
    """The JSON body of a streaming completions or chat request (usage requested in the stream)."""
    body: dict = {
        "model": model,
        "stream": True,
        "max_tokens": max_tokens,
        "stream_options": {"include_usage": True},
    }
    if api == "chat":
        body["messages"] = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    if force_output:
        body["ignore_eos"] = True
        body["min_tokens"] = max_tokens
    if extra:
        body.update(extra)
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


API_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
