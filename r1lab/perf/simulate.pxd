# Compiler directives (language level, cdivision off, bounds checks on): scripts/build_native.py DIRECTIVES.
# The native build's types for simulate.py (Cython "pure Python mode": this file augments the .py, which stays the
# only implementation; scripts/build_native.py compiles it). Python semantics are kept where a value could differ:
# cdivision off (// and % floor as Python's), integers in 64 bits (every count here is far below 2**62: tokens,
# blocks, steps, ids), token counts that Python keeps as int or float held as C doubles (each such value is an
# integer below 2**53 or the same float, so every sum, product and quotient is the same number).
cimport cython


@cython.locals(n=cython.Py_ssize_t)
cdef Py_ssize_t _ceil(double x)

@cython.locals(lo=cython.Py_ssize_t, hi=cython.Py_ssize_t, mid=cython.Py_ssize_t, v=cython.Py_ssize_t)
cdef Py_ssize_t _bisect_left(list a, Py_ssize_t x) except? -1


@cython.final
cdef class _Req:
    cdef public Py_ssize_t rid, isl, osl
    cdef public double arrival
    cdef public Py_ssize_t prompt
    cdef public double computed, generated
    cdef public object first, end
    cdef public Py_ssize_t blocks, preempted
    cdef public bint admitted_remote
    cdef public double at_engine
    cdef public Py_ssize_t seq
    cdef public double c0, gen0
    cdef public Py_ssize_t g0, phase


@cython.locals(need=cython.Py_ssize_t, adv=cython.Py_ssize_t, d=cython.Py_ssize_t, r=_Req)
cdef Py_ssize_t _block_needs(list decodes, Py_ssize_t k, Py_ssize_t q, Py_ssize_t bs) except? -1


@cython.final
cdef class _Decoding:
    cdef public Py_ssize_t g, bs
    cdef public dict members
    cdef public Py_ssize_t phase_sum, blk_sum
    cdef public list res, heap
    cdef public Py_ssize_t _g1, _v1, _g2, _v2

    @cython.locals(c=cython.Py_ssize_t)
    cpdef bint can_join(self, _Req r) except -1
    @cython.locals(p=cython.Py_ssize_t, a=cython.Py_ssize_t, b=cython.Py_ssize_t, end=cython.double, e=cython.Py_ssize_t)
    cpdef add(self, _Req r)
    cpdef Py_ssize_t ctx(self)
    @cython.locals(n=cython.Py_ssize_t, g1=cython.Py_ssize_t, g0=cython.Py_ssize_t, res=list, v=cython.Py_ssize_t)
    cpdef Py_ssize_t held(self, Py_ssize_t g) except? -1
    @cython.locals(heap=list, members=dict, e=cython.Py_ssize_t)
    cpdef double min_remaining(self) except? -1.0
    @cython.locals(heap=list, e=cython.Py_ssize_t)
    cpdef bint due(self) except -1
    @cython.locals(a=cython.Py_ssize_t, b=cython.Py_ssize_t, d=cython.Py_ssize_t)
    cdef _leave(self, _Req r)
    @cython.locals(out=list, heap=list, members=dict, e=cython.Py_ssize_t)
    cpdef list finished(self)
    cpdef remove(self, _Req r)


@cython.locals(r=_Req, scanned=cython.double, ctx=cython.double, held=cython.Py_ssize_t)
cdef tuple _decode_totals(list decodes, _Decoding dec)

@cython.locals(n=cython.Py_ssize_t)
cdef Py_ssize_t _needs(list decodes, _Decoding dec, Py_ssize_t held_d, Py_ssize_t k, Py_ssize_t q, Py_ssize_t bs) except? -1


@cython.final
cdef class _Rank:
    cdef public list arrivals
    cdef public object waiting
    cdef public dict running
    cdef public Py_ssize_t free_blocks
    cdef public object plan
    cdef public double token_ratio
    cdef public _Decoding dec
    cdef public list pre, exp

    cpdef Py_ssize_t load(self) except? -1
    cpdef bint idle(self) except -1


@cython.locals(x=_Rank)
cdef bint _all_idle(list rk) except -1


