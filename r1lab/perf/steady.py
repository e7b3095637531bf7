"""Analytic steady state of a closed-loop load point: what `simulate` computes, without stepping every request.

For a sweep point (fixed concurrency, fixed lengths, one engine rank, no P/D, a prompt that fits one step beside
the decodes, a KV cache that holds every running sequence whole) the event simulation settles into a cycle that is
cheap to follow in aggregate. Per rank, with C clients, R = min(C, max_num_seqs) running, D = ceil((osl - 1) /
tokens per step):
- the first wave (every client sends at t=0; the front end serves them one by one; prefill takes the token budget
  per step) is stepped prompt by prompt, as the simulation schedules it (a few dozen steps);
- with fixed lengths every request finishes D steps after the step that ended its prefill, so requests come back
  in the order (and groups) their prefills ended; only the window from the first return to the last re-prefill
  is stepped (each return through the front end, prefill at the next boundary beside the decodes), the rest of a
  cycle is pure decode of the whole batch, counted, not stepped. Two cycles are stepped (the second from the
  groups the first formed) and the second stands for every later one; C > R: the queue waits by Little's law.
Every step time is `StepModel.step_s`, the same cost function the simulation calls (one place for each fact), so
a change of the model's physics moves both paths. Every request is measured, as in the simulation (no warm-up).

Agreement with the simulation, checked on a grid (tests/test_perf_steady.py) and printed on the planner's own
points by benchmarks/planner_speed.py: output throughput within THROUGHPUT_TOLERANCE, mean TPOT within
TPOT_TOLERANCE, mean and p99 TTFT within TTFT_TOLERANCE; TTFT p50/p90 can differ more (the waves leave TTFTs in
clusters and a percentile can land in the neighbouring one).

`steady_state(...)` returns a `SimResult` like `simulate`, or None where this path does not apply (Poisson or
trace arrivals, length ranges, P/D, lock-step attention-DP ranks, preemption possible, a prompt longer than one
step's budget, a cycle whose returns overlap, an output shorter than the first wave's ramp): the caller then
simulates.
"""

from __future__ import annotations

import itertools
import math
from statistics import fmean as statistics_mean

from r1lab.perf.ops import StepModel
from r1lab.perf.simulate import SchedulerConfig, SimResult, Workload

THROUGHPUT_TOLERANCE = 0.06  # |analytic / simulated - 1| of output tokens/s, checked on a grid (tests)
TPOT_TOLERANCE = 0.06  # ... of mean TPOT
TTFT_TOLERANCE = 0.10  # ... of mean and p99 TTFT (p50 / p90 can fall in a neighbouring cluster of the waves)


def _applies(wl: Workload, sched: SchedulerConfig, ranks: int) -> bool:
    return (
        wl.concurrency is not None
        and wl.rate is None
        and isinstance(wl.isl, int)
        and isinstance(wl.osl, int)
        and wl.osl >= 2
        and sched.enable_chunked_prefill
        and ranks == 1  # lock-step attention-DP ranks: their prefills stall each other unevenly, simulated
    )


