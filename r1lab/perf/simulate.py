"""Discrete-event simulation of continuous batching as vLLM V1 schedules it, and of P/D disaggregation.

One engine replica (one DP rank), step by step (an engine that schedules one step ahead, `schedule_ahead_steps`,
admits a request that arrived during a running step only into the step after the next): running requests decode one token each (1 + MTP drafts), requests
in prefill take chunks of their prompt within `max_num_batched_tokens`, waiting requests are admitted while
`max_num_seqs` and free KV blocks allow (blocks of `block_size` tokens, allocated as tokens are computed); when a
decode needs a block and none is free, the newest running request is preempted (recomputed later, vLLM's
default). Step times come from `ops.StepModel`. Stretches where nothing but decoding happens are advanced in one
epoch (same batch, context growing: time at the midpoint), so a run costs O(events), not O(tokens).

P/D (`PDConfig`): prompts go to a pool of prefill instances (FIFO, batched up to the token budget), the first
token returns from prefill, and the KV cache crosses `link` before the decode replica admits the request.

Public interface: `Workload`, `SchedulerConfig`, `PDConfig`, `simulate(step, workload, sched, pd) -> SimResult`.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from r1lab.perf.network import Link
from r1lab.perf.ops import StepModel


@dataclass(frozen=True)
class Workload:
    """Token lengths are ints or (lo, hi) uniform ranges; load is a fixed concurrency (closed loop) or a Poisson
    request rate (requests/s)."""

    isl: int | tuple[int, int] = 1024
    osl: int | tuple[int, int] = 1024
    concurrency: int | None = 8
    rate: float | None = None
    num_requests: int | None = None
    seed: int = 0

    def n(self) -> int:
        if self.num_requests:
            return self.num_requests
        c = self.concurrency or max(1, int(self.rate or 1))
        return max(4 * c, 32)


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_chunked_prefill: bool = True
    num_blocks: int = 1 << 30
    block_size: int = 64


@dataclass(frozen=True)
class PDConfig:
    prefill: StepModel
    link: Link
    prefill_instances: int = 1
    max_num_batched_tokens: int = 8192


@dataclass
class _Req:
    rid: int
    isl: int
    osl: int
    arrival: float
    prompt: int = 0  # tokens to (re)compute before decoding
    computed: float = 0.0
    generated: float = 0.0
    first: float | None = None
    end: float | None = None
    blocks: int = 0
    last_t: float = 0.0
    gaps: list[tuple[float, float]] = field(default_factory=list)  # (gap seconds, number of chunks)
    preempted: int = 0
    admitted_remote: bool = False


@dataclass
class SimResult:
    ttft_s: list[float]
    tpot_s: list[float]
    e2e_s: list[float]
    itl: list[tuple[float, float]]  # (gap, weight)
    duration_s: float
    output_tokens: int
    input_tokens: int
    requests: int
    preemptions: int
    peak_kv_blocks: int
    mean_batch: float
    steps: int


def _block_needs(decodes: list[_Req], k: int, q: int, bs: int) -> int:
    """New KV blocks the decodes need to advance k steps of q tokens."""
    return sum(max(0, math.ceil((r.computed + k * q) / bs) - r.blocks) for r in decodes)


def _length(v: int | tuple[int, int], rng: random.Random) -> int:
    return v if isinstance(v, int) else rng.randint(v[0], v[1])


def simulate(
    step: StepModel, wl: Workload, sched: SchedulerConfig | None = None, pd: PDConfig | None = None
) -> SimResult:
    """Run one load point to completion; every request is measured (no warm-up cut)."""
    sched = sched or SchedulerConfig()
    rng = random.Random(wl.seed)
    n_total = wl.n()
    tps = step.tokens_per_step()
    q = 1 + step.mtp
    bs = sched.block_size
    overhead = step.eng.request_overhead_s
    issued = 0
    arrivals: list[tuple[float, int, _Req]] = []  # heap of (time, id) ready to be scheduled by this replica

    def new_request(t: float) -> _Req:
        nonlocal issued
        r = _Req(issued, _length(wl.isl, rng), max(1, _length(wl.osl, rng)), t)
        r.prompt = r.isl
        issued += 1
        return r

    # prefill pool for P/D
    p_free = [0.0] * (pd.prefill_instances if pd else 0)
    p_queue: deque[_Req] = deque()
    link_free = [0.0]

    def submit(r: _Req) -> None:
        if pd is None:
            heapq.heappush(arrivals, (r.arrival, r.rid, r))
        else:
            p_queue.append(r)

    def run_prefill_pool(until: float) -> None:
        """Advance the prefill instances: FIFO batches up to the token budget, start no later than `until`."""
        assert pd is not None
        while p_queue:
            i = min(range(len(p_free)), key=p_free.__getitem__)
            start = max(p_free[i], p_queue[0].arrival)
            if start > until:
                return
            batch, tokens, pairs = [], 0, 0.0
            while (
                p_queue
                and p_queue[0].arrival <= start
                and (not batch or tokens + p_queue[0].isl <= pd.max_num_batched_tokens)
            ):
                r = p_queue.popleft()
                batch.append(r)
                tokens += r.isl
                pairs += r.isl * (r.isl + 1) / 2
            done = start + pd.prefill.step_s(0, 0, tokens, pairs)
            p_free[i] = done
            for r in batch:
                # the link carries one KV cache at a time (FIFO): transfers queue behind each other; the
                # client's first token comes from the decode worker once the KV cache has landed
                ready = max(done, link_free[0]) + pd.prefill.kv_transfer_s(r.isl, pd.link)
                link_free[0] = ready
                r.first = ready + overhead
                r.last_t = r.first
                r.generated = 1
                r.computed = r.prompt = r.isl
                r.admitted_remote = True
                heapq.heappush(arrivals, (ready, r.rid, r))

    # initial load
    if wl.concurrency:
        for _ in range(min(wl.concurrency, n_total)):
            submit(new_request(0.0))
    else:
        t_arr = 0.0
        rate = float(wl.rate or 1.0)
        while issued < n_total:
            t_arr += rng.expovariate(rate)
            submit(new_request(t_arr))

    t = 0.0
    waiting: deque[_Req] = deque()
    running: list[_Req] = []
    free_blocks = sched.num_blocks
    peak_blocks = 0
    done: list[_Req] = []
    preemptions = 0
    steps = 0
    batch_sum = 0.0
    max_tokens = sched.max_num_batched_tokens

    def finish(r: _Req, t_end: float) -> None:
        nonlocal free_blocks
        r.end = t_end + overhead  # the client sees every token shifted by the request overhead
        free_blocks += r.blocks
        r.blocks = 0
        done.append(r)
        if wl.concurrency and issued < n_total:
            submit(new_request(r.end))

    ahead = step.eng.schedule_ahead_steps
    last_step_start = 0.0
    guard = 0
    while len(done) < n_total:
        guard += 1
        if guard > 50_000_000:
            raise RuntimeError("simulation did not converge (bug): too many epochs")
        if pd is not None:
            run_prefill_pool(t)
        # an engine that schedules ahead (overlap scheduling) has already formed the next batch when the
        # current one ends: a request that arrived during the last step joins one step later; an idle engine
        # takes it at once
        visible = t if not running or ahead == 0 else last_step_start
        while arrivals and arrivals[0][0] <= visible:
            waiting.append(heapq.heappop(arrivals)[2])
        if not running and not waiting and arrivals and arrivals[0][0] <= t:
            waiting.append(heapq.heappop(arrivals)[2])
        if not running and not waiting:
            nxt = [arrivals[0][0]] if arrivals else []
            if pd is not None and p_queue:
                nxt.append(max(min(p_free), p_queue[0].arrival))
            if not nxt:
                raise RuntimeError("simulation stalled: nothing running, waiting or arriving")
            t = max(t, min(nxt))
            continue
        # --- schedule one step (vLLM V1: running first, then waiting) ---
        budget = max_tokens
        decodes = [r for r in running if r.computed >= r.prompt]
        budget -= len(decodes) * q
        chunks: list[tuple[_Req, int]] = []
        for r in running:
            if r.computed < r.prompt and budget > 0:
                c = min(r.prompt - r.computed, budget)
                if not sched.enable_chunked_prefill and c < r.prompt - r.computed:
                    continue
                chunks.append((r, c))
                budget -= c
        while waiting and len(running) < sched.max_num_seqs and budget > 0:
            r = waiting[0]
            need_tokens = r.prompt - r.computed
            c = min(need_tokens, budget)
            if not sched.enable_chunked_prefill and c < need_tokens:
                break
            need_blocks = math.ceil((r.computed + max(c, 1)) / bs) - r.blocks
            if need_blocks > free_blocks:
                break
            waiting.popleft()
            running.append(r)
            if c > 0:
                chunks.append((r, c))
                budget -= c
            else:
                decodes.append(r)
                budget -= q
        # blocks for this step's tokens; preempt the newest running request if short
        while True:
            need = 0
            for r in decodes:
                need += max(0, math.ceil((r.computed + q) / bs) - r.blocks)
            for r, c in chunks:
                need += max(0, math.ceil((r.computed + c) / bs) - r.blocks)
            if need <= free_blocks or len(running) <= 1:
                break
            victim = running.pop()
            free_blocks += victim.blocks
            victim.blocks = 0
            victim.prompt = victim.isl + int(victim.generated)
            victim.computed = 0
            victim.preempted += 1
            preemptions += 1
            waiting.appendleft(victim)
            decodes = [r for r in decodes if r is not victim]
            chunks = [(r, c) for r, c in chunks if r is not victim]
        if not decodes and not chunks:
            # cannot make progress (a single prompt larger than the cache): fail it loudly
            r = running[0] if running else waiting[0]
            raise RuntimeError(
                f"request of {r.isl} input tokens cannot be scheduled: KV cache holds "
                f"{sched.num_blocks * bs} tokens"
            )
        n_dec = len(decodes)
        ctx_sum = float(sum(r.computed for r in decodes))
        n_pre = sum(c for _, c in chunks)
        pairs = sum(c * r.computed + c * (c + 1) / 2 for r, c in chunks)
        # --- epoch length: pure decode stretches advance k steps at once ---
        k = 1
        if not chunks and n_dec:
            k = min(math.ceil((r.osl - r.generated) / tps) for r in decodes)
            if waiting and len(running) < sched.max_num_seqs:
                head = waiting[0]
                c0 = min(head.prompt - head.computed, max_tokens - len(decodes) * q)
                if math.ceil((head.computed + max(c0, 1)) / bs) - head.blocks <= free_blocks:
                    k = 1  # it can be admitted next step
            if arrivals:
                k = min(k, max(1, int((arrivals[0][0] - t) / max(step.step_s(n_dec, ctx_sum), 1e-9))))
            if pd is not None and p_queue:
                k = min(
                    k, max(1, int((max(min(p_free), p_queue[0].arrival) - t) / step.step_s(n_dec, ctx_sum)))
                )
            # free blocks bound: the longest stretch whose new blocks fit in the free ones
            k = max(1, k)
            if _block_needs(decodes, k, q, bs) > free_blocks:
                lo, hi = 1, k
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if _block_needs(decodes, mid, q, bs) <= free_blocks:
                        lo = mid
                    else:
                        hi = mid - 1
                k = lo
        mid_ctx = ctx_sum + n_dec * tps * (k - 1) / 2.0
        dt = step.step_s(n_dec, mid_ctx, n_pre, pairs)
        t_next = t + k * dt
        last_step_start = t_next - dt
        steps += k
        batch_sum += k * (n_dec + len(chunks))
        # --- apply ---
        for r in decodes:
            gained = min(k * tps, r.osl - r.generated)
            r.generated += gained
            r.computed += gained
            nb = math.ceil(r.computed / bs)
            free_blocks -= nb - r.blocks
            r.blocks = nb
            chunks_out = max(1.0, math.ceil(gained / tps))
            r.gaps.append((dt, chunks_out))
            r.last_t = t_next
        for r, c in chunks:
            r.computed += c
            nb = math.ceil(r.computed / bs)
            free_blocks -= nb - r.blocks
            r.blocks = nb
            if r.computed >= r.prompt:
                if r.first is None:
                    r.first = t_next + overhead
                    r.generated = 1
                r.last_t = t_next
        peak_blocks = max(peak_blocks, sched.num_blocks - free_blocks)
        t = t_next
        still = []
        for r in running:
            if r.first is not None and r.generated >= r.osl and r.computed >= r.prompt:
                finish(r, max(t, r.first - overhead))
            else:
                still.append(r)
        running = still

    ttft = [r.first - r.arrival for r in done]  # type: ignore[operator]
    e2e = [r.end - r.arrival for r in done]  # type: ignore[operator]
    tpot = [(r.end - r.first) / (r.osl - 1) for r in done if r.osl > 1]  # type: ignore[operator]
    itl: list[tuple[float, float]] = []
    for r in done:
        itl.extend(r.gaps)
    start = min(r.arrival for r in done)
    end = max(r.end for r in done)  # type: ignore[type-var]
    return SimResult(
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=e2e,
        itl=itl,
        duration_s=end - start,
        output_tokens=sum(r.osl for r in done),
        input_tokens=sum(r.isl for r in done),
        requests=len(done),
        preemptions=preemptions,
        peak_kv_blocks=peak_blocks,
        mean_batch=batch_sum / max(steps, 1),
        steps=steps,
    )


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    i = (len(s) - 1) * p / 100.0
    lo = math.floor(i)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def weighted_percentile(pairs: list[tuple[float, float]], p: float) -> float:
    if not pairs:
        return float("nan")
    s = sorted(pairs)
    total = sum(w for _, w in s)
    target = total * p / 100.0
    acc = 0.0
    for v, w in s:
        acc += w
        if acc >= target:
            return v
    return s[-1][0]
