"""Run one load point across worker processes and record every request as it completes.

The parent spawns the workers, waits until each has its connections open, gives them one common start time
(CLOCK_MONOTONIC is shared by all processes), then parses the raw batches they stream back and appends records to
`requests.jsonl`. Parsing never runs on a worker's event loop.
"""

from __future__ import annotations

import math
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

from r1lab.bench.client import API_PATHS
from r1lab.bench.records import RecordWriter, build_record, clock_offset
from r1lab.bench.shapes import Shape, arrivals, split
from r1lab.bench.workers import unpack
from r1lab.progress import progress

# Per-worker capacity, measured (benchmarks/loadgen_capacity.py, hard schedule: every stream a chunk each 20 ms):
# one worker process carries WORKER_CHUNKS_S chunks/s before its point is flagged client-limited. Workers are sized
# from the chunk rate a shape asks for (streams x CHUNKS_PER_STREAM_S), not from a stream count alone.
WORKER_CHUNKS_S = 25_600.0
CHUNKS_PER_STREAM_S = 50.0  # a token every 20 ms per stream: faster than R1 decodes at any useful concurrency
STREAMS_PER_WORKER = int(WORKER_CHUNKS_S / CHUNKS_PER_STREAM_S)
RATE_PER_WORKER = 400.0
API_KEY_ENV = "R1LAB_VLLM_API_KEY"


@dataclass
class PointResult:
    """What one load point did: records written, the workers' loop lag, and the wall time it took. `t0`: the
    common start the workers were given (epoch seconds, as the records' times)."""

    scenario: str
    point: str
    t0: float | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    workers: int = 0
    worker_stats: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    parse_cpu_s: float = 0.0

    @property
    def client_cpu_s(self) -> float:
        """CPU seconds the worker processes spent (sending, reading, stamping) from the start to their end."""
        return sum(s.get("cpu_s", 0.0) for s in self.worker_stats)

    @property
    def loop_lag_p99_ms(self) -> float:
        return max((s.get("loop_lag_p99_ms", 0.0) for s in self.worker_stats), default=0.0)

    @property
    def loop_lag_max_ms(self) -> float:
        return max((s.get("loop_lag_max_ms", 0.0) for s in self.worker_stats), default=0.0)


def auto_workers(
    shape: Shape, max_workers: int | None = None, chunks_per_stream_s: float = CHUNKS_PER_STREAM_S
) -> int:
    """Enough processes that no event loop carries more than its measured WORKER_CHUNKS_S (streams x
    `chunks_per_stream_s`), or RATE_PER_WORKER req/s; at most one per core."""
    cap = max_workers or os.cpu_count() or 1
    need = math.ceil((shape.concurrency or 0) * chunks_per_stream_s / WORKER_CHUNKS_S)
    if shape.kind == "poisson":
        assert shape.rate is not None  # Shape requires a rate for poisson
        need = max(need, math.ceil(shape.rate / RATE_PER_WORKER))
    return max(1, min(cap, need))


