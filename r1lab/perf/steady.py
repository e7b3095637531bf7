"""Analytic steady state of a closed-loop load point: what `simulate` computes, without stepping every request.

For a sweep point (fixed concurrency, fixed lengths, no P/D, a prompt that fits one step beside the decodes, a KV
cache that holds every running sequence whole) the event simulation settles into a pattern a few equations
describe. Per engine rank, with C clients, R = min(C, max_num_seqs) running, D = ceil((osl - 1) / tokens per step):
- the first wave (every client sends at t=0; the front end serves them one by one; prefill takes the token budget
  per step) is stepped in aggregate, prompt by prompt, as the simulation schedules it;
- requests whose prefill ended in the same step finish together and return together (a cohort, the sizes the
  first wave gave); a cohort's members pass the front end one by one and enter prefill at the next step boundary
  while the others decode; the decodes see every other cohort's mixed steps once per cycle;
- the decode batch n_dec = R x decode time / cycle, solved by fixed-point iteration; C > R: the queue (C - R) waits
  its turn by Little's law.
Every step time is `StepModel.step_s`, the same cost function the simulation calls (one place for each fact).
Every request is measured, as the simulation measures them (no warm-up cut).

Agreement with the simulation (tests/test_perf_steady.py checks it on a grid; benchmarks/planner_speed.py prints
it on the planner's own points): output throughput and mean TPOT within THROUGHPUT_TOLERANCE / TPOT_TOLERANCE;
TTFT does NOT agree as well: its p99 (the first wave) is close, its mean and median come out up to ~60 % lower,
because the simulation's fixed lengths keep requests in lock-step waves whose prefills pile up in a way this
model does not follow. Hence the planner simulates by default and takes this path only when asked
(`r1lab plan --method auto`).

`steady_state(...)` returns a `SimResult` like `simulate`, or None where this path does not apply (Poisson or
trace arrivals, length ranges, P/D, preemption possible, a rank's load that does not divide evenly, a prompt longer
than one step's budget, an output shorter than the first wave's prefill ramp): the caller then simulates.
"""

from __future__ import annotations

import math
from statistics import fmean as statistics_mean

from r1lab.perf.ops import StepModel
from r1lab.perf.simulate import SchedulerConfig, SimResult, Workload

ITERATIONS = 30  # fixed-point iterations at most (stops when the decode batch moves by < 0.001)
THROUGHPUT_TOLERANCE = 0.15  # |analytic / simulated - 1| of output tokens/s, checked on a grid
TPOT_TOLERANCE = 0.15  # ... of mean TPOT


