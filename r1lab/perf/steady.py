"""Analytic steady state of a closed-loop load point: what `simulate` computes, without stepping every request.

For a sweep point (fixed concurrency, fixed lengths, no P/D, a prompt that fits one step beside the decodes, a KV
cache that holds every running sequence whole) the event simulation settles into a cycle that is cheap to follow
in aggregate. Per rank, with C clients, R = min(C, max_num_seqs) running, D = ceil((osl - 1) / tokens per step):
- the first wave (every client sends at t=0; the front end serves them one by one; prefill takes the token budget
  per step, a prompt split over two steps attending to its chunk in the first) is stepped, as the simulation
  schedules it (a few dozen steps);
- with fixed lengths every request finishes D steps after the step that ended its prefill, so requests come back
  in the order (and groups) their prefills ended; only the window from the first return to the last re-prefill
  is stepped (each return through the front end, prefill at the next boundary beside the decodes), the rest of a
  cycle is pure decode of the whole batch, counted, not stepped. Two cycles are stepped (the second from the
  groups the first formed) and the second stands for every later one; C > R: the queue waits by Little's law.
- lock-step attention-DP ranks under EP (one instance inside one node, an engine that schedules step by step, an
  even share of the clients per rank): every rank is followed, each step lasts as long as the slowest rank's
  (the experts see every rank's tokens), a returning request goes to the least-loaded rank as the simulation
  routes it, and up to MAX_CYCLES cycles are stepped, each standing for its own requests (the cross-rank grouping
  of the prefills, which sets TTFT, settles over several cycles).
Every step time is `StepModel.step_s`, the same cost function the simulation calls (one place for each fact), so
a change of the model's physics moves both paths. Every request is measured, as in the simulation (no warm-up).

Agreement with the simulation, checked on a grid (tests/test_perf_steady.py) and printed on the planner's own
points by benchmarks/planner_speed.py: output throughput within THROUGHPUT_TOLERANCE, mean TPOT within
TPOT_TOLERANCE (lock-step ranks: LOCKSTEP_TPOT_TOLERANCE), mean and p99 TTFT within TTFT_TOLERANCE; TTFT p50/p90
can differ more (the waves leave TTFTs in clusters and a percentile can land in the neighbouring one).

`steady_state(...)` returns a `SimResult` like `simulate`, or None where this path does not apply (Poisson or
trace arrivals, length ranges, P/D, lock-step ranks across nodes / of an engine that schedules ahead / with an
uneven share of clients or clients queueing for a slot, preemption possible, a prompt longer than one step's
budget, a cycle whose returns overlap, an output shorter than the first wave's ramp): the caller then simulates.
"""

from __future__ import annotations

import itertools
import math
from statistics import fmean as statistics_mean

from r1lab.perf.ops import StepModel
from r1lab.perf.simulate import SchedulerConfig, SimResult, Workload

MAX_CYCLES = 4  # returning cycles stepped under lock-step ranks
THROUGHPUT_TOLERANCE = 0.06  # |analytic / simulated - 1| of output tokens/s, checked on a grid (tests)
TPOT_TOLERANCE = 0.06  # ... of mean TPOT
# lock-step ranks: the second cycle's window stands for the later ones' in each request's decode, though their
# cross-rank grouping drifts a little (7.0% seen at 8000/256, 2 clients per rank, on the planner's points)
LOCKSTEP_TPOT_TOLERANCE = 0.08
TTFT_TOLERANCE = 0.10  # ... of mean and p99 TTFT (p50 / p90 can fall in a neighbouring cluster of the waves)