def _collect(
    conns: list[Connection],
    procs: list[subprocess.Popen],
    writer: RecordWriter,
    result: PointResult,
    shape: Shape,
    offset: float,
    keep_records: bool,
    total: int | None,
    errors: list[BaseException],
) -> None:
    """Receive raw batches, parse them into records, append them. Runs in a thread at lower CPU priority, so on a
    small machine the workers (and a local server) win the CPU and parsing catches up in the gaps."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # Linux: this thread only
    except (OSError, AttributeError):
        pass
    live = {c: i for i, c in enumerate(conns)}
    cpu0 = time.thread_time()
    try:
        with progress(f"{result.scenario} {result.point}", total=total, unit="req") as bar:
            while live:
                # wait() returns those of the objects it was given that are ready: Connections here
                for c in cast(list[Connection], wait(list(live), timeout=1.0)):
                    i = live[c]
                    try:
                        data = c.recv_bytes()
                    except EOFError:
                        del live[c]
                        if procs[i].poll() not in (0, None):
                            raise RuntimeError(f"load worker {i} died (exit {procs[i].returncode})") from None
                        continue
                    obj = pickle.loads(data)
                    if isinstance(obj, tuple):
                        if obj[0] == "done":
                            result.worker_stats.append({**obj[1], "worker": i})
                            del live[c]
                        elif obj[0] == "failed":
                            raise RuntimeError(f"load worker {i} failed: {obj[1]}")
                        continue
                    for t in obj:
                        rec = build_record(
                            unpack(t),
                            scenario=result.scenario,
                            point=result.point,
                            worker=i,
                            concurrency=shape.concurrency,
                            rate=shape.rate,
                            offset=offset,
                            loop=shape.loop,
                        )
                        writer.write(rec)
                        if keep_records:
                            result.records.append(rec)
                    bar.advance(len(obj))
    except BaseException as exc:
        errors.append(exc)
    result.parse_cpu_s = time.thread_time() - cpu0


def run_point(
    url: str,
    bodies: list[tuple[bytes, int]],
    shape: Shape,
    *,
    scenario: str,
    point: str | None = None,
    out: str | Path,
    api: str = "completions",
    workers: int = 0,
    timeout_s: float = 600.0,
    seed: int = 0,
    keep_records: bool = True,
    verify_tls: bool = True,
    start_delay_s: float = 0.2,
    kernel_stamps: bool = True,
    conversations: list[dict[str, Any]] | None = None,
) -> PointResult:
    """Run `shape` against `url` with request bodies `(json bytes, input tokens)`; append records to `out`
    (a requests.jsonl path). `workers` 0 picks a count from the shape. `conversations` (a concurrency shape
    only, `workloads.conversation_plan`): each user runs whole conversations, each turn sent when the previous
    one ended, carrying the answer text that turn streamed (`bodies` is then unused)."""
    if conversations is not None:
        if shape.kind != "concurrency":
            raise ValueError("multi-turn conversations run closed-loop: give a concurrency shape")
        bodies = bodies or [(b"", 0)]
    if not bodies:
        raise ValueError("no request bodies: build a workload first")
    point = point or shape.label
    nw = workers or auto_workers(shape)
    slots = split(shape.concurrency, nw) if shape.concurrency else [0] * nw
    arr: list[list[tuple[int, float]]] = [[] for _ in range(nw)]
    if shape.kind == "trace":
        # a trace has offsets (Shape checks)
        for k, off in enumerate((shape.offsets or ())[: shape.requests]):
            arr[k % nw].append((k, float(off)))
    elif shape.kind == "poisson":
        assert shape.rate is not None  # Shape requires a rate for poisson
        offs = arrivals(
            shape.rate,
            requests=shape.requests,
            duration_s=shape.duration_s,
            seed=seed,
            burstiness=shape.burstiness,
        )
        for k, off in enumerate(offs):
            arr[k % nw].append((k, float(off)))
    plans: list[dict[str, Any]] = []
    for i in range(nw):
        if shape.kind == "concurrency":
            prewarm = slots[i]
        else:
            prewarm = min(len(arr[i]), slots[i] or 64)
        plans.append({
            "url": url, "path": API_PATHS[api], "worker": i, "workers": nw, "kind": shape.kind,
            "slots": slots[i], "requests": shape.requests, "duration_s": shape.duration_s, "arrivals": arr[i],
            "bodies": bodies, "prefix": f"{scenario}-{point}", "timeout_s": timeout_s, "prewarm": prewarm,
            "warmup_s": shape.warmup_s, "warmup_requests": shape.warmup_requests, "api_key_env": API_KEY_ENV,
            "verify_tls": verify_tls, "kernel_stamps": kernel_stamps, "conversations": conversations,
        })  # fmt: skip
    if shape.kind == "concurrency":
        plans = [p for p in plans if p["slots"] > 0]
    offset = clock_offset()
    procs: list[subprocess.Popen] = []
    conns: list[Connection] = []
    result = PointResult(scenario, point, workers=len(plans))
    total = shape.requests
    t_start = time.perf_counter()
    writer = RecordWriter(out)
    try:
        for plan in plans:
            a, b = socket.socketpair()
            p = subprocess.Popen(
                [sys.executable, "-m", "r1lab.bench.workers", str(b.fileno())], pass_fds=[b.fileno()]
            )
            b.close()
            conn = Connection(a.detach())
            conn.send(plan)
            procs.append(p)
            conns.append(conn)
        for c in conns:
            msg = c.recv()
            if msg[0] != "ready":
                raise RuntimeError(f"load worker failed to start: {msg}")
            if len(msg) > 2:
                raise RuntimeError(f"load worker could not connect to {url}: {msg[2]}")
        t0 = time.perf_counter() + start_delay_s
        result.t0 = t0 + offset
        for c in conns:
            c.send(("go", t0))
        errors: list[BaseException] = []
        th = threading.Thread(
            target=_collect,
            args=(conns, procs, writer, result, shape, offset, keep_records, total, errors),
            name="r1lab-bench-recorder",
            daemon=True,
        )
        th.start()
        while th.is_alive():
            th.join(0.2)
        if errors:
            raise errors[0]
        for p in procs:
            p.wait(10)
    finally:
        writer.close()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(5)
        for c in conns:
            c.close()
    result.wall_s = time.perf_counter() - t_start
    write_client_stats(Path(out).parent / CLIENT_STATS, result)
    return result


CLIENT_STATS = "client.jsonl"


def write_client_stats(path: Path, result: PointResult) -> None:
    """One line per point: what the generator itself did (loop lag, CPU), read back by the summary."""
    line = {"scenario": result.scenario, "point": result.point, "workers": result.workers,
            "loop_lag_p99_ms": result.loop_lag_p99_ms,
            "loop_lag_max_ms": result.loop_lag_max_ms,
            "client_cpu_s": result.client_cpu_s, "parse_cpu_s": result.parse_cpu_s, "wall_s": result.wall_s}  # fmt: skip
    w = RecordWriter(path)
    try:
        w.write(line)
    finally:
        w.close()