def _applies(wl: Workload, sched: SchedulerConfig, ranks: int) -> bool:
    return (
        wl.concurrency is not None
        and wl.rate is None
        and isinstance(wl.isl, int)
        and isinstance(wl.osl, int)
        and wl.osl >= 2
        and sched.enable_chunked_prefill
        and wl.concurrency % ranks == 0
        and wl.n() % ranks == 0
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
    # --- steady state ---
    # Requests whose prefill ended in the same step finish in the same step (fixed lengths) and come back
    # together: a cohort. Its members pass the front end one by one and enter prefill at the step boundaries
    # after they reach the engine, while the others decode. Cohorts keep the sizes the first wave gave them.
    cohorts: list[int] = []
    for k, te in enumerate(first_pre_end):
        if k and te == first_pre_end[k - 1]:
            cohorts[-1] += 1
        else:
            cohorts.append(1)
    if (
        c > r_run
    ):  # slots refilled at once from the queue: one cohort per finishing group, no front-end spread
        fe_cohort = 0.0
    else:
        fe_cohort = fe
    single = len(cohorts) == 1 and c <= r_run  # nothing else runs while the cohort is away: the engine idles
    if r_run * q + isl > budget:
        return None  # a prompt needs more than one step beside the decodes: not modelled here
    per_step = max(1, int((budget - r_run * q) // isl))

    def cohort(g: int, n_dec: float, dt_d: float) -> tuple[list[float], list[float]]:
        """TTFTs of a returning cohort's members (from their arrival) and the mixed steps it causes."""
        arr = [ov + (k + 1) * fe_cohort for k in range(g)]
        boundary, k, ttfts, mixed = 0.0, 0, [], []
        while k < g:
            m = 0
            while k + m < g and arr[k + m] <= boundary + 1e-12 and m < per_step:
                m += 1
            if m == 0:
                boundary = arr[k] if single else boundary + dt_d * math.ceil((arr[k] - boundary) / dt_d)
                continue
            step = dt(min(n_dec, r_run - g), m)  # the cohort's own members are not decoding
            boundary += step
            ttfts += [boundary] * m  # sent at `ov` (its last request's end), first token `ov` after the step
            mixed.append(step)
            k += m
        return ttfts, mixed

    n_dec = float(r_run)
    dt_d = dt(n_dec, 0)
    ttft_ss: list[float] = []
    mixed_all: list[float] = []
    for _ in range(ITERATIONS):
        dt_d = dt(n_dec, 0)
        ttft_ss, mixed_all = [], []
        for g in cohorts:
            tt, mx = cohort(g, n_dec, dt_d)
            ttft_ss += tt
            mixed_all += mx
        t_mixed = sum(mixed_all)
        # one cycle of every cohort: the mixed steps they cause, decode steps in between
        dec_time = d_steps * dt_d + t_mixed  # a decoder sees every other cohort's mixed steps once
        dec_time -= t_mixed * (1.0 / len(cohorts))  # ... but not its own
        queue = 0.0
        cyc = statistics_mean(ttft_ss) + ov + dec_time
        if c > r_run:
            queue = (c - r_run) * cyc / r_run  # Little's law: the queue holds c - r_run, X = r_run / cycle
        new_nd = min(float(r_run), r_run * dec_time / cyc)
        if abs(new_nd - n_dec) < 1e-3:
            n_dec = new_nd
            break
        n_dec = 0.5 * (n_dec + new_nd)
    decode_s = dec_time
    tpot_ss = decode_s / (osl - 1)
    ttft_ss = [x + queue + (fe if c > r_run else 0.0) for x in ttft_ss]
    # first wave: a request decodes through the rest of the ramp, then beside every other first-wave request
    # (nobody has come back yet); clients beyond the running slots wait for the first finishers
    ramp_end, dt_full = t, dt(r_run, 0)
    ttft: list[float] = []
    e2e: list[float] = []
    tpot: list[float] = []
    for i in range(c):
        if i < r_run:
            t1 = first_ttft[i]
            dec = ramp_end - first_pre_end[i] + (d_steps - (ramp_steps - first_pre_step[i])) * dt_full
        else:
            j = i - r_run
            t1 = first_pre_end[j % r_run] + (1 + j // r_run) * (decode_s + ov) + dt(n_dec, 1) + ov
            dec = decode_s
        ttft.append(t1)
        e2e.append(t1 + dec)
        tpot.append(dec / (osl - 1))
    rest = n - c
    for k in range(rest):
        x = ttft_ss[k % len(ttft_ss)]
        ttft.append(x)
        e2e.append(x + decode_s)
        tpot.append(tpot_ss)
    cyc_ss = statistics_mean(ttft_ss) + decode_s
    duration = max(e2e[:c]) + (math.ceil(n / c) - 1) * cyc_ss
    total_steps = n * d_steps
    share_mixed = min(1.0, (len(mixed_all) * (1.0 - 1.0 / len(cohorts))) / max(d_steps, 1))
    mean_mixed = sum(mixed_all) / max(len(mixed_all), 1)
    itl = [(dt_d, (1.0 - share_mixed) * total_steps * ranks), (mean_mixed, share_mixed * total_steps * ranks)]
    itl = [(g, w) for g, w in itl if w > 0]
    per_mixed = len(first_pre_end) / max(len(mixed_all), 1)
    f = share_mixed
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
        mean_batch=min(r_run, n_dec + f * per_mixed),
        steps=total_steps,
    )
