"""Discrete-event simulation of continuous batching as vLLM V1 schedules it, and of P/D disaggregation.

One engine replica (one DP rank), step by step (an engine that schedules one step ahead, `schedule_ahead_steps`,
admits a request that arrived during a running step only into the step after the next): running requests decode one token each (1 + MTP drafts), requests
in prefill take chunks of their prompt within `max_num_batched_tokens`, waiting requests are admitted while
`max_num_seqs` and free KV blocks allow (blocks of `block_size` tokens, allocated as tokens are computed); when a
decode needs a block and none is free, the newest running request is preempted (recomputed later, vLLM's
default). Step times come from `ops.StepModel`. Stretches where nothing but decoding happens are advanced in one
epoch (same batch, context growing: time at the midpoint), so a run costs O(events), not O(tokens); with MTP off
the decoding requests are kept as offsets from their rank's decode steps (`_Decoding`: context sum, blocks held and
the next to end in O(log n)), so an epoch costs O(log batch), not several passes over the batch.

P/D (`PDConfig`): prompts go to a pool of prefill instances (FIFO, batched up to the token budget), the KV cache
crosses `link` before the decode replica admits the request, and the first token leaves the decode worker
(`EngineConstants.pd_first_token`).

Public interface: `Workload`, `SchedulerConfig`, `PDConfig`, `simulate(step, workload, sched, pd) -> SimResult`.
"""

from __future__ import annotations

import bisect
import gc
import itertools
import math
import random
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass
from heapq import heappop, heappush

try:
    import cython  # compile-time in the native build: `cython.compiled` picks a function's C loop there
except ImportError:  # pure Python without Cython installed
    from r1lab.perf._native import cython

from r1lab.perf import _native
from r1lab.perf.network import Link
from r1lab.perf.ops import StepModel

COMPILED = not __file__.endswith(".py")
"""True where this module is the native build of this file (simulate.pxd's types; r1lab.perf._native says how it
is built and checked), False in pure Python: both give the same results, bit for bit."""
if COMPILED and not _native.current():  # built from other sources than these, or R1LAB_PURE_PYTHON=1
    _native.use_source(__name__)  # this import then gives the pure-Python module


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
    decode_tp: int = 1  # each decode TP rank pulls its own copy of the MLA latent cache


class _Req:
    """One request's state (a plain class with slots: the native build makes it a C struct, simulate.pxd)."""

    __slots__ = (
        "rid", "isl", "osl", "arrival", "prompt", "computed", "generated", "first", "end", "blocks", "preempted",
        "admitted_remote", "at_engine", "seq", "c0", "gen0", "g0", "phase",
    )  # fmt: skip

    def __init__(self, rid: int, isl: int, osl: int, arrival: float, prompt: int = 0) -> None:
        self.rid = rid
        self.isl = isl
        self.osl = osl
        self.arrival = arrival
        self.prompt = prompt  # tokens to (re)compute before decoding
        self.computed: float = 0.0
        self.generated: float = 0.0
        self.first: float | None = None
        self.end: float | None = None
        self.blocks = 0
        self.preempted = 0
        self.admitted_remote = False
        self.at_engine = 0.0  # when the front end handed it to the engine (arrival + queue + its CPU work)
        self.seq = 0  # admission order on its rank (the running requests' order)
        # in a rank's _Decoding: computed and generated as they were at its decode step g0, computed - g0 as an int
        self.c0: float = 0.0
        self.gen0: float = 0.0
        self.g0 = 0
        self.phase = 0


@dataclass
class SimResult:
    ttft_s: list[float]
    tpot_s: list[float]
    e2e_s: list[float]
    itl: list[tuple[float, float]]  # (gap, weight): each distinct gap once, weight = chunks after it
    duration_s: float
    output_tokens: int
    input_tokens: int
    requests: int
    preemptions: int
    peak_kv_blocks: int
    mean_batch: float
    steps: int


def _bisect_left(a: list[int], x: int) -> int:
    """bisect.bisect_left(a, x); the native build runs bisect's own loop in C over the list (the same index)."""
    if not cython.compiled:
        return bisect_left(a, x)
    lo, hi = 0, len(a)
    while lo < hi:
        mid = (lo + hi) // 2
        v = a[mid]
        if v < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _ceil(x: float) -> int:
    """math.ceil(x) of a finite x (int(x) truncates toward zero): a C function in the native build."""
    n = int(x)
    return n + 1 if n < x else n


def _block_needs(decodes: list[_Req], k: int, q: int, bs: int) -> int:
    """New KV blocks the decodes need to advance k steps of q tokens."""
    need, adv = 0, k * q
    for r in decodes:
        d = _ceil((r.computed + adv) / bs) - r.blocks
        if d > 0:
            need += d
    return need


OFFSET_MODE = True  # the decoding requests as offsets where exact (_Decoding); False: every request scanned