def _applies(wl: Workload, sched: SchedulerConfig, ranks: int, rpi: int) -> bool:
    return (
        wl.concurrency is not None
        and wl.rate is None
        and isinstance(wl.isl, int)
        and isinstance(wl.osl, int)
        and wl.osl >= 2
        and sched.enable_chunked_prefill
        # lock-step attention-DP ranks: an even share of the clients each, whole instances
        and wl.concurrency % ranks == 0
        and ranks % rpi == 0
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
    rpi = ranks_per_instance or ranks
    if not _applies(wl, sched, ranks, rpi):
        return None
    assert isinstance(wl.isl, int) and isinstance(wl.osl, int) and wl.concurrency is not None
    isl, osl = wl.isl, wl.osl
    c = wl.concurrency // ranks  # clients per rank (the simulation routes to the least-loaded rank)
    n = wl.n() // ranks  # requests per rank
    coupled = ranks > 1 and step.dep.par.ep
    if step.eng.prefill_first:
        return None  # prefill batches that pause decoding (sglang): simulated
    if ranks > 1 and step.eng.schedule_ahead_steps:
        return None  # lock-step ranks of an engine that schedules ahead: arrivals wait unevenly, simulated
    if ranks > 1 and step.dep.nodes > 1:
        # the experts' all-to-all leaves the node: a prefill's dispatch stalls every rank for long, and which
        # ranks' prefills share a step (the router's interleaving, not followed here in full) sets TPOT
        return None
    q = 1 + step.mtp
    tps = step.tokens_per_step()
    d_steps = math.ceil((osl - 1) / tps)  # decode steps after the prefill step's first token
    bs, budget = sched.block_size, sched.max_num_batched_tokens
    r_run = min(c, sched.max_num_seqs)
    if ranks > 1 and c + 1 > sched.max_num_seqs:
        return None  # lock-step ranks with clients queueing for a slot: simulated
    # under lock-step ranks the router can leave one rank a sequence more than its share for a while
    r_cap = r_run + (1 if ranks > 1 else 0)
    if r_cap * math.ceil((isl + osl + q) / bs) > sched.num_blocks:
        return None  # the cache cannot hold every running sequence whole: preemption, simulate it
    eng = step.eng
    ov = eng.request_overhead_s
    fe = eng.frontend_s + eng.frontend_per_token_s * isl  # the front end serves one request at a time
    ctx_mean = isl + osl / 2.0  # context of a decoding sequence, averaged over its decode
    rr = range(ranks)

    memo: dict[tuple[tuple[int, float, float], ...], float] = {}
    # one rank's step, (decodes, context, prefill tokens, causal pairs, expert tokens) -> seconds: the same step
    # recurs across the waves, cycles and ranks' work of one call (step_s is a pure function of its arguments)
    step_memo: dict[tuple[int, float, float, float, float | None], float] = {}
    step_s = step.step_s

    def lockstep(work: tuple[tuple[int, float, float], ...], ctx: float = ctx_mean) -> float:
        """One lock-step step: rank i runs work[i] = (decodes, prefill tokens, causal pairs), decodes at
        context `ctx` each; the step lasts as long as the slowest rank's (under EP the experts of an instance
        see every rank's tokens); an idle rank joins the all-to-all."""
        if ranks == 1:
            nd, tok, pairs = work[0]
            skey = (nd, ctx, tok, pairs, None)
            v = step_memo.get(skey)
            if v is None:
                v = step_memo[skey] = step_s(nd, nd * ctx, tok, pairs, None)
            return v
        key = (*work, (-1, ctx, 0.0))
        v = memo.get(key)
        if v is None:
            moe = [0.0] * ranks
            if coupled:
                for g0 in range(0, ranks, rpi):
                    tot = float(sum(work[i][0] * q + work[i][1] for i in range(g0, g0 + rpi)))
                    for i in range(g0, g0 + rpi):
                        moe[i] = tot
            v = 0.0
            for i, (nd, tok, pairs) in enumerate(work):
                if nd or tok:  # ranks with the same work take the same time (one step_s, memoised)
                    m = moe[i] if coupled else None
                    rkey = (nd, ctx, tok, pairs, m)
                    s_i = step_memo.get(rkey)
                    if s_i is None:
                        s_i = step_memo[rkey] = step_s(nd, nd * ctx, tok, pairs, m)
                    v = max(v, s_i)
            memo[key] = v
        return v

    def dt(n_dec: float, prompts: int = 0) -> float:
        """A step of n_dec decodes on every rank, `prompts` whole prompts on the first (memoised)."""
        nd = max(0, round(n_dec))
        key1 = ((nd, prompts, 0.0),)
        if ranks == 1 and key1 in memo:
            return memo[key1]
        tok = prompts * isl
        pairs = prompts * isl * (isl + 1) / 2 if prompts else 0.0
        work = ((nd, tok, pairs),) + ((nd, 0, 0.0),) * (ranks - 1)
        v = lockstep(work)
        if ranks == 1:
            memo[key1] = v
        return v

    # --- first wave: every client's first request at t=0, through the front end one by one ---
    # the front end serves clients rank-major (client k of rank i is the (k * ranks + i)-th); prompts enter
    # prefill at the step boundary after they reach the engine, up to the token budget per step and rank
    t, ramp_steps = 0.0, 0
    arrived, admitted, done_pre, decoding = [0] * ranks, [0] * ranks, [0] * ranks, [0] * ranks
    first_ttft: list[list[float]] = [[] for _ in rr]
    first_pre_end: list[list[float]] = [[] for _ in rr]
    first_pre_step: list[list[int]] = [[] for _ in rr]  # ramp steps done when its prefill ended
    queue_tokens: list[list[float]] = [[] for _ in rr]  # remaining prompt tokens of admitted prompts, FIFO
    while min(done_pre) < r_run:
        for i in rr:
            while arrived[i] < r_run and (arrived[i] * ranks + i + 1) * fe <= t + 1e-12:
                arrived[i] += 1
        if all(admitted[i] == done_pre[i] and not queue_tokens[i] and arrived[i] == admitted[i] for i in rr):
            # idle: wait for the next arrival
            t = max(t, min((arrived[i] * ranks + i + 1) * fe for i in rr if arrived[i] < r_run))
            continue
        work = []
        chunks_of: list[list[float]] = []
        for i in rr:
            while admitted[i] < arrived[i]:
                queue_tokens[i].append(float(isl))
                admitted[i] += 1
            room: float = budget - decoding[i] * q
            chunks: list[float] = []
            for x in queue_tokens[i]:
                if room <= 0:
                    break
                take = min(x, room)
                chunks.append(take)
                room -= take
            chunks_of.append(chunks)
            # a chunk attends to the prompt's tokens computed before it as well as causally to itself
            pairs = sum(
                (isl - r) * x + x * (x + 1) / 2 for r, x in zip(queue_tokens[i], chunks, strict=False)
            )
            work.append((decoding[i], sum(chunks), pairs))
        t += lockstep(tuple(work), isl + ramp_steps / 2.0)
        ramp_steps += 1
        for i in rr:
            qt = queue_tokens[i]
            for j, x in enumerate(chunks_of[i]):
                qt[j] -= x
            while qt and qt[0] <= 0:
                qt.pop(0)
                first_ttft[i].append(t + ov)
                first_pre_end[i].append(t)
                first_pre_step[i].append(ramp_steps)
                done_pre[i] += 1
                decoding[i] += 1
        if ramp_steps > d_steps:
            return None  # a request would finish inside the ramp: not the regime modelled here
    # --- steady state: one cycle of the returning requests, stepped in aggregate ---
    # With fixed lengths every request finishes D steps after the step that ended its prefill, so requests come
    # back in the order (and the groups) their prefills ended. Each comes back through the front end (one at a
    # time, every rank's) and enters prefill on its rank at the next step boundary with whatever else has
    # arrived there, while the rest decode. Only the steps from the first return to the last re-prefill (the
    # window) are stepped; the others are pure decode steps of the whole batch. The cycle is stepped twice (the
    # second from the groups the first formed).
    if r_run * q + isl > budget:
        # a prompt needs more than one step beside the decodes: throughput, TPOT and TTFT would follow (checked),
        # but the window's chunked steps weigh ITL unlike the simulation (mean ITL up to 50% off): simulated
        return None
    queued = c > r_run  # a finished slot is refilled at once from the queue (no front end in between)
    dt_pure = dt(r_run)
    members = r_run * ranks
    Cycle = tuple[list[list[int]], list[list[float]], list[list[int]], list[tuple[float, float, float]]]

    def cycle(pre: list[list[int]]) -> Cycle | None:
        """(new prefill step per member of each rank, their TTFTs, the window step each prefilled in, window
        steps as (seconds, count, decoders of every rank)) from last cycle's prefill steps `pre` (ascending)."""
        finish = sorted((p + d_steps, i, j) for i in rr for j, p in enumerate(pre[i]))
        s, t, last_start, fi, done = finish[0][0], 0.0, 0.0, 0, 0
        count = [len(p) for p in pre]  # members on each rank (decoding, prefilling or on their way)
        gap = [0] * ranks  # members of each rank not decoding (on their way or prefilling)
        fe_free = -math.inf
        pending: list[list[tuple[float, float]]] = [[] for _ in rr]  # (reaches the engine, sent), FIFO
        pi = [0] * ranks
        prefilling: list[list[list[float]]] = [[] for _ in rr]  # [tokens left, sent]
        new_pre: list[list[int]] = [[] for _ in rr]
        ttfts: list[list[float]] = [[] for _ in rr]
        own: list[list[int]] = [[] for _ in rr]
        window: list[tuple[float, float, float]] = []
        not_ahead = eng.schedule_ahead_steps == 0
        while done < members:
            for i in rr:
                visible = t if not_ahead or gap[i] == count[i] else last_start
                pend = pending[i]
                while pi[i] < len(pend) and pend[pi[i]][0] <= visible + 1e-12:
                    prefilling[i].append([float(isl), pend[pi[i]][1]])
                    pi[i] += 1
            n_dec = [count[i] - gap[i] for i in rr]
            nxt = min((pending[i][pi[i]][0] for i in rr if pi[i] < len(pending[i])), default=math.inf)
            no_pf = not any(prefilling)
            if no_pf and not any(n_dec):
                t = max(t, nxt)  # idle: the next arrival starts a step at once
                continue
            if no_pf and nxt > t and fi < members and finish[fi][0] > s:
                # pure decode until the next return or the next arrival
                k = finish[fi][0] - s
                d = lockstep(tuple((nd, 0, 0.0) for nd in n_dec))
                if nxt < math.inf:
                    k = min(k, max(1, int((nxt - t) / d)))
                window.append((d, float(k), float(sum(n_dec))))
                last_start = t + (k - 1) * d
                t += k * d
                s += k
                continue
            work = []
            chunks_of: list[list[float]] = []
            for i in rr:
                room: float = budget - n_dec[i] * q
                chunks: list[float] = []
                for x in prefilling[i]:
                    if room <= 0:
                        break
                    x0 = x[0]
                    take = room if room < x0 else x0  # min(x0, room)
                    chunks.append(take)
                    room -= take
                chunks_of.append(chunks)
                pairs = sum(
                    (isl - x[0]) * ch + ch * (ch + 1) / 2
                    for x, ch in zip(prefilling[i], chunks, strict=False)
                )
                work.append((n_dec[i], sum(chunks), pairs))
            d = lockstep(tuple(work))
            last_start = t
            t += d
            window.append((d, 1.0, float(sum(n_dec))))
            for i in rr:
                pf = prefilling[i]
                for x, ch in zip(pf, chunks_of[i], strict=False):
                    x[0] -= ch
                while pf and pf[0][0] <= 0:
                    sent = pf.pop(0)[1]
                    ttfts[i].append(t + ov - sent)
                    new_pre[i].append(s)
                    own[i].append(len(window) - 1)
                    gap[i] -= 1
                    done += 1
            # these decoded their last token in this step; each client sends its next request at once, through
            # the front end, to the least-loaded rank (lowest first), as the simulation routes it: a rank's
            # finished requests still count on it until all of them are done
            while fi < members and finish[fi][0] == s:
                i = finish[fi][1]
                gone = 0
                while fi < members and finish[fi][0] == s and finish[fi][1] == i:
                    sent = t + ov
                    at = sent if queued else max(sent, fe_free) + fe
                    fe_free = at
                    dest = 0 if ranks == 1 else min(rr, key=count.__getitem__)
                    pending[dest].append((at, sent))
                    count[dest] += 1
                    gap[dest] += 1
                    gone += 1
                    fi += 1
                count[i] -= gone
            s += 1
            if fi < members and finish[fi][0] < s:
                return None  # bookkeeping guard (a return inside a jumped stretch): simulate
        if max(p[-1] for p in new_pre if p) - finish[0][0] >= d_steps:
            return None  # the window is longer than a decode: returns overlap, not modelled here
        return new_pre, ttfts, own, window

    pre = first_pre_step
    starts: list[int] = []
    got = None
    # one rank: two cycles (the second stands for every later one); lock-step ranks: the cross-rank grouping
    # of prefills settles more slowly, so up to MAX_CYCLES are stepped, each standing for its own requests
    n_cycles = 2 if ranks == 1 else max(2, min(MAX_CYCLES, math.ceil(n / c) - 1))
    cycle_ttfts: list[list[float]] = []
    for _ in range(n_cycles):
        got = cycle(pre)
        if got is None:
            return None
        starts.append(min(p[0] for p in got[0] if p))
        pre = got[0]
        cycle_ttfts.append([x for v in got[1] for x in v])
    starts = starts[-2:]
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
    dec_ss: list[list[float]] = []
    offs = (0, period, 2 * period)
    for own_i in own:
        dec_i = []
        for o in own_i:
            r = first[o]
            dur, cnt = 0.0, 0
            r1, rd = r + 1, r + d_steps
            for off in offs:
                top = off + w_steps - 1
                lo, hi = (r1 if r1 > off else off), (rd if rd < top else top)  # max(off, r1), min(top, rd)
                if lo <= hi:
                    dur += cum[hi - off + 1] - cum[lo - off]
                    cnt += hi - lo + 1
            dec_i.append(dur + (d_steps - cnt) * dt_pure)
        dec_ss.append(dec_i)
    pure_steps = period - w_steps  # per cycle, for the ITL weights and the mean batch
    all_ttft = [x for v in ttft_ss for x in v]
    all_dec = [x for v in dec_ss for x in v]
    cyc_mean = statistics_mean(all_ttft) + statistics_mean(all_dec)
    if c > r_run:  # the queue holds c - r_run; each waits its turn (Little's law: X = r_run / cycle)
        queue_wait = (c - r_run) * cyc_mean / r_run
        ttft_ss = [[x + queue_wait + fe for x in v] for v in ttft_ss]
        cyc_mean = statistics_mean([x for v in ttft_ss for x in v]) + statistics_mean(all_dec)
    decode_s = statistics_mean(all_dec)
    # first wave: a request decodes through the rest of the ramp, then beside every other first-wave request
    # (nobody has come back yet); clients beyond the running slots wait for the first finishers
    ramp_end = t
    ttft: list[float] = []
    e2e: list[float] = []
    tpot: list[float] = []
    first_e2e = 0.0
    for ri in rr:
        for i in range(c):
            if i < r_run:
                t1 = first_ttft[ri][i]
                dec = (
                    ramp_end
                    - first_pre_end[ri][i]
                    + (d_steps - (ramp_steps - first_pre_step[ri][i])) * dt_pure
                )
            else:
                j = i - r_run
                t1 = first_pre_end[ri][j % r_run] + (1 + j // r_run) * (decode_s + ov) + dt(r_run - 1, 1) + ov
                dec = decode_s
            ttft.append(t1)
            e2e.append(t1 + dec)
            tpot.append(dec / (osl - 1))
            first_e2e = max(first_e2e, t1 + dec)
    flat_ttft = [x for v in ttft_ss for x in v]  # members in rank order (they move between ranks)
    flat_dec = [x for v in dec_ss for x in v]
    # the later requests, `members` at a time (request k is member k % members of cycle k // members)
    later = (n - c) * ranks
    flat_tpot = [x / (osl - 1) for x in flat_dec]
    e2e_of: dict[int, list[float]] = {}  # id of a TTFT list -> its members' e2e
    for ci in range(math.ceil(later / members)):
        m_n = min(members, later - ci * members)
        src = flat_ttft if ranks == 1 or ci >= len(cycle_ttfts) - 1 else cycle_ttfts[ci]
        src_e2e = e2e_of.get(id(src))
        if src_e2e is None:
            src_e2e = e2e_of[id(src)] = [t1 + x for t1, x in zip(src, flat_dec, strict=True)]
        ttft.extend(src[:m_n])
        e2e.extend(src_e2e[:m_n])
        tpot.extend(flat_tpot[:m_n])
    duration = first_e2e + (math.ceil(n / c) - 1) * cyc_mean
    # gaps between chunks: the window's steps and the pure decode steps, weighted by the decoders in them
    cycles = max(1.0, n / r_run)
    itl_w: dict[float, float] = {}
    for d, k, nd in window:
        itl_w[d] = itl_w.get(d, 0.0) + k * nd * cycles
    itl_w[dt_pure] = itl_w.get(dt_pure, 0.0) + max(0.0, pure_steps) * members * cycles
    itl = sorted((g, w) for g, w in itl_w.items() if w > 0)
    total_steps = int(n * d_steps)
    busy = sum(k * nd for _, k, nd in window) / ranks + max(0.0, pure_steps) * r_run
    mean_batch = busy / max(w_steps + max(0.0, pure_steps), 1.0)
    return SimResult(
        ttft_s=ttft,
        tpot_s=tpot,
        e2e_s=e2e,
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
