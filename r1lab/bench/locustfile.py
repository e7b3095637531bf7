"""Locust, as the plan names it, measuring with r1lab's own raw-socket client and SSE parser.

Run it in its own process (`locust` must monkey-patch with gevent before ssl/urllib3 are imported, so `import
locust` comes first here and nothing of r1lab is imported before it). Locust's HttpUser clients read in blocks
and mis-time chunks (facts.md), so each user keeps one keep-alive socket, stamps every recv, and parses afterwards
with `r1lab.bench.sse`. Per request it fires Locust metrics "E2E", "TTFT" and "TPOT" (ms), and produces a record
in r1lab's schema; workers ship records to the master (`r1lab_records` messages), which appends them to
`R1LAB_LOCUST_OUT` as they arrive. Distributed runs: `r1lab.bench.locust_run.run_locust` starts master + workers.

Environment: R1LAB_LOCUST_WORKLOAD (JSON lines of {"body": str, "input_tokens": int}; required),
R1LAB_LOCUST_OUT (requests.jsonl), R1LAB_LOCUST_API (completions|chat), R1LAB_SCENARIO, R1LAB_POINT,
R1LAB_LOCUST_USERS (total users, recorded as concurrency), R1LAB_VLLM_API_KEY (optional bearer token),
R1LAB_LOCUST_TIMEOUT_S (default 600).
"""

import locust  # noqa: I001  (must be first: gevent monkey-patching)
from locust import User, events, task
from locust.runners import MasterRunner, WorkerRunner

import itertools
import os
import socket
import time
from typing import overload
from urllib.parse import urlsplit

import gevent

from r1lab.bench.client import API_PATHS, Raw, request_bytes_plain
from r1lab.bench.metrics import request_latencies
from r1lab.bench.records import RecordWriter, build_record, clock_offset
from r1lab.bench.sse import Framer, FramingError
from r1lab.bench.workloads import read_workload

_ = locust
WORKLOAD: list[tuple[bytes, int]] = []
_counter = itertools.count()
_pending: list[dict] = []
_writer: RecordWriter | None = None
_offset = clock_offset()


@overload
def _env(name: str, default: str) -> str: ...
@overload
def _env(name: str, default: None = None) -> str | None: ...
def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


@events.init.add_listener
def _init(environment, **_kw) -> None:
    global _writer
    path = _env("R1LAB_LOCUST_WORKLOAD")
    if not isinstance(environment.runner, MasterRunner):
        if not path:
            raise SystemExit("R1LAB_LOCUST_WORKLOAD is not set: point it at a workload JSON-lines file")
        WORKLOAD.extend(read_workload(path))
    out = _env("R1LAB_LOCUST_OUT")
    if out and not isinstance(environment.runner, WorkerRunner):
        _writer = RecordWriter(out)
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message("r1lab_records", _on_records)
    if isinstance(environment.runner, WorkerRunner):
        gevent.spawn(_ship, environment)


def _on_records(msg, **_kw) -> None:
    if _writer is not None:
        for rec in msg.data:
            _writer.write(rec)


def _ship(environment) -> None:
    while True:
        gevent.sleep(0.5)
        if _pending:
            batch = _pending[:]
            del _pending[: len(batch)]
            environment.runner.send_message("r1lab_records", batch)


def _flush(environment) -> None:
    if isinstance(environment.runner, WorkerRunner) and _pending:
        batch = list(_pending)
        _pending.clear()
        # locust annotates `data` as a dict, but ships any msgpack-able value (the master's listener gets the list)
        environment.runner.send_message("r1lab_records", batch)  # type: ignore[arg-type]


@events.test_stop.add_listener
def _stopped(environment, **_kw) -> None:
    _flush(environment)  # a worker's users have finished: ship before it reports "stopped" to the master


@events.quitting.add_listener
def _quit(environment, **_kw) -> None:
    _flush(environment)
    if _writer is not None:
        _writer.close()