class _Decoding:
    """The decoding requests of one rank kept as offsets, so a decode step costs O(log n), not O(n): exact with MTP
    off only, where each decode gains one token a step and every count is an integer (a sum is the same in any
    order). A member's computed tokens are its `phase` plus the rank's decode steps `g`; it holds
    ceil(computed / bs) blocks (checked as it joins), counted for all members at once from their phases' residues
    mod bs; the step at which each reaches its output length sits in a heap."""

    __slots__ = ("g", "bs", "members", "phase_sum", "blk_sum", "res", "heap", "_g1", "_v1", "_g2", "_v2")

    def __init__(self, bs: int) -> None:
        self.g = 0
        self.bs = bs
        self.members: dict[int, _Req] = {}
        self.phase_sum = 0  # sum of phases
        self.blk_sum = 0  # sum of phase // bs
        self.res: list[int] = []  # phase % bs of every member, sorted
        # (g at which it has its osl tokens) << 32 | seq: one int per member, ordered as the pair (a member holds
        # an integer count of tokens, seq < 2**32), the member found by its seq
        self.heap: list[int] = []
        # held(g) of the last two g asked for (g1 the latest), until the members change; g -1: none
        self._g1 = self._g2 = -1
        self._v1 = self._v2 = 0

    def __len__(self) -> int:
        return len(self.members)

    def can_join(self, r: _Req) -> bool:
        c = int(r.computed)
        return (
            c == r.computed and r.blocks == -(-c // self.bs) and r.generated < r.osl and r.first is not None
        )

    def add(self, r: _Req) -> None:
        r.c0, r.gen0, r.g0 = r.computed, r.generated, self.g
        r.phase = p = int(r.computed) - self.g
        self.members[r.seq] = r
        self._g1 = self._g2 = -1
        self.phase_sum += p
        a, b = p // self.bs, p % self.bs  # divmod's pair (typed C integers in a native build)
        self.blk_sum += a
        self.res.insert(_bisect_left(self.res, b), b)  # insort's list (equal ints: either side of them)
        end = r.osl - r.generated + self.g
        e = int(end)
        if e != end or not 0 <= e < 1 << 31 or not 0 <= r.seq < 1 << 32:
            raise AssertionError(f"offset mode: end step {end} or seq {r.seq} out of range (bug)")
        heappush(self.heap, e << 32 | r.seq)

    def ctx(self) -> int:
        """The members' computed tokens, summed."""
        return self.phase_sum + len(self.members) * self.g

    def held(self, g: int) -> int:
        """The members' blocks at decode step g: sum of ceil((phase + g) / bs) = phase // bs + g // bs
        + ceil((phase % bs + g % bs) / bs), the last 0, 1 or 2."""
        if g == self._g1:
            return self._v1
        if g == self._g2:
            return self._v2
        n, res = len(self.members), self.res
        g1, g0 = g // self.bs, g % self.bs
        v = (
            self.blk_sum
            + n * g1
            + (n - _bisect_left(res, 1 - g0))
            + (n - _bisect_left(res, self.bs + 1 - g0))
        )
        self._g2, self._v2, self._g1, self._v1 = self._g1, self._v1, g, v
        return v

    def min_remaining(self) -> float:
        heap, members = self.heap, self.members
        while True:
            e = heap[0]
            if e & 0xFFFFFFFF in members:
                return (e >> 32) - self.g
            heappop(heap)  # one that left (preempted)

    def due(self) -> bool:
        """Whether the heap's first has its output length by now (a member that finished() gives, or one that
        left)."""
        heap = self.heap
        if not heap:
            return False
        e = heap[0]
        return e >> 32 <= self.g

    def _leave(self, r: _Req) -> None:
        del self.members[r.seq]
        self._g1 = self._g2 = -1
        self.phase_sum -= r.phase
        a, b = r.phase // self.bs, r.phase % self.bs
        self.blk_sum -= a
        del self.res[_bisect_left(self.res, b)]
        d = self.g - r.g0
        r.computed = r.c0 + d
        r.generated = r.gen0 + d
        r.blocks = -(-(r.phase + self.g) // self.bs)

    def finished(self) -> list[_Req]:
        """Remove and return (their state brought up to date) the members that have their output length."""
        out = []
        heap, members = self.heap, self.members
        while heap:
            e = heap[0]
            if e >> 32 > self.g:
                break
            heappop(heap)
            r = members.get(e & 0xFFFFFFFF)
            if r is not None:
                self._leave(r)
                out.append(r)
        return out

    def remove(self, r: _Req) -> None:
        """Take one member out (preempted), its state brought up to date."""
        self._leave(r)


def _seq(r: _Req) -> int:
    return r.seq


def _decode_totals(decodes: list[_Req], dec: _Decoding) -> tuple[float, int, int]:
    """This step's decoding requests, those scanned (`decodes`) and the offset ones (`dec`): their context sum,
    the blocks they hold and how many they are (integer counts in offset mode: the sums are exact in any order)."""
    if not decodes:  # (the sums below of no request: 0)
        if dec.members:
            return float(dec.ctx()), dec.held(dec.g), len(dec)
        return 0.0, 0, 0
    scanned = sum([r.computed for r in decodes])
    ctx = float(scanned + dec.ctx()) if dec.members else float(scanned)
    held = sum([r.blocks for r in decodes]) + (dec.held(dec.g) if dec.members else 0)
    return ctx, held, len(decodes) + len(dec)


def _all_idle(rk: list[_Rank]) -> bool:
    """No rank runs or holds a waiting request."""
    for x in rk:
        if x.running or x.waiting:
            return False
    return True


def _length(v: int | tuple[int, int], rng: random.Random) -> int:
    return v if isinstance(v, int) else rng.randint(v[0], v[1])


# sglang's admission (schedule_policy.PrefillAdder, global_config): a new request needs its prompt plus its
# max_new_tokens (clipped at 4096) below the free KV tokens less what the running requests are expected to still
# decode, min(remaining, 4096) x new_token_ratio each; the ratio starts at 0.7 (SGLANG_INIT_NEW_TOKEN_RATIO x
# schedule_conservativeness 1.0), falls by (0.7 - 0.7 x 0.14) / 600 per decode step to 0.7 x 0.14
# (SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR, SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS), back to the start on a retraction
# (sglang recomputes it there from the decoded share; the start value is a simplification).
SGLANG_INIT_TOKEN_RATIO = 0.7
SGLANG_MIN_TOKEN_RATIO = 0.7 * 0.14
SGLANG_TOKEN_RATIO_DECAY = (SGLANG_INIT_TOKEN_RATIO - SGLANG_MIN_TOKEN_RATIO) / 600
SGLANG_CLIP_NEW_TOKENS = 4096


class _Rank:
    """One engine rank's scheduler state (vLLM V1: running first, then waiting; blocks allocated as computed)."""

    __slots__ = ("arrivals", "waiting", "running", "free_blocks", "plan", "token_ratio", "dec", "pre", "exp")

    def __init__(self, num_blocks: int, bs: int) -> None:
        self.token_ratio = SGLANG_INIT_TOKEN_RATIO  # prefill-first admission's decode reservation
        self.arrivals: list[tuple[float, int, _Req]] = []  # heap (time it reaches this rank, id, request)
        self.waiting: deque[_Req] = deque()
        self.running: dict[int, _Req] = {}  # by seq: admission order
        # offset mode (MTP off, simulate's `lazy`): the running requests are the decoding ones in `dec`, those in
        # prefill (`pre`, admission order) and the decoding ones kept apart (`exp`: admitted without their blocks
        # yet, or leaving); otherwise `dec` stays empty and `running` is scanned each step
        self.dec = _Decoding(bs)
        self.pre: list[_Req] = []
        self.exp: list[_Req] = []
        self.free_blocks = num_blocks
        self.plan: tuple[list[_Req], list[tuple[_Req, float]]] | None = None

    def load(self) -> int:
        return len(self.running) + len(self.waiting) + len(self.arrivals)

    def idle(self) -> bool:
        return not self.running and not self.waiting


def _needs(decodes: list[_Req], dec: _Decoding, held_d: int, k: int, q: int, bs: int) -> int:
    """New KV blocks one rank's decodes (scanned and offset ones) need to advance k steps of q tokens."""
    n = _block_needs(decodes, k, q, bs)
    return n + dec.held(dec.g + k * q) - held_d if dec.members else n


class _Sim:
    """One `simulate()` run: its configuration, ranks, prefill pool and counters, its steps as methods."""

    __slots__ = (
        "step", "wl", "sched", "pd", "rng", "n_total", "tps", "q", "bs", "overhead", "ranks", "rpi",
        "coupled_moe", "rk", "issued", "next_seq", "prefill_first", "lazy", "p_free", "p_queue", "link_free",
        "fe_free", "first_token", "fe_fixed", "fe_tok", "done", "preemptions", "max_tokens", "memo", "max_seqs",
        "chunked", "num_blocks", "closed",
    )  # fmt: skip

    def __init__(
        self,
        step: StepModel,
        wl: Workload,
        sched: SchedulerConfig,
        pd: PDConfig | None,
        ranks: int,
        ranks_per_instance: int | None,
    ) -> None:
        self.step = step
        self.wl = wl
        self.sched = sched
        self.pd = pd
        self.rng = random.Random(wl.seed)
        self.n_total = wl.n()
        self.tps = step.tokens_per_step()
        self.q = 1 + step.mtp
        self.bs = sched.block_size
        self.overhead = step.eng.request_overhead_s
        self.ranks = ranks
        self.rpi = ranks_per_instance or ranks
        self.coupled_moe = ranks > 1 and step.dep.par.ep
        self.rk = [_Rank(sched.num_blocks, self.bs) for _ in range(ranks)]
        self.issued = 0
        self.next_seq = 0  # admission order, over every rank
        self.prefill_first = step.eng.prefill_first
        # offset mode (_Decoding): MTP off, each decode one token a step; sglang's prefill-first admission reads
        # every running request's remaining tokens, so it scans them
        self.lazy = OFFSET_MODE and step.mtp == 0 and self.tps == 1 and not self.prefill_first
        # prefill pool for P/D: shared by every decode rank
        if pd is not None and pd.prefill_instances < 1:
            raise ValueError(f"PDConfig.prefill_instances must be at least 1, got {pd.prefill_instances}")
        self.p_free = [0.0] * (pd.prefill_instances if pd else 0)
        self.p_queue: deque[_Req] = deque()
        self.link_free = 0.0
        self.fe_free = 0.0
        first_token = self.first_token = step.eng.pd_first_token
        if pd is not None and first_token == "next_step" and not step.eng.prefill_first:
            # the token goes out with a batch that admits the request and computes nothing: a prefill-first batch
            raise ValueError(f"engine {step.eng.name}: pd_first_token 'next_step' needs prefill_first")
        if first_token not in ("recompute_last", "next_step", "kv_landed"):
            raise ValueError(f"engine {step.eng.name}: unknown pd_first_token {first_token!r}")
        self.fe_fixed, self.fe_tok = step.eng.frontend_s, step.eng.frontend_per_token_s
        self.done: list[_Req] = []
        self.preemptions = 0
        self.max_tokens = sched.max_num_batched_tokens
        self.max_seqs = sched.max_num_seqs
        self.chunked = sched.enable_chunked_prefill
        self.num_blocks = sched.num_blocks
        self.closed = bool(wl.concurrency)  # a closed loop: a finished request's client sends the next
        self.memo: dict[tuple[int, float, float, float, float | None], float] = {}  # step times asked for

    def admit(self, x: _Rank, r: _Req) -> None:
        r.seq = self.next_seq
        self.next_seq += 1
        x.running[r.seq] = r

    def new_request(self, t: float) -> _Req:
        wl, rng = self.wl, self.rng
        isl = _length(wl.isl, rng)
        r = _Req(self.issued, isl, max(1, _length(wl.osl, rng)), t, isl)  # its whole prompt to compute
        self.issued += 1
        return r

    def route(self, r: _Req, t: float) -> None:
        rk = self.rk
        dest = rk[0]
        if self.ranks > 1:  # min(rk, key=_Rank.load): the first of the least loaded
            least = dest.load()
            for x in rk:
                n = x.load()
                if n < least:
                    dest, least = x, n
        heappush(dest.arrivals, (t, r.rid, r))

    def submit(self, r: _Req) -> None:
        # the serving front end (HTTP, chat template, tokeniser, admission) is one process: its CPU work per
        # request is served FIFO, so a burst of requests waits for it before any reaches the engine
        r.at_engine = r.arrival
        if self.fe_fixed or self.fe_tok:
            r.at_engine = max(r.arrival, self.fe_free) + self.fe_fixed + self.fe_tok * r.isl
            self.fe_free = r.at_engine
        if self.pd is None:
            self.route(r, r.at_engine)
        else:
            self.p_queue.append(r)

    def run_prefill_pool(self, until: float) -> None:
        """Advance the prefill instances: FIFO batches up to the token budget, start no later than `until`."""
        pd = self.pd
        assert pd is not None
        p_queue, p_free = self.p_queue, self.p_free
        prefill, link, decode_tp, budget = pd.prefill, pd.link, pd.decode_tp, pd.max_num_batched_tokens
        first_token, overhead = self.first_token, self.overhead
        while p_queue:
            i = 0  # the first of the instances free the soonest (min()'s)
            for j in range(1, len(p_free)):
                if p_free[j] < p_free[i]:
                    i = j
            start = max(p_free[i], p_queue[0].at_engine)
            if start > until:
                return
            batch: list[_Req] = []
            tokens, pairs = 0, 0.0
            while (
                p_queue and p_queue[0].at_engine <= start and (not batch or tokens + p_queue[0].isl <= budget)
            ):
                r = p_queue.popleft()
                batch.append(r)
                tokens += r.isl
                pairs += r.isl * (r.isl + 1) / 2
            done_at = start + prefill.step_s(0, 0, tokens, pairs)
            p_free[i] = done_at
            for r in batch:
                # the link carries one KV cache at a time (FIFO): transfers queue behind each other; the
                # client's first token comes from the decode worker (EngineConstants.pd_first_token): vLLM
                # computes the last prompt token in its next step, sglang streams the prefill's token at its next
                # loop iteration (a batch without decoding), others count it once the cache has landed
                ready = max(done_at, self.link_free) + prefill.kv_transfer_s(r.isl, link, decode_tp)
                self.link_free = ready
                r.prompt = r.isl
                r.computed = r.isl - 1 if first_token == "recompute_last" else r.isl
                if first_token == "kv_landed":
                    r.first = ready + overhead
                    r.generated = 1
                r.admitted_remote = True
                self.route(r, ready)

    def finish(self, x: _Rank, r: _Req, t_end: float) -> None:
        r.end = t_end + self.overhead  # the client sees every token shifted by the request overhead
        x.free_blocks += r.blocks
        r.blocks = 0
        self.done.append(r)
        if self.closed and self.issued < self.n_total:
            self.submit(self.new_request(r.end))

    def reserved(self, x: _Rank) -> float:
        """KV tokens sglang keeps for the running requests' expected remaining decode."""
        return (
            sum([min(r.osl - r.generated, SGLANG_CLIP_NEW_TOKENS) for r in x.running.values()])
            * x.token_ratio
        )

    def prefill_batch(self, x: _Rank) -> tuple[list[_Req], list[tuple[_Req, float]]]:
        """sglang's default schedule (Scheduler.get_next_batch_to_run, enable_mixed_chunk off): a prefill batch
        whenever one can be formed (the chunked prompt first, then waiting requests FIFO within the chunk budget
        and the KV reservation), the running requests' decoding paused for it; else no chunks (a decode batch)."""
        budget: float = self.max_tokens
        chunks: list[tuple[_Req, float]] = []
        room = x.free_blocks * self.bs - self.reserved(x)
        for r in x.running.values():
            if r.computed < r.prompt and budget > 0:
                c = min(r.prompt - r.computed, budget)
                chunks.append((r, c))
                budget -= c
                room -= c
        while x.waiting and len(x.running) < self.max_seqs and budget > 0:
            r = x.waiting[0]
            if not r.prompt - r.computed + min(r.osl - r.generated, SGLANG_CLIP_NEW_TOKENS) < room:
                break  # not admissible
            c = min(r.prompt - r.computed, budget)
            x.waiting.popleft()
            self.admit(x, r)
            chunks.append((r, c))
            budget -= c
            room -= c + (
                min(r.osl - r.generated, SGLANG_CLIP_NEW_TOKENS) * x.token_ratio
                if c >= r.prompt - r.computed
                else 0.0
            )
        return [], chunks

    def schedule(self, x: _Rank) -> tuple[list[_Req], list[tuple[_Req, float]], float, int, int]:
        """One rank's batch for this step (running first, then waiting); preempts the newest when short.
        (decodes, prefill chunks, the decodes' context sum, the blocks they hold, how many decode): in offset
        mode the decodes listed are those outside x.dec, the sums and the count include x.dec's."""
        q, bs, lazy, chunked = self.q, self.bs, self.lazy, self.chunked
        budget: float = self.max_tokens  # `computed` is fractional (MTP acceptance), so are prefill chunks
        chunks: list[tuple[_Req, float]] = []
        dec = x.dec
        if self.prefill_first:
            decodes, chunks = self.prefill_batch(x)
            if not chunks:
                decodes = [r for r in x.running.values() if r.computed >= r.prompt]
            budget = 0  # admission done (a prefill batch, or none: a decode batch admits nobody)
        else:
            if lazy:
                decodes = x.exp
                prefills: list[_Req] | tuple[()] = x.pre
                budget -= (len(dec) + len(decodes)) * q
            else:
                decodes = [r for r in x.running.values() if r.computed >= r.prompt]
                budget -= len(decodes) * q
                prefills = (
                    [r for r in x.running.values() if r.computed < r.prompt]
                    if len(decodes) < len(x.running)
                    else ()
                )
            for r in prefills:
                if budget > 0:
                    c = min(r.prompt - r.computed, budget)
                    if not chunked and c < r.prompt - r.computed:
                        continue
                    chunks.append((r, c))
                    budget -= c
        while x.waiting and len(x.running) < self.max_seqs and budget > 0:
            r = x.waiting[0]
            need_tokens = r.prompt - r.computed
            c = min(need_tokens, budget)
            if not chunked and c < need_tokens:
                break
            need_blocks = _ceil((r.computed + max(c, 1)) / bs) - r.blocks
            if need_blocks > x.free_blocks:
                break
            x.waiting.popleft()
            self.admit(x, r)
            if c > 0:
                chunks.append((r, c))
                budget -= c
                if lazy:
                    x.pre.append(r)
            else:
                decodes.append(r)
                budget -= q
        ctx, held, n_dec = _decode_totals(decodes, dec)
        # each decode needs ceil((computed + q) / bs) - blocks new blocks (never negative: a running request
        # holds ceil(computed / bs) blocks or fewer), less than (computed + q) / bs + 1 - blocks: where that
        # bound (+1 against rounding) fits in the free blocks, no one is preempted
        bound = (ctx + n_dec * q) / bs + n_dec - held + 1
        if chunks:
            extra = 0  # (an int sum: exact in any order)
            for r, c in chunks:
                extra += max(0, _ceil((r.computed + c) / bs) - r.blocks)
            bound += extra
        preempted = bound > x.free_blocks
        while preempted:
            need = 0
            for r in decodes:
                d = _ceil((r.computed + q) / bs) - r.blocks
                if d > 0:
                    need += d
            for r, c in chunks:
                need += max(0, _ceil((r.computed + c) / bs) - r.blocks)
            if dec.members:
                need += dec.held(dec.g + q) - dec.held(dec.g)
            if need <= x.free_blocks or len(x.running) <= 1:
                break
            victim = x.running.popitem()[1]
            if victim.seq in dec.members:
                dec.remove(victim)
            x.free_blocks += victim.blocks
            victim.blocks = 0
            victim.prompt = victim.isl + int(victim.generated)
            victim.computed = 0
            victim.preempted += 1
            self.preemptions += 1
            x.token_ratio = SGLANG_INIT_TOKEN_RATIO
            x.waiting.appendleft(victim)
            decodes = [r for r in decodes if r is not victim]
            chunks = [(r, c) for r, c in chunks if r is not victim]
            if lazy:
                x.pre = [r for r in x.pre if r is not victim]
        if preempted:
            ctx, held, n_dec = _decode_totals(decodes, dec)
        if lazy:
            x.exp = decodes
        if not n_dec and not chunks and (x.running or x.waiting):
            # cannot make progress (a single prompt larger than the cache): fail it loudly
            r = next(iter(x.running.values())) if x.running else x.waiting[0]
            raise RuntimeError(
                f"request of {r.isl} input tokens cannot be scheduled: KV cache holds "
                f"{self.num_blocks * bs} tokens"
            )
        return decodes, chunks, ctx, held, n_dec

    def epoch_dt(
        self, per: list[tuple[int, float, float, float]], moe_tok: list[float] | None, shift: float
    ) -> float:
        """A step of every rank's work `per` (decodes, their context sum, prefill tokens, causal pairs), the
        decodes' context shifted by `shift` tokens each: as long as the slowest rank's (an idle rank joins the
        all-to-all; the busy ranks' steps set the time; ranks with the same work take the same time)."""
        if self.ranks == 1:
            n_dec, ctx_sum, n_pre, pairs = per[0]
            if n_dec == 0 and n_pre == 0:
                return 0.0
            return self.step_s(
                n_dec, ctx_sum + n_dec * shift, n_pre, pairs, None if moe_tok is None else moe_tok[0]
            )
        best = -1.0
        for i, (n_dec, ctx_sum, n_pre, pairs) in enumerate(per):
            if n_dec == 0 and n_pre == 0:
                v = 0.0
            else:  # ranks with the same work: the memo's one value, once computed
                v = self.step_s(
                    n_dec, ctx_sum + n_dec * shift, n_pre, pairs, None if moe_tok is None else moe_tok[i]
                )
            if v > best:  # max()'s order: the first of the largest
                best = v
        return best

    def step_s(self, n_dec: int, ctx_sum: float, n_pre: float, pairs: float, mt: float | None) -> float:
        """`step.step_s(...)`, kept for the run (a pure function of its arguments; a third of a run's asks
        repeat one)."""
        key = (n_dec, ctx_sum, n_pre, pairs, mt)
        v = self.memo.get(key)
        if v is None:
            v = self.memo[key] = self.step.step_s(n_dec, ctx_sum, n_pre, pairs, mt)
        return v

    def run(self) -> SimResult:
        step, pd, wl = self.step, self.pd, self.wl
        n_total, tps, q, bs, overhead = self.n_total, self.tps, self.q, self.bs, self.overhead
        ranks, rpi, coupled_moe, rk = self.ranks, self.rpi, self.coupled_moe, self.rk
        prefill_first, lazy = self.prefill_first, self.lazy
        p_free, p_queue = self.p_free, self.p_queue
        # initial load
        if wl.concurrency:
            for _ in range(min(wl.concurrency, n_total)):
                self.submit(self.new_request(0.0))
        else:
            t_arr = 0.0
            rate = float(wl.rate or 1.0)
            while self.issued < n_total:
                t_arr += self.rng.expovariate(rate)
                self.submit(self.new_request(t_arr))

        t = 0.0
        peak_blocks = 0
        done = self.done
        steps = 0
        batch_sum = 0.0
        itl_w: dict[float, float] = {}  # gap -> chunks streamed after it (integer counts: exact sums)
        max_tokens, max_seqs, num_blocks = self.max_tokens, self.max_seqs, self.num_blocks
        ahead = step.eng.schedule_ahead_steps
        last_step_start = 0.0
        guard = 0
        while len(done) < n_total:
            guard += 1
            if guard > 50_000_000:
                raise RuntimeError("simulation did not converge (bug): too many epochs")
            if pd is not None:
                self.run_prefill_pool(t)
            # an engine that schedules ahead (overlap scheduling) has already formed the next batch when the
            # current one ends: a request that arrived during the last step joins one step later; an idle engine
            # takes it at once
            for x in rk:
                visible = t if not x.running or ahead == 0 else last_step_start
                while x.arrivals and x.arrivals[0][0] <= visible:
                    x.waiting.append(heappop(x.arrivals)[2])
                if not x.running and not x.waiting and x.arrivals and x.arrivals[0][0] <= t:
                    x.waiting.append(heappop(x.arrivals)[2])
            if _all_idle(rk):
                nxt = [x.arrivals[0][0] for x in rk if x.arrivals]
                if pd is not None and p_queue:
                    nxt.append(max(min(p_free), p_queue[0].at_engine))
                if not nxt:
                    raise RuntimeError("simulation stalled: nothing running, waiting or arriving")
                t = max(t, min(nxt))
                continue
            # --- schedule one step on every rank ---
            plans = []
            for x in rk:
                plans.append(self.schedule(x) if x.running or x.waiting else ([], [], 0.0, 0, 0))
            per = []  # (n_dec, ctx_sum, n_pre, pairs) per rank
            any_chunks = False
            for _, chunks, ctx, _, n_dec in plans:
                if chunks:
                    any_chunks = True
                per.append(
                    (
                        n_dec,
                        ctx,
                        sum([c for _, c in chunks]) if chunks else 0,
                        sum([c * r.computed + c * (c + 1) / 2 for r, c in chunks]) if chunks else 0,
                    )
                )
            moe_tok = None
            if coupled_moe:
                moe_tok = [0.0] * ranks
                for g0 in range(0, ranks, rpi):
                    tot = sum([per[i][0] * q + per[i][2] for i in range(g0, min(ranks, g0 + rpi))])
                    for i in range(g0, min(ranks, g0 + rpi)):
                        moe_tok[i] = tot

            # --- epoch length: pure decode stretches advance k steps at once ---
            k = 1
            # the step time at the epoch's start, computed where an arrival bounds k (epoch_dt is pure)
            dt0 = -1.0
            if not any_chunks:
                k = 1 << 60
                for i, x in enumerate(rk):
                    decodes, _, ctx, held, n_dec = plans[i]
                    if not n_dec:
                        continue
                    dec = x.dec
                    # ceil(x / tps) grows with x: the least of them is the one of the least x
                    if not dec.members:
                        least = min([r.osl - r.generated for r in decodes])
                    elif decodes:
                        least = min(min([r.osl - r.generated for r in decodes]), dec.min_remaining())
                    else:
                        least = dec.min_remaining()
                    k = min(k, _ceil(least / tps))
                    if x.waiting and len(x.running) < max_seqs:
                        head = x.waiting[0]
                        if prefill_first:
                            # admissible once the reservation has decayed or blocks freed: look again soon
                            k = min(k, 8)
                        else:
                            c0 = min(head.prompt - head.computed, max_tokens - n_dec * q)
                            if _ceil((head.computed + max(c0, 1)) / bs) - head.blocks <= x.free_blocks:
                                k = 1  # it can be admitted next step
                    if x.arrivals and k > 1:  # (k <= 1 stays as it is)
                        if dt0 < 0.0:
                            dt0 = self.epoch_dt(per, moe_tok, 0.0)
                        k = min(k, max(1, int((x.arrivals[0][0] - t) / max(dt0, 1e-9))))
                    # free blocks bound: the longest stretch whose new blocks fit in the free ones
                    k = max(1, k)
                    # new blocks for k steps: less than (ctx + n k q) / bs + n - held (+1 against rounding)
                    bound = (ctx + n_dec * k * q) / bs + n_dec - held + 1
                    held_d = dec.held(dec.g) if dec.members else 0
                    if bound > x.free_blocks and _needs(decodes, dec, held_d, k, q, bs) > x.free_blocks:
                        lo, hi = 1, k
                        while lo < hi:
                            mid = (lo + hi + 1) // 2
                            if _needs(decodes, dec, held_d, mid, q, bs) <= x.free_blocks:
                                lo = mid
                            else:
                                hi = mid - 1
                        k = lo
                if k == 1 << 60:
                    k = 1
                for x in rk:
                    if x.idle() and x.arrivals and k > 1:
                        if dt0 < 0.0:
                            dt0 = self.epoch_dt(per, moe_tok, 0.0)
                        k = min(k, max(1, int((x.arrivals[0][0] - t) / max(dt0, 1e-9))))
                if pd is not None and p_queue and k > 1:
                    if dt0 < 0.0:
                        dt0 = self.epoch_dt(per, moe_tok, 0.0)
                    k = min(k, max(1, int((max(min(p_free), p_queue[0].at_engine) - t) / max(dt0, 1e-9))))
            # the context at the stretch's midpoint (a shift of 0.0 for one step: the step at its start)
            dt = dt0 if k == 1 and dt0 >= 0.0 else self.epoch_dt(per, moe_tok, tps * (k - 1) / 2.0)
            t_next = t + k * dt
            last_step_start = t_next - dt
            steps += k
            # --- apply ---
            full = k * tps  # what a sequence gains in k steps unless it ends sooner
            full_chunks = max(1.0, _ceil(full / tps))
            for i in range(ranks):
                x = rk[i]
                decodes, chunks, _, _, n_dec = plans[i]
                batch_sum += k * (n_dec + len(chunks)) / ranks
                streamed = 0.0
                free = x.free_blocks
                for r in decodes:
                    rem = r.osl - r.generated
                    if full <= rem:
                        gained, chunks_out = full, full_chunks
                    else:
                        gained, chunks_out = rem, max(1.0, _ceil(rem / tps))
                    r.generated += gained
                    r.computed = computed = r.computed + gained
                    # not past its last block: ceil(computed / bs) is still its blocks (a request never holds more)
                    if computed > r.blocks * bs:
                        nb = _ceil(computed / bs)
                        free -= nb - r.blocks
                        r.blocks = nb
                    streamed += chunks_out
                dec = x.dec
                if dec.members:  # each gains k tokens: none ends sooner (k is at most the least remaining)
                    if k > dec.min_remaining():
                        raise AssertionError("offset mode: an epoch past a decode's end (bug)")
                    streamed += len(dec) * full_chunks
                    free -= dec.held(dec.g + k) - dec.held(dec.g)
                    dec.g += k
                x.free_blocks = free
                if n_dec:
                    itl_w[dt] = itl_w.get(dt, 0.0) + streamed
                    if prefill_first:
                        x.token_ratio = max(
                            SGLANG_MIN_TOKEN_RATIO, x.token_ratio - SGLANG_TOKEN_RATIO_DECAY * k
                        )
                for r, c in chunks:
                    r.computed += c
                    nb = _ceil(r.computed / bs)
                    x.free_blocks -= nb - r.blocks
                    r.blocks = nb
                    if r.computed >= r.prompt:
                        if r.first is None:
                            r.first = t_next + overhead
                            r.generated = 1
                        if lazy:
                            x.exp.append(r)
                if lazy and chunks:
                    rest = []
                    for r in x.pre:
                        if r.computed < r.prompt:
                            rest.append(r)
                    x.pre = rest
                peak_blocks = max(peak_blocks, num_blocks - x.free_blocks)
            t = t_next
            for x in rk:
                if lazy:
                    # the members that reached their output length, and those kept apart; in admission order
                    dec = x.dec
                    ending = dec.finished() if dec.due() else []
                    if x.exp:
                        rest = []
                        for r in x.exp:
                            if r.first is not None and r.generated >= r.osl:
                                ending.append(r)
                            else:
                                rest.append(r)
                        ending.sort(key=_seq)
                        x.exp = rest
                    if x.exp:
                        keep = []
                        for r in x.exp:
                            if dec.can_join(r):
                                dec.add(r)
                            else:
                                keep.append(r)
                        x.exp = keep
                else:
                    # only a request that reached its output length can finish: look further only if one did
                    if not any([r.generated >= r.osl for r in x.running.values()]):
                        continue
                    ending = [
                        r
                        for r in x.running.values()
                        if r.first is not None and r.generated >= r.osl and r.computed >= r.prompt
                    ]
                for r in ending:
                    assert r.first is not None  # a decoding request has its first token
                    self.finish(x, r, max(t, r.first - overhead))
                for r in ending:
                    del x.running[r.seq]

        # (arrival, first token, end, output length) of each finished request: finish() has set both times
        fin: list[tuple[float, float, float, int]] = []
        out_tok = in_tok = 0  # (int sums)
        start = done[0].arrival  # the first arrival: min() of them
        for r in done:
            if r.first is not None and r.end is not None:
                fin.append((r.arrival, r.first, r.end, r.osl))
            out_tok += r.osl
            in_tok += r.isl
            if r.arrival < start:
                start = r.arrival
        assert len(fin) == len(done), "a finished request without its first token or its end"
        ttft = [first - arrival for arrival, first, _, _ in fin]
        e2e = [end - arrival for arrival, _, end, _ in fin]
        tpot = [(end - first) / (osl - 1) for _, first, end, osl in fin if osl > 1]
        itl = sorted(itl_w.items())
        end = max([e for _, _, e, _ in fin])
        return SimResult(
            ttft_s=ttft,
            tpot_s=tpot,
            e2e_s=e2e,
            itl=itl,
            duration_s=end - start,
            output_tokens=out_tok,
            input_tokens=in_tok,
            requests=len(done),
            preemptions=self.preemptions,
            peak_kv_blocks=peak_blocks,
            mean_batch=batch_sum / max(steps, 1),
            steps=steps,
        )


def simulate(
    step: StepModel,
    wl: Workload,
    sched: SchedulerConfig | None = None,
    pd: PDConfig | None = None,
    ranks: int = 1,
    ranks_per_instance: int | None = None,
) -> SimResult:
    """Run one load point to completion; every request is measured (no warm-up cut).

    `ranks` engine ranks step in lock-step (attention-DP ranks of one instance meet at every MoE all-to-all, so
    each step lasts as long as the slowest rank's: a rank's prefill chunk stalls every rank's decode). A new
    request goes to the rank with the least work (closed loop: a client sends its next request when its last one
    ends). Under EP the experts of one instance see the tokens of its `ranks_per_instance` ranks (default: all)."""
    sim = _Sim(step, wl, sched or SchedulerConfig(), pd, ranks, ranks_per_instance)
    # a run allocates many short-lived tuples and no reference cycles: the cyclic collector only costs time here
    collecting = gc.isenabled()
    gc.disable()
    try:
        return sim.run()
    finally:
        if collecting:
            gc.enable()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    return _percentile_sorted(sorted(values), p)


def _percentile_sorted(s: list[float], p: float) -> float:
    """`percentile` of an already sorted list (sort once, read several percentiles)."""
    i = (len(s) - 1) * p / 100.0
    lo = math.floor(i)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def percentiles(values: list[float], ps: tuple[float, ...]) -> list[float]:
    """`percentile(values, p)` for each p, sorting once."""
    if not values:
        return [float("nan")] * len(ps)
    s = sorted(values)
    return [_percentile_sorted(s, p) for p in ps]


def weighted_percentile(pairs: list[tuple[float, float]], p: float) -> float:
    return weighted_percentiles(pairs, (p,))[0]


def weighted_percentiles(pairs: list[tuple[float, float]], ps: tuple[float, ...]) -> list[float]:
    """Weighted percentiles of (value, weight) pairs for each p (ascending or not), sorting once."""
    if not pairs:
        return [float("nan")] * len(ps)
    s = sorted(pairs)
    cum = list(itertools.accumulate(w for _, w in s))  # the same running sums as adding one by one
    total = sum(w for _, w in s)
    out = []
    for p in ps:
        i = bisect.bisect_left(cum, total * p / 100.0)  # first index whose running sum reaches the target
        out.append(s[i][0] if i < len(s) else s[-1][0])
    return out