def steady_state(
    step: StepModel,
    wl: Workload,
    sched: SchedulerConfig,
    ranks: int = 1,
    ranks_per_instance: int | None = None,
) -> SimResult | None:
    """The closed-loop steady state of `wl` on `ranks` lock-step ranks (as `simulate(step, wl, sched, None,
    ranks, ranks_per_instance)`), or None where the analytic path does not apply."""
    if not _applies(wl, sched, ranks):
        return None
    assert isinstance(wl.isl, int) and isinstance(wl.osl, int) and wl.concurrency is not None
    isl, osl = wl.isl, wl.osl
    c = wl.concurrency // ranks  # clients per rank (the simulation routes to the least-loaded rank)
    n = wl.n() // ranks  # requests per rank
    rpi = ranks_per_instance or ranks
    coupled = ranks > 1 and step.dep.par.ep
    q = 1 + step.mtp
    tps = step.tokens_per_step()
    d_steps = math.ceil((osl - 1) / tps)  # decode steps after the prefill step's first token
    bs, budget = sched.block_size, sched.max_num_batched_tokens
    r_run = min(c, sched.max_num_seqs)
    if r_run * math.ceil((isl + osl + q) / bs) > sched.num_blocks:
        return None  # the cache cannot hold every running sequence whole: preemption, simulate it
    eng = step.eng
    ov = eng.request_overhead_s
    fe = eng.frontend_s + eng.frontend_per_token_s * isl  # the front end serves one request at a time
    ctx_mean = isl + osl / 2.0  # context of a decoding sequence, averaged over its decode

    memo: dict[tuple[int, int, float | None], float] = {}

    def dt(n_dec: float, prompts: int, chunk: float | None = None) -> float:
        """One step of n_dec decodes and `prompts` prefill chunks of `chunk` tokens (default: whole prompts)."""
        nd = max(0, round(n_dec))
        key = (nd, prompts, chunk)
        if key in memo:
            return memo[key]
        tok = prompts * (isl if chunk is None else chunk)
        pairs = prompts * (tok / max(prompts, 1)) * ((tok / max(prompts, 1)) + 1) / 2 if prompts else 0.0
        moe = None
        if coupled:  # every rank of the instance brings its tokens to the experts
            moe = float(rpi * (nd * q + tok))
        memo[key] = v = step.step_s(nd, nd * ctx_mean, tok, pairs, moe)
        return v

    # --- first wave: every client's first request at t=0, through the front end one by one ---
    # prompts enter prefill at the step boundary after they reach the engine, up to the token budget per step
    t, done_pre, decoding = 0.0, 0, 0
    first_ttft: list[float] = []
    first_pre_end: list[float] = []
    first_pre_step: list[int] = []  # ramp steps done when its prefill ended
    queue_tokens: list[float] = []  # remaining prompt tokens of admitted prompts, FIFO
    arrived = 0
    ramp_steps = 0
    admitted = 0
    while done_pre < r_run:
        # arrivals at the engine: rank-major interleaving of the shared front end (clients of all ranks)
        while arrived < r_run and (arrived * ranks + 1) * fe <= t + 1e-12:
            arrived += 1
        if admitted == done_pre and not queue_tokens and arrived == admitted:
            t = max(t, (arrived * ranks + 1) * fe)  # idle: wait for the next arrival
            continue
        while admitted < arrived:
            queue_tokens.append(float(isl))
            admitted += 1
        room: float = budget - decoding * q
        chunks: list[float] = []
        for i in range(len(queue_tokens)):
            if room <= 0:
                break
            take = min(queue_tokens[i], room)
            chunks.append(take)
            room -= take
        tok = sum(chunks)
        pairs = sum(x * (x + 1) / 2 for x in chunks)
        moe = float(rpi * (decoding * q + tok)) if coupled else None
        t += step.step_s(decoding, decoding * (isl + ramp_steps / 2.0), tok, pairs, moe)
        ramp_steps += 1
        for i, x in enumerate(chunks):
            queue_tokens[i] -= x
        while queue_tokens and queue_tokens[0] <= 0:
            queue_tokens.pop(0)
            first_ttft.append(t + ov)
            first_pre_end.append(t)
            first_pre_step.append(ramp_steps)
            done_pre += 1
            decoding += 1
        if ramp_steps > d_steps:
            return None  # a request would finish inside the ramp: not the regime modelled here
    # --- steady state: one cycle of the returning requests, stepped in aggregate ---
    # With fixed lengths every request finishes D steps after the step that ended its prefill, so requests come
    # back in the order (and the groups) their prefills ended. Each comes back through the front end (one at a
    # time) and enters prefill at the next step boundary with whatever else has arrived, while the rest decode.
    # Only the steps from the first return to the last re-prefill (the window) are stepped; the others are pure
    # decode steps of the whole batch. The cycle is stepped twice (the second from the groups the first formed).
    if r_run * q + isl > budget:
        return None  # a prompt needs more than one step beside the decodes: not modelled here
    fe_eff = fe * ranks  # the front end also serves the other ranks' clients, interleaved
    queued = c > r_run  # a finished slot is refilled at once from the queue (no front end in between)
    dt_pure = dt(r_run, 0)

    def cycle(
        pre: list[int],
    ) -> tuple[list[int], list[float], list[int], list[tuple[float, float, float]]] | None:
        """(new prefill step per member, their TTFTs, the window step each prefilled in, window steps as
        (seconds, count, decoders)) from last cycle's prefill steps `pre` (ascending)."""
        finish = [p + d_steps for p in pre]
        s, t, last_start, fi, gap, done = finish[0], 0.0, 0.0, 0, 0, 0
        fe_free = -math.inf
        pending: list[tuple[float, float]] = []  # (reaches the engine, sent), front-end order
        pi = 0
        prefilling: list[list[float]] = []  # [tokens left, sent]
        new_pre: list[int] = []
        ttfts: list[float] = []
        own: list[int] = []
        window: list[tuple[float, float, float]] = []
        while done < r_run:
            visible = t if eng.schedule_ahead_steps == 0 or gap == r_run else last_start
            while pi < len(pending) and pending[pi][0] <= visible + 1e-12:
                prefilling.append([float(isl), pending[pi][1]])
                pi += 1
            n_dec = r_run - gap
            if not prefilling and n_dec == 0:
                t = max(t, pending[pi][0])  # idle: the next arrival starts a step at once
                continue
            if (
                not prefilling
                and (pi == len(pending) or pending[pi][0] > t)
                and fi < r_run
                and finish[fi] > s
            ):
                # pure decode until the next return or the next arrival
                k = finish[fi] - s
                if pi < len(pending):
                    k = min(k, max(1, int((pending[pi][0] - t) / dt(n_dec, 0))))
                d = dt(n_dec, 0)
                window.append((d, float(k), float(n_dec)))
                last_start = t + (k - 1) * d
                t += k * d
                s += k
                continue
            room: float = budget - n_dec * q
            chunks: list[float] = []
            for x in prefilling:
                if room <= 0:
                    break
                take = min(x[0], room)
                chunks.append(take)
                room -= take
            tok = sum(chunks)
            pairs = sum(
                (isl - x[0]) * ch + ch * (ch + 1) / 2 for x, ch in zip(prefilling, chunks, strict=False)
            )
            moe = float(rpi * (n_dec * q + tok)) if coupled else None
            d = step.step_s(n_dec, n_dec * ctx_mean, tok, pairs, moe)
            last_start = t
            t += d
            window.append((d, 1.0, float(n_dec)))
            for x, ch in zip(prefilling, chunks, strict=False):
                x[0] -= ch
            while prefilling and prefilling[0][0] <= 0:
                sent = prefilling.pop(0)[1]
                ttfts.append(t + ov - sent)
                new_pre.append(s)
                own.append(len(window) - 1)
                gap -= 1
                done += 1
            while fi < r_run and finish[fi] == s:  # these decoded their last token in this step
                sent = t + ov
                at = sent if queued else max(sent, fe_free) + fe_eff
                fe_free = at
                pending.append((at, sent))
                gap += 1
                fi += 1
            s += 1
            if fi < r_run and finish[fi] < s:
                return None  # bookkeeping guard (a return inside a jumped stretch): simulate
        if new_pre[-1] - finish[0] >= d_steps:
            return None  # the window is longer than a decode: returns overlap, not modelled here
        return new_pre, ttfts, own, window

    pre = list(first_pre_step)
    starts: list[int] = []
    got = None
    for _ in range(2):
        got = cycle(pre)
        if got is None:
            return None
        starts.append(got[0][0])
        pre = got[0]
    assert got is not None
    _, ttft_ss, own, window = got
    period = starts[1] - starts[0]  # steps from one cycle's window to the next
    w_steps = int(sum(k for _, k, _ in window))
    if w_steps > d_steps + 1 or period < w_steps:
        return None
    # a member decodes the D steps after its own prefill step: the rest of this window, the pure steps between,
    # and the part of the next cycle's window before it finishes (the pattern repeats every `period` steps)
    per_step = [d for d, k, _ in window for _ in range(int(k))]
    cum = [0.0, *itertools.accumulate(per_step)]
    first = [0]
    for _, k, _ in window:
        first.append(first[-1] + int(k))
    dec_ss = []
    for o in own:
        r = first[o]
        dur, cnt = 0.0, 0
        for off in (0, period, 2 * period):
            lo, hi = max(off, r + 1), min(off + w_steps - 1, r + d_steps)
            if lo <= hi:
                dur += cum[hi - off + 1] - cum[lo - off]
                cnt += hi - lo + 1
        dec_ss.append(dur + (d_steps - cnt) * dt_pure)
    pure_steps = period - w_steps  # per cycle, for the ITL weights and the mean batch
    queue_wait = 0.0
    cyc_mean = statistics_mean(ttft_ss) + statistics_mean(dec_ss)
    if c > r_run:  # the queue holds c - r_run; each waits its turn (Little's law: X = r_run / cycle)
        queue_wait = (c - r_run) * cyc_mean / r_run
        ttft_ss = [x + queue_wait + fe for x in ttft_ss]
        cyc_mean = statistics_mean(ttft_ss) + statistics_mean(dec_ss)
    decode_s = statistics_mean(dec_ss)
    # first wave: a request decodes through the rest of the ramp, then beside every other first-wave request
    # (nobody has come back yet); clients beyond the running slots wait for the first finishers
    ramp_end = t
    ttft: list[float] = []
    e2e: list[float] = []
    tpot: list[float] = []
    for i in range(c):
        if i < r_run:
            t1 = first_ttft[i]
            dec = ramp_end - first_pre_end[i] + (d_steps - (ramp_steps - first_pre_step[i])) * dt_pure
        else:
            j = i - r_run
            t1 = first_pre_end[j % r_run] + (1 + j // r_run) * (decode_s + ov) + dt(r_run - 1, 1) + ov
            dec = decode_s
        ttft.append(t1)
        e2e.append(t1 + dec)
        tpot.append(dec / (osl - 1))
    for k in range(n - c):
        m = k % r_run
        ttft.append(ttft_ss[m])
        e2e.append(ttft_ss[m] + dec_ss[m])
        tpot.append(dec_ss[m] / (osl - 1))
    duration = max(e2e[:c]) + (math.ceil(n / c) - 1) * cyc_mean
    # gaps between chunks: the window's steps and the pure decode steps, weighted by the decoders in them
    cycles = max(1.0, n / r_run)
    itl_w: dict[float, float] = {}
    for d, k, nd in window:
        itl_w[d] = itl_w.get(d, 0.0) + k * nd * cycles * ranks
    itl_w[dt_pure] = itl_w.get(dt_pure, 0.0) + max(0.0, pure_steps) * r_run * cycles * ranks
    itl = sorted((g, w) for g, w in itl_w.items() if w > 0)
    total_steps = int(n * d_steps)
    busy = sum(k * nd for _, k, nd in window) + max(0.0, pure_steps) * r_run
    mean_batch = busy / max(w_steps + max(0.0, pure_steps), 1.0)
    return SimResult(
        ttft_s=ttft * ranks,
        tpot_s=tpot * ranks,
        e2e_s=e2e * ranks,
        itl=itl,
        duration_s=duration,
        output_tokens=n * osl * ranks,
        input_tokens=n * isl * ranks,
        requests=n * ranks,
        preemptions=0,
        peak_kv_blocks=r_run * math.ceil((isl + osl) / bs),
        mean_batch=mean_batch,
        steps=total_steps,
    )