class R1labUser(User):
    """One concurrent stream: sends the workload's requests one after another over a keep-alive socket."""

    wait_time = staticmethod(lambda: 0)

    def on_start(self) -> None:
        u = urlsplit(self.host)
        if u.scheme != "http":
            raise SystemExit(f"the locust user speaks plain http to a server next to it; got {self.host!r}")
        self.addr = (u.hostname, u.port or 80)
        self.base = u.path.rstrip("/")
        self.hosthdr = u.netloc
        self.sock: socket.socket | None = None
        self.api = _env("R1LAB_LOCUST_API", "completions")
        self.timeout = float(_env("R1LAB_LOCUST_TIMEOUT_S", "600"))
        self.key = _env("R1LAB_VLLM_API_KEY")

    def on_stop(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def _exchange(self, raw: Raw, payload: bytes) -> bool:
        """Send and read one response; stamp every recv. True if the connection can be reused."""
        if self.sock is None:
            self.sock = socket.create_connection(self.addr, timeout=30)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        sock.settimeout(self.timeout)
        framer = Framer()
        sock.sendall(payload)
        raw.t_send = time.perf_counter()
        while True:
            data = sock.recv(65536)
            t = time.perf_counter()
            if not data:
                if framer.until_close:
                    raw.t_end = t
                    return False
                raw.error, raw.error_detail, raw.t_end = "disconnect", "connection closed mid-response", t
                return False
            raw.reads.append((t, data))
            if framer.feed(data):
                raw.t_end = t
                return framer.keep_alive

    @task
    def stream(self) -> None:
        k = next(_counter)
        body, in_tok = WORKLOAD[k % len(WORKLOAD)]
        scenario, point = _env("R1LAB_SCENARIO", "locust"), _env("R1LAB_POINT", "p0")
        runner = self.environment.runner
        wid = getattr(runner, "worker_index", 0) or 0
        raw = Raw(f"{scenario}-{point}-l{wid}-{os.getpid()}-{k}", seq=k, input_tokens=in_tok)
        raw.t_sched = time.perf_counter()
        path = self.base + API_PATHS[self.api]
        payload = request_bytes_plain(self.hosthdr, path, body, raw.request_id, self.key)
        reuse = False
        try:
            reuse = self._exchange(raw, payload)
        except TimeoutError:
            raw.error, raw.error_detail = "timeout", "no complete response within the timeout"
        except FramingError as exc:
            raw.error, raw.error_detail = "bad_http", str(exc)
        except OSError as exc:
            raw.error, raw.error_detail = ("connect" if raw.t_send is None else "disconnect"), str(exc)
        if raw.t_end is None:
            raw.t_end = time.perf_counter()
        if not reuse and self.sock is not None:
            self.sock.close()
            self.sock = None
        users = int(_env("R1LAB_LOCUST_USERS", "0")) or getattr(runner, "target_user_count", None)
        rec = build_record(raw, scenario=scenario, point=point, worker=wid, concurrency=users, rate=None,
                           offset=_offset, loop="closed")  # fmt: skip
        name = API_PATHS[self.api]
        if rec["error"] is None and rec["t_first"] is not None:
            lat = request_latencies(rec)
            fire = events.request.fire
            fire(request_type="E2E", name=name, response_time=lat["e2el"] * 1e3,
                 response_length=rec["output_tokens"] or 0, exception=None, context={})  # fmt: skip
            if lat["ttft"] is not None:  # None: the first chunk's stamp is uncertain (read late)
                fire(request_type="TTFT", name=name, response_time=lat["ttft"] * 1e3, response_length=0,
                     exception=None, context={})  # fmt: skip
            if lat["tpot"] is not None:
                fire(request_type="TPOT", name=name, response_time=lat["tpot"] * 1e3, response_length=0,
                     exception=None, context={})  # fmt: skip
        else:
            events.request.fire(request_type="E2E", name=name, response_time=(raw.t_end - (raw.t_send or raw.t_end))
                                * 1e3, response_length=0, exception=RuntimeError(f"{rec['error']}: "
                                f"{rec['error_detail']}"), context={})  # fmt: skip
        if isinstance(runner, WorkerRunner):
            _pending.append(rec)
        elif _writer is not None:
            _writer.write(rec)