@cython.final
cdef class _Sim:
    cdef public object step, wl, sched, pd, rng
    cdef public Py_ssize_t n_total
    cdef public double tps
    cdef public Py_ssize_t q, bs
    cdef public double overhead
    cdef public Py_ssize_t ranks, rpi
    cdef public bint coupled_moe
    cdef public list rk
    cdef public Py_ssize_t issued, next_seq
    cdef public bint prefill_first, lazy
    cdef public list p_free
    cdef public object p_queue
    cdef public double link_free, fe_free
    cdef public object first_token
    cdef public double fe_fixed, fe_tok
    cdef public list done
    cdef public Py_ssize_t preemptions, max_tokens
    cdef public dict memo
    cdef public Py_ssize_t max_seqs, num_blocks
    cdef public bint chunked, closed

    cpdef admit(self, _Rank x, _Req r)
    @cython.locals(r=_Req)
    cpdef _Req new_request(self, double t)
    @cython.locals(dest=_Rank, x=_Rank, least=cython.Py_ssize_t, n=cython.Py_ssize_t, rk=list)
    cpdef route(self, _Req r, double t)
    cpdef submit(self, _Req r)
    @cython.locals(r=_Req, batch=list, tokens=cython.Py_ssize_t, pairs=cython.double, start=cython.double,
                   done_at=cython.double, ready=cython.double, i=cython.Py_ssize_t, j=cython.Py_ssize_t)
    cpdef run_prefill_pool(self, double until)
    cpdef finish(self, _Rank x, _Req r, double t_end)
    @cython.locals(r=_Req, budget=cython.double, chunks=list, room=cython.double, c=cython.double)
    cpdef tuple prefill_batch(self, _Rank x)
    @cython.locals(r=_Req, victim=_Req, budget=cython.double, chunks=list, dec=_Decoding, decodes=list,
                   c=cython.double, need_tokens=cython.double, need_blocks=cython.Py_ssize_t, ctx=cython.double,
                   held=cython.Py_ssize_t, n_dec=cython.Py_ssize_t, bound=cython.double, preempted=bint,
                   need=cython.Py_ssize_t, d=cython.Py_ssize_t, q=cython.Py_ssize_t, bs=cython.Py_ssize_t, lazy=bint,
                   chunked=bint, extra=cython.Py_ssize_t)
    cpdef tuple schedule(self, _Rank x)
    @cython.locals(best=cython.double, v=cython.double, n_dec=cython.Py_ssize_t, ctx_sum=cython.double,
                   n_pre=cython.double, pairs=cython.double, i=cython.Py_ssize_t)
    cpdef double epoch_dt(self, list per, object moe_tok, double shift) except? -1.0
    @cython.locals(key=tuple)
    cpdef double step_s(self, Py_ssize_t n_dec, double ctx_sum, double n_pre, double pairs, object mt) except? -1.0
    @cython.locals(
        n_total=cython.Py_ssize_t, tps=cython.double, q=cython.Py_ssize_t, bs=cython.Py_ssize_t, overhead=cython.double,
        ranks=cython.Py_ssize_t, rpi=cython.Py_ssize_t, coupled_moe=bint, rk=list, prefill_first=bint, lazy=bint,
        p_free=list, t=cython.double, peak_blocks=cython.Py_ssize_t, done=list, steps=cython.Py_ssize_t,
        batch_sum=cython.double, itl_w=dict, max_tokens=cython.Py_ssize_t, max_seqs=cython.Py_ssize_t,
        num_blocks=cython.Py_ssize_t, ahead=cython.Py_ssize_t,
        last_step_start=cython.double, guard=cython.Py_ssize_t, x=_Rank, visible=cython.double, plans=list,
        per=list, g0=cython.Py_ssize_t, i=cython.Py_ssize_t, any_chunks=bint, k=cython.Py_ssize_t, dt0=cython.double,
        decodes=list, chunks=list, ctx=cython.double, held=cython.Py_ssize_t, n_dec=cython.Py_ssize_t, dec=_Decoding,
        least=cython.double, head=_Req, c0=cython.double, bound=cython.double, held_d=cython.Py_ssize_t,
        lo=cython.Py_ssize_t, hi=cython.Py_ssize_t, mid=cython.Py_ssize_t, dt=cython.double, t_next=cython.double,
        full=cython.double, full_chunks=cython.double, streamed=cython.double, free=cython.Py_ssize_t, r=_Req,
        rem=cython.double, gained=cython.double, chunks_out=cython.double, computed=cython.double,
        nb=cython.Py_ssize_t, c=cython.double, ending=list, keep=list, rest=list, t_arr=cython.double, rate=cython.double,
        fin=list, out_tok=cython.Py_ssize_t, in_tok=cython.Py_ssize_t, start=cython.double)
    cpdef run(self)
