"""The client worker process: runs its share of one load point on its own event loop (uvloop when present) and
streams raw results to the parent in batches; it never parses. The parent (`loadgen`) parses and records."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import socket
import struct
import time
from typing import Any

from r1lab.bench.client import Client, Raw, completion_body
from r1lab.bench.sse import answer_text

perf_counter = time.perf_counter
FLUSH_S = 0.02
_HEADER = struct.Struct("!i")  # multiprocessing.connection's frame header (messages < 2 GiB)


def _pack(raw: Raw) -> tuple:
    return (
        raw.request_id,
        raw.seq,
        raw.t_sched,
        raw.t_send,
        raw.t_end,
        raw.reads,
        raw.error,
        raw.error_detail,
        raw.input_tokens,
        raw.warmup,
    )


def unpack(t: tuple) -> Raw:
    r = Raw(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9])
    return r


async def sleep_until(t: float) -> None:
    """Return once perf_counter() >= t, never before. One asyncio.sleep can end early: uvloop rounds a delay to the
    nearest ms and fires on ms ticks (measured: 1 in 4 sleeps to a random deadline ended early, by up to 1.2 ms)."""
    while (d := t - perf_counter()) > 0:
        await asyncio.sleep(d)


class _Lag:
    """Measures how late a 5 ms timer fires: the event loop's own backlog. Samples count from `since` (the point's
    start), so a late wake-up for the start itself is measured too; `loop_stalled_s` bounds from above the time the
    loop could not run (each tick later than 1 ms: its lateness plus one period)."""

    PERIOD_S = 0.005

    def __init__(self, loop: asyncio.AbstractEventLoop, since: float = 0.0) -> None:
        self.loop = loop
        self.since = since
        self.samples: list[float] = []
        self.handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.cpu0 = time.process_time()
        now = perf_counter()
        if now > self.since:  # started after the start time: that is lag too
            self.samples.append(now - self.since)
        self._due = now + self.PERIOD_S
        self.handle = self.loop.call_later(self.PERIOD_S, self._tick)

    def _tick(self) -> None:
        now = perf_counter()
        if now >= self.since:
            self.samples.append(now - self._due)
        self._due = now + self.PERIOD_S
        self.handle = self.loop.call_later(self.PERIOD_S, self._tick)

    def stop(self) -> dict[str, float]:
        if self.handle:
            self.handle.cancel()
        s = sorted(self.samples) or [0.0]
        return {
            "loop_lag_p50_ms": s[len(s) // 2] * 1e3,
            "loop_lag_p99_ms": s[int(len(s) * 0.99)] * 1e3,
            "loop_lag_max_ms": s[-1] * 1e3,
            "loop_stalled_s": sum(x + self.PERIOD_S for x in s if x > 0.001),
            "cpu_s": time.process_time() - self.cpu0,
        }


async def _run(conn: Any, plan: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    client = Client(
        plan["url"],
        api_key=os.environ.get(plan["api_key_env"]) if plan.get("api_key_env") else None,
        timeout_s=plan["timeout_s"],
        verify_tls=plan.get("verify_tls", True),
        kernel_stamps=plan.get("kernel_stamps", True),
    )
    bodies: list[tuple[bytes, int]] = plan["bodies"]
    path, prefix, w, nworkers = plan["path"], plan["prefix"], plan["worker"], plan["workers"]
    warm_s, warm_n = plan["warmup_s"], plan["warmup_requests"]
    try:
        await client.prewarm(plan["prewarm"])
        ready: tuple = ("ready", len(client.idle))
    except OSError as exc:
        ready = ("ready", 0, f"{type(exc).__name__}: {exc}")
    # The collection is part of getting ready, before the parent picks the start: run after the start, it made
    # the point's first sends late (200-490 ms when the workers had 15% of a core, measured with a CPU cgroup cap).
    gc.collect()
    gc.freeze()  # what exists now is never scanned again
    # No collector pauses while streams run: the hot path makes no reference cycles (measured: gc.collect() found
    # 0 unreachable objects after 30 s at 1,024 streams); an error's traceback cycle lives until this worker exits
    # at the end of its load point.
    gc.disable()
    conn.send(ready)
    msg = conn.recv()
    if msg[0] != "go":
        client.close()
        return
    t0 = msg[1]
    lag = _Lag(loop, since=t0)
    lag.start()  # (now: ticking through the wait, so a late wake-up for the start is measured too)
    results: list[Raw] = []
    # Batches go out on a non-blocking duplicate of the pipe, framed as multiprocessing's Connection frames them
    # (4-byte big-endian length, then the pickle): a parent that is slow to read never stalls this event loop.
    out = socket.socket(fileno=os.dup(conn.fileno()))
    out.setblocking(False)
    frames: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the last frame has been queued

    def frame(obj: object) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        frames.put_nowait(_HEADER.pack(len(data)) + data)

    def flush() -> None:
        if results:
            frame([_pack(r) for r in results])
            results.clear()

    async def sender() -> None:
        while (data := await frames.get()) is not None:
            try:
                await loop.sock_sendall(out, data)
            except OSError:  # the parent is gone: nobody records what we measure, so stop loading the server
                os._exit(3)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            flush()

    async def one(k: int, t_sched: float | None, given: tuple[bytes, int | None] | None = None) -> Raw:
        body, in_tok = given or bodies[k % len(bodies)]
        raw = Raw(f"{prefix}-{k}", seq=k, t_sched=t_sched, input_tokens=in_tok)
        await client.send(raw, path, body)
        raw.warmup = k < warm_n or (
            warm_s > 0  # warmup_s 0: no request is warm-up by its time
            and (
                (raw.t_send is not None and raw.t_send < t0 + warm_s)
                or (raw.t_send is None and t_sched is not None and t_sched < t0 + warm_s)
            )
        )
        results.append(raw)
        return raw

    await sleep_until(t0)  # a send before t0 would fall outside the point (and count as warm-up)
    ftask = asyncio.ensure_future(flusher())
    stask = asyncio.ensure_future(sender())
    deadline = t0 + plan["duration_s"] if plan["duration_s"] is not None else None
    convs = plan.get("conversations")
    if convs is not None:  # closed loop per conversation: a user sends turn j+1 once turn j's answer is in
        mine = iter(range(w, len(convs), nworkers))

        async def user() -> None:
            for ci in mine:
                if deadline is not None and perf_counter() >= deadline:
                    return
                conv = convs[ci]
                history: list[str] = []
                for j in range(len(conv["user"])):
                    body = turn_body(conv, history, j)
                    raw = await one(conv["first_k"] + j, perf_counter(), (body, conv["input_tokens"][j]))
                    if raw.error is not None:
                        break  # the conversation cannot go on without the answer it builds on
                    history.append(answer_text(raw.reads))

        await asyncio.gather(*(user() for _ in range(plan["slots"])))
    elif plan["kind"] == "concurrency":
        count = plan["requests"]
        nxt = iter(range(w, 10**12, nworkers))  # this worker's global request indices

        async def slot() -> None:
            for k in nxt:
                if count is not None and k >= count:
                    return
                now = perf_counter()
                if deadline is not None and now >= deadline:
                    return
                await one(k, now)

        await asyncio.gather(*(slot() for _ in range(plan["slots"])))
    else:
        sem = asyncio.Semaphore(plan["slots"]) if plan["slots"] else None
        tasks: set[asyncio.Task] = set()

        async def capped(k: int, when: float) -> None:
            if sem is None:
                await one(k, when)
                return
            async with sem:
                await one(k, when)

        unfired = len(plan["arrivals"])
        all_fired = loop.create_future()

        def fire(k: int, when: float) -> None:
            nonlocal unfired
            if (d := when - perf_counter()) > 0:  # the timer fired early (uvloop: ms ticks): never send early
                loop.call_later(d, fire, k, when)
                return
            task = loop.create_task(capped(k, when))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            unfired -= 1
            if unfired == 0:
                all_fired.set_result(None)

        now = perf_counter()  # uvloop's loop.time() has ms resolution: schedule relative to perf_counter
        for k, off in plan["arrivals"]:
            loop.call_later(max(0.0, t0 + off - now), fire, k, t0 + off)
        if unfired:
            await all_fired
        while tasks:
            await asyncio.gather(*list(tasks))
    ftask.cancel()
    flush()
    frame(("done", lag.stop()))
    frames.put_nowait(None)
    await stask  # every frame handed to the kernel
    out.close()
    client.close()


def turn_body(conv: dict[str, Any], answers: list[str], j: int) -> bytes:
    """Turn j of a conversation (workloads.conversation_plan): every earlier user message with the answer the
    server streamed for it, then user message j (chat: as messages; completions: one concatenated prompt)."""
    users = conv["user"]
    if conv["api"] == "chat":
        msgs: list[dict[str, str]] = []
        for u, a in zip(users[:j], answers, strict=True):
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        prompt: Any = msgs + [{"role": "user", "content": users[j]}]
    else:
        prompt = "".join(u + a for u, a in zip(users[:j], answers, strict=True)) + users[j]
    return completion_body(conv["model"], conv["api"], prompt, conv["max_tokens"][j],
                           force_output=conv["force_output"], extra=conv.get("extra"))  # fmt: skip


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies (a killed run must not leave load running)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def worker_main(conn: Any, plan: dict[str, Any]) -> None:
    """Process entry point (spawned by loadgen)."""
    _die_with_parent()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(_run(conn, plan))
    except BaseException as exc:  # report, never hang the parent
        try:
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m r1lab.bench.workers FD`: receive the plan over the socket FD, run it (no __main__ re-import,
    so it works from scripts, notebooks and remote shells alike)."""
    import sys
    from multiprocessing.connection import Connection

    fd = int((argv if argv is not None else sys.argv[1:])[0])
    conn = Connection(fd)
    plan = conn.recv()
    worker_main(conn, plan)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
