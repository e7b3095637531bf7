"""Time one TP-shard DeepSeek-R1 layer forward on one GPU inside a CUDA graph, kernel by kernel (PyTorch + Triton).

Self-contained (imports nothing of r1lab): `python3 layer_bench.py --out DIR`. Kernels, written here because the
lent GPU has no vLLM/SGLang: block-FP8 GEMMs (1x128 activation / 128x128 weight scales, a Triton kernel in the
style of vLLM's `w8a8_block_fp8_matmul`), MLA decode with weight absorption (W_UK / W_UV as batched GEMMs, a
Triton split-KV kernel that reads each cached 576-value latent once, lse combine), MLA prefill (kv_b GEMM +
PyTorch SDPA), a Triton fused MoE (sorted token-expert rows, one grouped launch per projection, as vLLM's
`fused_moe_kernel`) at the TP8-slice shape (256 experts x 2I/8) and the EP8 whole-expert shape (32 local
experts, rows of 8 ranks' tokens), DeepSeek's grouped top-k routing, and Triton RMSNorm(+residual), per-token-group
FP8 quantisation, SiLU-and-mul+quant and RoPE kernels. Collectives are not timed (one GPU).

Timing: every measured region is captured in a CUDA graph over `--copies` layers with their own weights and
caches (so weights come from HBM, not L2) and replayed; medians of CUDA-event timings over the replays.
Correctness: the GEMM, MoE and MLA kernels are checked against float32 references on fresh random data first.
Records go to DIR/layer_bench.jsonl as they are taken; a table is printed last.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import triton
import triton.language as tl

H, QL, KVL, ROPE, NOPE, VD, HEADS, I_MOE, E, TOPK = 7168, 1536, 512, 64, 128, 128, 128, 2048, 256, 8
# LAYER_BENCH_NO_FP8 (bfloat16): the CPU logic check
FP8 = torch.bfloat16 if __import__("os").environ.get("LAYER_BENCH_NO_FP8") else torch.float8_e4m3fn
FP8_MAX = 448.0


# ----------------------------------------------------------------------------------------------- Triton kernels
@triton.jit
def _gemm_fp8_block(A, B, C, As, Bs, M, N, K, s_am, s_bn, s_cm, s_asm, s_bsn,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    npm, npn = tl.cdiv(M, BM), tl.cdiv(N, BN)
    width = GROUP * npn
    gid = pid // width
    first = gid * GROUP
    gsz = min(npm - first, GROUP)
    pm = first + (pid % width) % gsz
    pn = (pid % width) // gsz
    om = pm * BM + tl.arange(0, BM)
    on = pn * BN + tl.arange(0, BN)
    ok = tl.arange(0, BK)
    mm, mn = om < M, on < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        kk = kb * BK + ok
        a = tl.load(A + om[:, None] * s_am + kk[None, :], mask=mm[:, None] & (kk[None, :] < K), other=0.0)
        b = tl.load(B + on[None, :] * s_bn + kk[:, None], mask=mn[None, :] & (kk[:, None] < K), other=0.0)
        sa = tl.load(As + om * s_asm + kb, mask=mm, other=0.0)
        sb = tl.load(Bs + (on // 128) * s_bsn + kb, mask=mn, other=0.0)
        acc += tl.dot(a, b) * sa[:, None] * sb[None, :]
    tl.store(C + om[:, None] * s_cm + on[None, :], acc.to(C.dtype.element_ty), mask=mm[:, None] & mn[None, :])


@triton.jit
def _gemm_fp8_block_splitk(A, B, C, As, Bs, M, N, K, s_am, s_bn, s_cm, s_asm, s_bsn, K_PER,
                           BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    """Split-K: program (tile, split) sums K_PER of K into an fp32 output with atomics (small-m decode GEMMs)."""
    pid, sp = tl.program_id(0), tl.program_id(1)
    npn = tl.cdiv(N, BN)
    pm, pn = pid // npn, pid % npn
    om = pm * BM + tl.arange(0, BM)
    on = pn * BN + tl.arange(0, BN)
    ok = tl.arange(0, BK)
    mm, mn = om < M, on < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    k0 = sp * K_PER
    for kb in range(k0 // BK, tl.minimum(k0 + K_PER, K) // BK):
        kk = kb * BK + ok
        a = tl.load(A + om[:, None] * s_am + kk[None, :], mask=mm[:, None], other=0.0)
        b = tl.load(B + on[None, :] * s_bn + kk[:, None], mask=mn[None, :], other=0.0)
        sa = tl.load(As + om * s_asm + kb, mask=mm, other=0.0)
        sb = tl.load(Bs + (on // 128) * s_bsn + kb, mask=mn, other=0.0)
        acc += tl.dot(a, b) * sa[:, None] * sb[None, :]
    tl.atomic_add(C + om[:, None] * s_cm + on[None, :], acc, mask=mm[:, None] & mn[None, :], sem="relaxed")


@triton.jit
def _moe_fp8_block(A, B, C, As, Bs, W, sorted_ids, expert_ids, n_post, N, K, valid, s_am, s_be, s_bn, s_cm,
                   s_asm, s_bse, s_bsn, TOP_K: tl.constexpr, MUL_W: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    npn = tl.cdiv(N, BN)
    pm, pn = pid // npn, pid % npn
    if pm * BM >= tl.load(n_post):
        return
    orow = pm * BM + tl.arange(0, BM)
    tid = tl.load(sorted_ids + orow)
    tm = tid < valid
    e = tl.load(expert_ids + pm)
    on = pn * BN + tl.arange(0, BN)
    mn = on < N
    ok = tl.arange(0, BK)
    arow = tid // TOP_K
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for kb in range(0, tl.cdiv(K, BK)):
        kk = kb * BK + ok
        a = tl.load(A + arow[:, None] * s_am + kk[None, :], mask=tm[:, None] & (kk[None, :] < K), other=0.0)
        b = tl.load(
            B + e * s_be + on[None, :] * s_bn + kk[:, None], mask=mn[None, :] & (kk[:, None] < K), other=0.0
        )
        sa = tl.load(As + arow * s_asm + kb, mask=tm, other=0.0)
        sb = tl.load(Bs + e * s_bse + (on // 128) * s_bsn + kb, mask=mn, other=0.0)
        acc += tl.dot(a, b) * sa[:, None] * sb[None, :]
    if MUL_W:
        acc = acc * tl.load(W + tid, mask=tm, other=0.0)[:, None]
    tl.store(
        C + tid[:, None] * s_cm + on[None, :], acc.to(C.dtype.element_ty), mask=tm[:, None] & mn[None, :]
    )


@triton.jit
def _mla_decode(Q, KV, Out, L, ctx, split_len, s_qb, s_qh, s_kb, s_ob, s_os, s_lb, s_ls, scale,
                HB: tl.constexpr, DL: tl.constexpr, DR: tl.constexpr, BN: tl.constexpr):  # fmt: skip
    b, s, hb = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    oh = hb * HB + tl.arange(0, HB)
    odl, odr = tl.arange(0, DL), tl.arange(0, DR)
    ql = tl.load(Q + b * s_qb + oh[:, None] * s_qh + odl[None, :])
    qr = tl.load(Q + b * s_qb + oh[:, None] * s_qh + DL + odr[None, :])
    start = s * split_len
    end = tl.minimum(start + split_len, ctx)
    m_i = tl.full((HB,), -float("inf"), tl.float32)
    l_i = tl.zeros((HB,), tl.float32)
    acc = tl.zeros((HB, DL), tl.float32)
    for n in range(start, end, BN):
        on = n + tl.arange(0, BN)
        mk = on < end
        kl = tl.load(KV + b * s_kb + on[None, :] * (DL + DR) + odl[:, None], mask=mk[None, :], other=0.0)
        kr = tl.load(KV + b * s_kb + on[None, :] * (DL + DR) + DL + odr[:, None], mask=mk[None, :], other=0.0)
        qk = (tl.dot(ql, kl) + tl.dot(qr, kr)) * scale
        qk = tl.where(mk[None, :], qk, -float("inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp(qk - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(kl.dtype), tl.trans(kl))
        m_i = m_new
    tl.store(Out + b * s_ob + s * s_os + oh[:, None] * DL + odl[None, :], acc / l_i[:, None])
    tl.store(L + b * s_lb + s * s_ls + oh, m_i + tl.log(l_i))


@triton.jit
def _rmsnorm(X, R, Wt, Y, s_x, s_y, N, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    o = tl.arange(0, BLOCK)
    mk = o < N
    x = tl.load(X + row * s_x + o, mask=mk, other=0.0).to(tl.float32)
    if HAS_RES:
        x += tl.load(R + row * N + o, mask=mk, other=0.0).to(tl.float32)
        tl.store(R + row * N + o, x.to(R.dtype.element_ty), mask=mk)
    var = tl.sum(x * x, 0) / N
    y = x * tl.rsqrt(var + eps) * tl.load(Wt + o, mask=mk, other=0.0).to(tl.float32)
    tl.store(Y + row * s_y + o, y.to(Y.dtype.element_ty), mask=mk)


@triton.jit
def _group_quant(X, Y, S, s_x, N, SILU: tl.constexpr, G: tl.constexpr):
    """Per-token, per-128-values FP8 quantisation; with SILU, of silu(x[:, :N]) * x[:, N:] (SiLU-and-mul)."""
    row, g = tl.program_id(0), tl.program_id(1)
    o = g * G + tl.arange(0, G)
    x = tl.load(X + row * s_x + o).to(tl.float32)
    if SILU:
        up = tl.load(X + row * s_x + N + o).to(tl.float32)
        x = x / (1.0 + tl.exp(-x)) * up
    sc = tl.maximum(tl.max(tl.abs(x), 0), 1e-10) / 448.0
    tl.store(Y + row * N + o, (x / sc).to(Y.dtype.element_ty))
    tl.store(S + row * (N // G) + g, sc)


@triton.jit
def _rope(Q, K, pos, CS, s_qt, s_qh, s_kt, HB: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr):
    t = tl.program_id(0)
    p = tl.load(pos + t)
    half = HALF
    o = tl.arange(0, HALF)
    oh = tl.arange(0, HB)
    c = tl.load(CS + p * D + o)
    s = tl.load(CS + p * D + half + o)
    base = Q + t * s_qt + oh[:, None] * s_qh
    q1 = tl.load(base + o[None, :]).to(tl.float32)
    q2 = tl.load(base + half + o[None, :]).to(tl.float32)
    tl.store(base + o[None, :], (q1 * c[None, :] - q2 * s[None, :]).to(Q.dtype.element_ty))
    tl.store(base + half + o[None, :], (q2 * c[None, :] + q1 * s[None, :]).to(Q.dtype.element_ty))
    k1 = tl.load(K + t * s_kt + o).to(tl.float32)
    k2 = tl.load(K + t * s_kt + half + o).to(tl.float32)
    tl.store(K + t * s_kt + o, (k1 * c - k2 * s).to(K.dtype.element_ty))
    tl.store(K + t * s_kt + half + o, (k2 * c + k1 * s).to(K.dtype.element_ty))


# ---------------------------------------------------------------------------------------------- Python wrappers
def _gemm_cfg(m: int, n: int) -> tuple[int, int, int, int]:
    """(BM, BN, warps, stages): small tiles for decode rows so the grid fills 132 SMs, large for prefill."""
    if m <= 16:
        return 16, 64, 4, 4
    if m <= 64:
        return 32 if m <= 32 else 64, 64, 4, 4
    if m <= 256:
        return 64, 128, 4, 3
    return 128, 128, 8, 3


class Linear:
    """A block-FP8 weight [n, k] with its 128x128 scales; `__call__(a_fp8, a_scales)` -> bf16 [m, n]."""

    def __init__(self, n: int, k: int, dev: torch.device) -> None:
        w = torch.randn(n, k, device=dev) * 0.05
        self.n, self.k = n, k
        self.w = w.to(FP8)
        self.s = torch.rand(math.ceil(n / 128), math.ceil(k / 128), device=dev) * 0.02 + 0.01

    def __call__(self, a: torch.Tensor, sa: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        m = a.shape[0]
        out = torch.empty(m, self.n, device=a.device, dtype=torch.bfloat16) if out is None else out
        bm, bn, nw, ns = _gemm_cfg(m, self.n)
        grid = (triton.cdiv(m, bm) * triton.cdiv(self.n, bn),)
        _gemm_fp8_block[grid](a, self.w, out, sa, self.s, m, self.n, self.k, a.stride(0), self.w.stride(0),
                              out.stride(0), sa.stride(0), self.s.stride(0), BM=bm, BN=bn, BK=128, GROUP=8,
                              num_warps=nw, num_stages=ns)  # fmt: skip
        return out

    def ref(self, a: torch.Tensor, sa: torch.Tensor) -> torch.Tensor:
        af = a.float() * sa.repeat_interleave(128, 1)[:, : self.k]
        wf = (
            self.w.float() * self.s.repeat_interleave(128, 0)[: self.n].repeat_interleave(128, 1)[:, : self.k]
        )
        return af @ wf.t()


def gemm_splitk(
    lin: Linear, a: torch.Tensor, sa: torch.Tensor, out: torch.Tensor, bn: int, split: int
) -> None:
    """out (fp32, [m, n]) = a @ w^T with K split `split` ways (zeroed first: counted in the time)."""
    m = a.shape[0]
    kb = lin.k // 128
    k_per = triton.cdiv(kb, split) * 128
    out.zero_()
    grid = (triton.cdiv(m, 16) * triton.cdiv(lin.n, bn), triton.cdiv(lin.k, k_per))
    _gemm_fp8_block_splitk[grid](a, lin.w, out, sa, lin.s, m, lin.n, lin.k, a.stride(0), lin.w.stride(0),
                                 out.stride(0), sa.stride(0), lin.s.stride(0), k_per, BM=16, BN=bn, BK=128,
                                 num_warps=4, num_stages=4)  # fmt: skip


def quant(x: torch.Tensor, silu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    m = x.shape[0]
    n = x.shape[1] // (2 if silu else 1)
    y = torch.empty(m, n, device=x.device, dtype=FP8)
    s = torch.empty(m, n // 128, device=x.device, dtype=torch.float32)
    _group_quant[(m, n // 128)](x, y, s, x.stride(0), n, SILU=silu, G=128, num_warps=1)
    return y, s


def rmsnorm(x: torch.Tensor, w: torch.Tensor, res: torch.Tensor | None = None) -> torch.Tensor:
    m, n = x.shape
    y = torch.empty(m, n, device=x.device, dtype=torch.bfloat16)
    blk = triton.next_power_of_2(n)
    _rmsnorm[(m,)](x, res if res is not None else x, w, y, x.stride(0), y.stride(0), n, 1e-6,
                   HAS_RES=res is not None, BLOCK=blk, num_warps=8 if n > 2048 else 2)  # fmt: skip
    return y


def grouped_topk(
    logits: torch.Tensor, bias: torch.Tensor, n_experts: int = E
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 routing: sigmoid + correction bias, 8 groups, best 4 groups by top-2 sum, top-8 experts."""
    m = logits.shape[0]
    scores = logits.float().sigmoid()
    s = scores + bias
    gs = s.view(m, 8, n_experts // 8).topk(2, dim=-1).values.sum(-1)
    gidx = gs.topk(4, dim=-1).indices
    gmask = torch.zeros_like(gs).scatter_(1, gidx, 1.0)
    smask = gmask.unsqueeze(-1).expand(m, 8, n_experts // 8).reshape(m, n_experts)
    ids = s.masked_fill(smask == 0, float("-inf")).topk(TOPK, dim=-1).indices
    w = scores.gather(1, ids)
    return ids, w / w.sum(-1, keepdim=True) * 2.5


def moe_align(ids: torch.Tensor, n_exp: int, bm: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sort token-expert rows by expert, each expert's run padded to bm rows (static shapes: graph-capturable)."""
    flat = ids.reshape(-1)
    r = flat.numel()
    max_pad = ((r + n_exp * (bm - 1) + bm - 1) // bm) * bm
    counts = torch.zeros(n_exp, dtype=torch.int64, device=ids.device).scatter_add_(
        0, flat, torch.ones_like(flat)
    )
    padded = (counts + bm - 1) // bm * bm
    ends = padded.cumsum(0)
    starts = ends - padded
    order = torch.sort(flat, stable=True).indices
    se = flat[order]
    cstart = counts.cumsum(0) - counts
    dest = starts[se] + torch.arange(r, device=ids.device) - cstart[se]
    sorted_ids = torch.full((max_pad,), r, dtype=torch.int64, device=ids.device).scatter_(0, dest, order)
    blocks = torch.arange(max_pad // bm, device=ids.device) * bm
    expert_ids = torch.searchsorted(ends, blocks, right=True).clamp_(max=n_exp - 1)
    return sorted_ids, expert_ids, ends[-1:].clone()


def _moe_cfg(rows_per_expert: float) -> tuple[int, int, int, int]:
    if rows_per_expert <= 16:
        return 16, 64, 4, 4
    if rows_per_expert <= 64:
        return 32, 128, 4, 3
    return 64, 128, 4, 3


class Experts:
    """n_exp block-FP8 experts of intermediate `inter` (gate_up [2 inter, H], down [H, inter])."""

    def __init__(self, n_exp: int, inter: int, dev: torch.device) -> None:
        self.n_exp, self.inter = n_exp, inter
        self.bn_override = 0
        self.w1 = (torch.randn(n_exp, 2 * inter, H, device=dev) * 0.05).to(FP8)
        self.s1 = torch.rand(n_exp, 2 * inter // 128, H // 128, device=dev) * 0.02 + 0.01
        self.w2 = (torch.randn(n_exp, H, inter, device=dev) * 0.05).to(FP8)
        self.s2 = torch.rand(n_exp, H // 128, math.ceil(inter / 128), device=dev) * 0.02 + 0.01

    def launch(self, a, sa, w, al, n, k, wt, st, out, top_k, mul_w, bm) -> None:  # noqa: ANN001
        sorted_ids, expert_ids, n_post = al
        bn, nw, ns = (64, 4, 4) if bm == 16 else (128, 4, 3)
        if self.bn_override:
            bn = self.bn_override
        grid = (sorted_ids.numel() // bm * triton.cdiv(n, bn),)
        _moe_fp8_block[grid](a, wt, out, sa, st, w, sorted_ids, expert_ids, n_post, n, k, w.numel(),
                             a.stride(0), wt.stride(0), wt.stride(1), out.stride(0), sa.stride(0), st.stride(0),
                             st.stride(1), TOP_K=top_k, MUL_W=mul_w, BM=bm, BN=bn, BK=128, num_warps=nw,
                             num_stages=ns)  # fmt: skip

    def kernels(self, st: dict, x_key: str, ids_key: str, w_key: str) -> list[tuple[str, Callable[[], Any]]]:
        """The routed experts as named kernel groups over state `st` (x, ids [tokens, top_k], weights)."""

        def align() -> None:
            ids = st[ids_key]
            st["bm"] = bm = _moe_cfg(ids.numel() / self.n_exp)[0]
            st["al"] = moe_align(ids, self.n_exp, bm)

        def quant_in() -> None:
            st["mq"] = quant(st[x_key])

        def up() -> None:
            r = st[ids_key].numel()
            st["h1"] = torch.empty(r, 2 * self.inter, device=st[x_key].device, dtype=torch.bfloat16)
            a, sa = st["mq"]
            self.launch(a, sa, st[w_key].reshape(-1), st["al"], 2 * self.inter, H, self.w1, self.s1, st["h1"],
                        st[ids_key].shape[1], False, st["bm"])  # fmt: skip

        def act() -> None:
            st["h1q"] = quant(st["h1"], silu=True)

        def down() -> None:
            r = st[ids_key].numel()
            st["h2"] = torch.empty(r, H, device=st[x_key].device, dtype=torch.bfloat16)
            a, sa = st["h1q"]
            self.launch(a, sa, st[w_key].reshape(-1), st["al"], H, self.inter, self.w2, self.s2, st["h2"], 1,
                        True, st["bm"])  # fmt: skip

        def combine() -> None:
            ids = st[ids_key]
            st["moe"] = st["h2"].view(ids.shape[0], ids.shape[1], H).sum(1)

        return [("moe align/sort", align), ("moe input quant", quant_in), ("moe gate_up grouped GEMM", up),
                ("moe SiLU-and-mul + quant", act), ("moe down grouped GEMM", down), ("moe top-k sum", combine)]  # fmt: skip

    def forward(self, x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        st = {"x": x, "ids": ids, "w": w}
        for _, fn in self.kernels(st, "x", "ids", "w"):
            fn()
        return st["moe"]

    def ref(self, x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        m = x.shape[0]
        xq, xs = quant(x)
        xf = xq.float() * xs.repeat_interleave(128, 1)
        out = torch.zeros(m, H, device=x.device)
        for t in range(m):
            for j in range(ids.shape[1]):
                e = int(ids[t, j])
                w1 = self.w1[e].float() * self.s1[e].repeat_interleave(128, 0).repeat_interleave(128, 1)
                h = xf[t] @ w1.t()
                a = torch.nn.functional.silu(h[: self.inter]) * h[self.inter :]
                w2 = (
                    self.w2[e].float()
                    * self.s2[e].repeat_interleave(128, 0).repeat_interleave(128, 1)[:, : self.inter]
                )
                out[t] += w[t, j] * (a @ w2.t())
        return out


def mla_decode(q: torch.Tensor, kv: torch.Tensor, ctx: int, heads: int) -> torch.Tensor:
    """q [b, heads, 576] (absorbed), kv [b, ctx, 576] -> [b, heads, 512]: split-KV Triton kernel + lse combine."""
    b = q.shape[0]
    hb = 16
    nhb = heads // hb
    splits = max(1, min(triton.cdiv(264, b * nhb), triton.cdiv(ctx, 256)))
    split_len = triton.cdiv(triton.cdiv(ctx, splits), 32) * 32
    splits = triton.cdiv(ctx, split_len)
    o = torch.empty(b, splits, heads, KVL, device=q.device, dtype=torch.float32)
    lse = torch.empty(b, splits, heads, device=q.device, dtype=torch.float32)
    _mla_decode[(b, splits, nhb)](q, kv, o, lse, ctx, split_len, q.stride(0), q.stride(1), kv.stride(0),
                                  o.stride(0), o.stride(1), lse.stride(0), lse.stride(1),
                                  1.0 / math.sqrt(NOPE + ROPE), HB=hb, DL=KVL, DR=ROPE, BN=32, num_warps=4,
                                  num_stages=2)  # fmt: skip
    wgt = torch.softmax(lse, dim=1)
    return (o * wgt.unsqueeze(-1)).sum(1).to(torch.bfloat16)


# ------------------------------------------------------------------------------------------------- one layer
class Layer:
    """One R1 MoE layer as one GPU runs it. attn_tp: heads split (8: TP8; 1: attention-DP rank, 128 heads);
    moe: 'tp8' (256 experts, intermediate 2048/8) or 'ep8' (32 whole experts, rows of 8 ranks' tokens)."""

    def __init__(self, attn_tp: int, moe: str, max_tokens: int, ctx: int, dev: torch.device) -> None:
        self.h = HEADS // attn_tp
        self.moe = moe
        self.qkv_a = Linear(QL + KVL + ROPE, H, dev)
        self.q_b = Linear(self.h * (NOPE + ROPE), QL, dev)
        self.kv_b = Linear(self.h * (NOPE + VD), KVL, dev)  # prefill (non-absorbed) path
        self.o = Linear(H, self.h * VD, dev)
        self.w_uk = torch.randn(self.h, NOPE, KVL, device=dev, dtype=torch.bfloat16) * 0.05
        self.w_uv = torch.randn(self.h, KVL, VD, device=dev, dtype=torch.bfloat16) * 0.05
        self.n_in, self.n_q, self.n_kv = (
            torch.rand(n, device=dev, dtype=torch.bfloat16) + 0.5 for n in (H, QL, KVL)
        )
        self.n_post = torch.rand(H, device=dev, dtype=torch.bfloat16) + 0.5
        self.router = torch.randn(E, H, device=dev, dtype=torch.bfloat16) * 0.02
        self.bias = torch.randn(E, device=dev) * 0.01
        if moe == "tp8":
            self.experts = Experts(E, I_MOE // 8, dev)
            self.shared_up, self.shared_down = Linear(2 * I_MOE // 8, H, dev), Linear(H, I_MOE // 8, dev)
        else:
            self.experts = Experts(E // 8, I_MOE, dev)
            self.shared_up, self.shared_down = Linear(2 * I_MOE, H, dev), Linear(H, I_MOE, dev)
        self.cs = torch.randn(max(ctx, max_tokens) + 8, ROPE, device=dev)

    def steps(self, x: torch.Tensor, res: torch.Tensor, kv: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor,
              decode: bool, ctx: int, ep_in: tuple | None) -> list[tuple[str, Callable[[], Any]]]:  # fmt: skip
        """The layer as named kernels groups (closures over one state dict)."""
        m = x.shape[0]
        st: dict = {}
        out: list[tuple[str, Callable[[], Any]]] = []

        def add(name: str, fn) -> None:  # noqa: ANN001
            out.append((name, fn))

        add("input RMSNorm + residual", lambda: st.__setitem__("xn", rmsnorm(x, self.n_in, res)))
        add("quant for qkv_a", lambda: st.__setitem__("xq", quant(st["xn"])))
        add("GEMM fused q_a/kv_a", lambda: st.__setitem__("qkv", self.qkv_a(*st["xq"])))

        def norms() -> None:
            st["qa"] = rmsnorm(st["qkv"][:, :QL], self.n_q)
            st["kvc"] = rmsnorm(st["qkv"][:, QL : QL + KVL], self.n_kv)

        add("q_a / kv_a RMSNorm", norms)
        add("quant for q_b", lambda: st.__setitem__("qaq", quant(st["qa"])))
        add("GEMM q_b", lambda: st.__setitem__("q", self.q_b(*st["qaq"]).view(m, self.h, NOPE + ROPE)))

        def rope() -> None:
            kpe = st["qkv"][:, QL + KVL :]
            _rope[(m,)](st["q"][:, :, NOPE:], kpe, pos, self.cs, st["q"].stride(0), st["q"].stride(1),
                        st["qkv"].stride(0), HB=self.h, D=ROPE, HALF=ROPE // 2, num_warps=1)  # fmt: skip

        add("RoPE q_pe/k_pe", rope)

        def cache_write() -> None:
            flat = kv.view(-1, KVL + ROPE)
            flat.index_copy_(0, slots, torch.cat([st["kvc"], st["qkv"][:, QL + KVL :]], 1))

        add("latent KV-cache write", cache_write)
        if decode:

            def absorb() -> None:
                ql = torch.bmm(st["q"][:, :, :NOPE].transpose(0, 1), self.w_uk).transpose(0, 1)
                st["qabs"] = torch.cat([ql, st["q"][:, :, NOPE:]], -1)

            add("bmm W_UK (absorb)", absorb)
            add(
                "MLA decode attention (split-KV + combine)",
                lambda: st.__setitem__("ol", mla_decode(st["qabs"], kv.view(m, -1, KVL + ROPE), ctx, self.h)),
            )
            add(
                "bmm W_UV",
                lambda: st.__setitem__(
                    "attn",
                    torch.bmm(st["ol"].transpose(0, 1), self.w_uv).transpose(0, 1).reshape(m, self.h * VD),
                ),
            )
        else:
            add("quant for kv_b", lambda: st.__setitem__("kvq", quant(st["kvc"])))
            add("GEMM kv_b", lambda: st.__setitem__("kvb", self.kv_b(*st["kvq"]).view(m, self.h, NOPE + VD)))

            def attn() -> None:
                q = st["q"].transpose(0, 1).unsqueeze(0)
                kpe = st["qkv"][:, QL + KVL :].unsqueeze(0).expand(self.h, m, ROPE)
                k = torch.cat([st["kvb"][:, :, :NOPE].transpose(0, 1), kpe], -1).unsqueeze(0)
                v = torch.nn.functional.pad(st["kvb"][:, :, NOPE:].transpose(0, 1), (0, ROPE)).unsqueeze(0)
                o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                st["attn"] = o[0, :, :, :VD].transpose(0, 1).reshape(m, self.h * VD)

            add("MLA prefill attention (SDPA, causal)", attn)
        add("quant for o_proj", lambda: st.__setitem__("aq", quant(st["attn"])))
        add("GEMM o_proj", lambda: st.__setitem__("y", self.o(*st["aq"])))
        add(
            "post-attention RMSNorm + residual",
            lambda: st.__setitem__("yn", rmsnorm(st["y"], self.n_post, res)),
        )
        add("router GEMM (bf16)", lambda: st.__setitem__("logits", st["yn"] @ self.router.t()))
        add(
            "grouped top-k routing",
            lambda: st.update(zip(("ids", "w"), grouped_topk(st["logits"], self.bias), strict=True)),
        )
        if self.moe == "tp8":
            out.extend(self.experts.kernels(st, "yn", "ids", "w"))
        else:
            # an EP8 rank's 32 experts get the rows its experts were picked for by all 8 ranks' tokens: on average
            # 8 m rows (8 ranks x m tokens x 8 experts / 8 ranks), each a distinct token-expert pair
            assert ep_in is not None  # an EP8 layer is built with its experts' inputs
            st["x_ep"], st["ids_ep"], st["w_ep"] = ep_in
            out.extend(self.experts.kernels(st, "x_ep", "ids_ep", "w_ep"))
        add("shared expert quant", lambda: st.__setitem__("sq", quant(st["yn"])))
        add("shared expert gate_up GEMM", lambda: st.__setitem__("s1", self.shared_up(*st["sq"])))
        add("shared expert SiLU-and-mul + quant", lambda: st.__setitem__("s1q", quant(st["s1"], silu=True)))
        add("shared expert down GEMM", lambda: st.__setitem__("s2", self.shared_down(*st["s1q"])))
        add("shared + routed add", lambda: torch.add(st["s2"], st["moe"][:m], out=x))
        return out


# ------------------------------------------------------------------------------------------------- timing
def graph_time(fns: list, replays: int = 20) -> float:
    """Median seconds of one replay of a CUDA graph that runs `fns` in order."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            for f in fns:
                f()
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in fns:
            f()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del g
    return statistics.median(times)


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def checks(dev: torch.device, log) -> None:  # noqa: ANN001
    lin = Linear(2112, H, dev)
    for m in (1, 7, 64, 300):
        a, sa = quant(torch.randn(m, H, device=dev, dtype=torch.bfloat16))
        log({"kind": "check", "what": f"block-FP8 GEMM m={m}", "rel_error": rel(lin(a, sa), lin.ref(a, sa))})
    ex = Experts(16, 256, dev)
    x = torch.randn(5, H, device=dev, dtype=torch.bfloat16)
    ids = torch.stack([torch.randperm(16, device=dev)[:TOPK] for _ in range(5)])
    w = torch.rand(5, TOPK, device=dev)
    log(
        {
            "kind": "check",
            "what": "fused MoE (16 experts, I=256, 5 tokens)",
            "rel_error": rel(ex.forward(x, ids, w), ex.ref(x, ids, w)),
        }
    )
    b, ctx, h = 3, 700, 16
    q = torch.randn(b, h, KVL + ROPE, device=dev, dtype=torch.bfloat16)
    kv = torch.randn(b, ctx, KVL + ROPE, device=dev, dtype=torch.bfloat16)
    ref = (
        torch.softmax((q.float() @ kv.float().transpose(1, 2)) / math.sqrt(NOPE + ROPE), -1)
        @ kv[:, :, :KVL].float()
    )
    log(
        {
            "kind": "check",
            "what": "MLA decode (3 x 700 ctx, 16 heads)",
            "rel_error": rel(mla_decode(q, kv, ctx, h), ref),
        }
    )


def run_layer(
    cfg: str, m: int, decode: bool, ctx: int, copies: int, dev: torch.device, breakdown: bool
) -> dict:
    attn_tp, moe = {"tp8": (8, "tp8"), "dp8ep8": (1, "ep8")}[cfg]
    layers = [Layer(attn_tp, moe, m, ctx, dev) for _ in range(copies)]
    seqs = m if decode else 1
    ctx_alloc = ctx + 1 if decode else m
    all_steps = []
    for ly in layers:
        x = torch.randn(m, H, device=dev, dtype=torch.bfloat16)
        res = torch.randn(m, H, device=dev, dtype=torch.bfloat16)
        kv = torch.randn(seqs, ctx_alloc, KVL + ROPE, device=dev, dtype=torch.bfloat16)
        if decode:
            pos = torch.full((m,), ctx, device=dev, dtype=torch.int64)
            slots = torch.arange(m, device=dev) * ctx_alloc + ctx
        else:
            pos = torch.arange(m, device=dev)
            slots = torch.arange(m, device=dev)
        ep_in = None
        if moe == "ep8":
            ep_in = (torch.randn(8 * m, H, device=dev, dtype=torch.bfloat16),
                     torch.randint(0, E // 8, (8 * m, 1), device=dev), torch.rand(8 * m, 1, device=dev))  # fmt: skip
        all_steps.append(ly.steps(x, res, kv, pos, slots, decode, ctx if decode else m, ep_in))
    total = graph_time([f for st in all_steps for _, f in st]) / copies
    rec: dict[str, Any] = {"kind": "layer", "config": cfg, "mode": "decode" if decode else "prefill", "m": m,
           "ctx": ctx if decode else m, "seconds": total, "copies": copies}  # fmt: skip
    if breakdown:
        parts: dict[str, float] = {}
        names = [n for n, _ in all_steps[0]]
        for i, n in enumerate(names):
            # a kernel group needs its inputs: run every earlier group eagerly once first (state is kept)
            for st in all_steps:
                for _, f in st[:i]:
                    f()
            parts[n] = parts.get(n, 0.0) + graph_time([st[i][1] for st in all_steps]) / copies
        rec["parts"] = parts
    del layers, all_steps
    torch.cuda.empty_cache()
    return rec


def small_m_gemms(dev: torch.device, log) -> None:  # noqa: ANN001
    shapes = {"fused q_a/kv_a (tp-replicated)": (2112, H), "q_b tp8": (3072, QL), "o_proj tp8": (H, 2048),
              "kv_b tp8": (4096, KVL), "shared gate_up tp8": (512, H), "shared down tp8": (H, 256),
              "dense gate_up tp8": (4608, H), "dense down tp8": (H, 2304)}  # fmt: skip
    for name, (n, k) in shapes.items():
        sets = max(2, math.ceil(3 * 60e6 / (n * k)))
        lins = [Linear(n, k, dev) for _ in range(sets)]
        for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096):
            ins = [quant(torch.randn(m, k, device=dev, dtype=torch.bfloat16)) for _ in range(sets)]
            outs = [torch.empty(m, n, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
            fns = [(lambda L=L, a=a, o=o: L(a[0], a[1], o)) for L, a, o in zip(lins, ins, outs, strict=True)]
            t = graph_time(fns) / sets
            log({"kind": "gemm", "name": name, "m": m, "n": n, "k": k, "seconds": t,
                 "weight_tb_s": n * k / t / 1e12, "tflops": 2 * m * n * k / t / 1e12, "impl": "triton block-fp8"})  # fmt: skip
        del lins


def tuned_small_m(dev: torch.device, log) -> None:  # noqa: ANN001
    """The fastest of several kernel configurations per shape and m (as engines tune theirs): split-K GEMMs,
    and the fused MoE's N tile, at decode sizes. Weights rotate past 3x L2."""
    shapes = {"fused q_a/kv_a (tp-replicated)": (2112, H), "q_b tp8": (3072, QL), "o_proj tp8": (H, 2048),
              "shared gate_up tp8": (512, H), "shared down tp8": (H, 256), "dense gate_up tp8": (4608, H),
              "dense down tp8": (H, 2304), "q_b tp1": (24576, QL), "o_proj tp1": (H, 16384),
              "shared gate_up tp1": (4096, H), "shared down tp1": (H, 2048)}  # fmt: skip
    for name, (n, k) in shapes.items():
        sets = max(2, math.ceil(3 * 60e6 / (n * k)))
        lins = [Linear(n, k, dev) for _ in range(sets)]
        for m in (1, 4, 16, 64, 256):
            ins = [quant(torch.randn(m, k, device=dev, dtype=torch.bfloat16)) for _ in range(sets)]
            outs = [torch.empty(m, n, device=dev, dtype=torch.float32) for _ in range(sets)]
            best: tuple[float, int, int] | None = None
            for bn in (32, 64, 128):
                for split in (1, 2, 4, 8, 16):
                    if split > k // 128:
                        continue
                    fns = [(lambda L=L, a=a, o=o, bn=bn, sp=split: gemm_splitk(L, a[0], a[1], o, bn, sp))
                           for L, a, o in zip(lins, ins, outs, strict=True)]  # fmt: skip
                    t = graph_time(fns, replays=10) / sets
                    if best is None or t < best[0]:
                        best = (t, bn, split)
            assert best is not None  # split 1 always runs
            t, bn, split = best
            ref = lins[0].ref(*ins[0])
            gemm_splitk(lins[0], *ins[0], outs[0], bn, split)
            log({"kind": "gemm_tuned", "name": name, "m": m, "n": n, "k": k, "seconds": t, "bn": bn, "split": split,
                 "weight_tb_s": n * k / t / 1e12, "rel_error": rel(outs[0], ref), "impl": "triton block-fp8 split-K"})  # fmt: skip
        del lins
    for label, n_exp, inter, rows_of in (("tp8-slice", E, I_MOE // 8, 1), ("ep8-whole", E // 8, I_MOE, 8)):
        sets = 3
        exs = [Experts(n_exp, inter, dev) for _ in range(sets)]
        for m in (1, 4, 16, 64, 256):
            rows = m * rows_of
            if rows_of == 1:
                ids = [
                    torch.stack([torch.randperm(E, device=dev)[:TOPK] for _ in range(m)]) for _ in range(sets)
                ]
                xs = [torch.randn(m, H, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
            else:
                ids = [torch.randint(0, n_exp, (rows, 1), device=dev) for _ in range(sets)]
                xs = [torch.randn(rows, H, device=dev, dtype=torch.bfloat16) for _ in range(sets)]
            ws = [torch.rand(i.shape, device=dev) for i in ids]
            fastest: tuple[float, float, int] | None = None
            for bn in (32, 64, 128):
                for ex in exs:
                    ex.bn_override = bn
                sts = [{"x": x, "ids": i, "w": w} for x, i, w in zip(xs, ids, ws, strict=True)]
                kern = [ex.kernels(st, "x", "ids", "w") for ex, st in zip(exs, sts, strict=True)]
                for ks in kern:
                    for _, f in ks[:2]:
                        f()
                t_up = graph_time([ks[2][1] for ks in kern], replays=10) / sets
                for ks in kern:
                    ks[3][1]()
                t_dn = graph_time([ks[4][1] for ks in kern], replays=10) / sets
                if fastest is None or t_up + t_dn < fastest[0] + fastest[1]:
                    fastest = (t_up, t_dn, bn)
            assert fastest is not None  # three block sizes ran
            touched = float(sum(int(torch.unique(i).numel()) for i in ids)) / sets
            wbytes = touched * 3 * inter * H
            log({"kind": "moe_tuned", "shape": label, "m": m, "rows": ids[0].numel(), "experts_touched": touched,
                 "gate_up_s": fastest[0], "down_s": fastest[1], "bn": fastest[2],
                 "weight_tb_s": wbytes / (fastest[0] + fastest[1]) / 1e12})  # fmt: skip
        del exs
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="layer-bench")
    ap.add_argument("--copies", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="few sizes (a smoke run)")
    ap.add_argument("--tuned-only", action="store_true", help="only the tuned small-m GEMM / MoE sweep")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "layer_bench.jsonl"
    dev = torch.device("cuda")
    records: list[dict] = []

    def log(r: dict) -> None:
        r["t"] = time.time()
        records.append(r)
        with path.open("a") as f:
            f.write(json.dumps(r) + "\n")
        print(
            json.dumps(
                {k: (round(v, 7) if isinstance(v, float) else v) for k, v in r.items() if k != "parts"}
            ),
            flush=True,
        )

    log({"kind": "env", "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
         "cuda": torch.version.cuda})  # fmt: skip
    torch.manual_seed(0)
    for what, fn in (("checks", lambda: checks(dev, log)),):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            log({"kind": "error", "what": what, "error": repr(exc), "tb": traceback.format_exc()[-2000:]})
    if a.tuned_only:
        try:
            tuned_small_m(dev, log)
        except Exception as exc:  # noqa: BLE001
            log(
                {
                    "kind": "error",
                    "what": "tuned",
                    "error": repr(exc)[:500],
                    "tb": traceback.format_exc()[-1500:],
                }
            )
        for r in records:
            if r["kind"] in ("gemm_tuned", "moe_tuned", "error"):
                print(
                    {
                        k: (round(v, 7) if isinstance(v, float) else v)
                        for k, v in r.items()
                        if k not in ("t", "tb")
                    }
                )
        return 0
    decode_b = (1, 8, 64, 256) if a.quick else (1, 2, 4, 8, 16, 32, 64, 128, 256)
    prefill_t = (1024,) if a.quick else (1024, 2048, 4096, 8192)
    ctx = 1536
    for cfg in ("tp8", "dp8ep8"):
        for b in decode_b:
            try:
                log(run_layer(cfg, b, True, ctx, a.copies, dev, breakdown=b in (1, 32, 256) or a.quick))
            except Exception as exc:  # noqa: BLE001
                log({"kind": "error", "what": f"layer {cfg} decode b={b}", "error": repr(exc)[:500],
                     "tb": traceback.format_exc()[-1500:]})  # fmt: skip
                torch.cuda.empty_cache()
        for t in prefill_t:
            if cfg == "dp8ep8" and t > 4096:
                continue
            try:
                log(run_layer(cfg, t, False, ctx, max(1, a.copies - 1), dev, breakdown=t in (1024, 8192)))
            except Exception as exc:  # noqa: BLE001
                log({"kind": "error", "what": f"layer {cfg} prefill {t}", "error": repr(exc)[:500],
                     "tb": traceback.format_exc()[-1500:]})  # fmt: skip
                torch.cuda.empty_cache()
    try:
        small_m_gemms(dev, log)
    except Exception as exc:  # noqa: BLE001
        log(
            {
                "kind": "error",
                "what": "small-m gemms",
                "error": repr(exc)[:500],
                "tb": traceback.format_exc()[-1500:],
            }
        )
    print("\n== layer forward (one GPU, CUDA graph, median) ==")
    for r in records:
        if r["kind"] == "layer":
            print(
                f"{r['config']:7s} {r['mode']:7s} m={r['m']:5d} ctx={r['ctx']:5d}: {r['seconds'] * 1e6:9.1f} us"
            )
    for r in records:
        if r["kind"] == "layer" and "parts" in r:
            print(
                f"-- {r['config']} {r['mode']} m={r['m']}: sum of parts {sum(r['parts'].values()) * 1e6:.1f} us "
                f"vs whole {r['seconds'] * 1e6:.1f} us"
            )
            for n, v in r["parts"].items():
                print(f"   {n:44s} {v * 1e6:8.1f} us")
    for r in records:
        if r["kind"] in ("check", "error"):
            print(r["kind"], r.get("what"), r.get("rel_error", r.get("error")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
