"""The small kernels of a DeepSeek-R1 step inside a CUDA graph: the per-kernel floor and the streaming rate of the
activation-sized ones, at decode and prefill token counts (m = 1 .. 8192).

    python -m r1lab.calibrate.small_kernel_bench [--out FILE]

Needs a CUDA GPU (torch, triton). Each kernel kind runs as a chain of CHAIN launches on distinct buffers, captured
in one CUDA graph and replayed; seconds = median over REPS replays (CUDA events, layer_bench.graph_time) / CHAIN, so the figure includes
the graph's node-to-node gap, as a decode step's kernels see it. Kinds:
- `tiny_add`: a one-element in-place add (torch): the floor of any kernel in a graph;
- `rmsnorm_residual`: Triton, one program per token: x += residual; residual = x; x = rmsnorm(x) * w, hidden 7168
  bf16 (reads 2 x 2 B, writes 2 x 2 B per value);
- `group_quant_fp8`: Triton, per-token 1 x 128 group FP8 quantisation of m x 7168 bf16 (reads 2 B, writes 1 B +
  one fp32 scale per 128 values), as block-FP8 linears need before every GEMM;
- `copy`: torch copy of m x 7168 bf16 (reads 2 B, writes 2 B per value).
Writes one JSON record per (kind, m) as it measures: bytes moved, seconds, tb_s.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

HIDDEN = 7168
CHAIN = 64
REPS = 20
SIZES = (1, 4, 16, 64, 256, 1024, 4096, 8192)


def _kernels():  # noqa: ANN202
    import triton
    import triton.language as tl

    @triton.jit
    def rmsnorm_residual(x_ptr, r_ptr, w_ptr, n, eps, BLOCK: tl.constexpr):  # noqa: N803
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + row * n + offs, mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + row * n + offs, mask=mask, other=0.0).to(tl.float32)
        x = x + r
        tl.store(r_ptr + row * n + offs, x.to(tl.bfloat16), mask=mask)
        var = tl.sum(x * x, axis=0) / n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = x * tl.rsqrt(var + eps) * w
        tl.store(x_ptr + row * n + offs, y.to(tl.bfloat16), mask=mask)

    @triton.jit
    def group_quant(x_ptr, q_ptr, s_ptr, GROUP: tl.constexpr):  # noqa: N803
        g = tl.program_id(0)
        offs = tl.arange(0, GROUP)
        x = tl.load(x_ptr + g * GROUP + offs).to(tl.float32)
        amax = tl.maximum(tl.max(tl.abs(x), axis=0), 1e-10)
        scale = amax / 448.0
        tl.store(q_ptr + g * GROUP + offs, (x / scale).to(tl.float8e4nv))
        tl.store(s_ptr + g, scale)

    return triton, rmsnorm_residual, group_quant


def measure(kind: str, m: int) -> dict:
    import torch

    from r1lab.calibrate.layer_bench import graph_time

    triton, rmsnorm_residual, group_quant = _kernels()
    dev = "cuda"
    bufs = []
    if kind == "tiny_add":
        bufs = [torch.zeros(1, device=dev) for _ in range(CHAIN)]
        nbytes = 8.0

        def one(i: int) -> None:
            bufs[i].add_(1.0)

    elif kind == "rmsnorm_residual":
        w = torch.ones(HIDDEN, device=dev, dtype=torch.bfloat16)
        bufs = [
            (
                torch.randn(m, HIDDEN, device=dev, dtype=torch.bfloat16),
                torch.randn(m, HIDDEN, device=dev, dtype=torch.bfloat16),
            )
            for _ in range(CHAIN)
        ]
        nbytes = m * HIDDEN * 8.0
        block = triton.next_power_of_2(HIDDEN)

        def one(i: int) -> None:
            x, r = bufs[i]
            rmsnorm_residual[(m,)](x, r, w, HIDDEN, 1e-6, BLOCK=block, num_warps=8)

    elif kind == "group_quant_fp8":
        bufs = [
            (
                torch.randn(m, HIDDEN, device=dev, dtype=torch.bfloat16),
                torch.empty(m, HIDDEN, device=dev, dtype=torch.float8_e4m3fn),
                torch.empty(m, HIDDEN // 128, device=dev, dtype=torch.float32),
            )
            for _ in range(CHAIN)
        ]
        nbytes = m * HIDDEN * (2 + 1 + 4 / 128)

        def one(i: int) -> None:
            x, q, s = bufs[i]
            group_quant[(m * HIDDEN // 128,)](x, q, s, GROUP=128, num_warps=1)

    elif kind == "copy":
        bufs = [
            (
                torch.randn(m, HIDDEN, device=dev, dtype=torch.bfloat16),
                torch.empty(m, HIDDEN, device=dev, dtype=torch.bfloat16),
            )
            for _ in range(CHAIN)
        ]
        nbytes = m * HIDDEN * 4.0

        def one(i: int) -> None:
            bufs[i][1].copy_(bufs[i][0])

    else:
        raise ValueError(kind)
    for i in range(CHAIN):  # compile / warm up outside the graph
        one(i)
    torch.cuda.synchronize()
    sec = graph_time([functools.partial(one, i) for i in range(CHAIN)], replays=REPS) / CHAIN
    bufs.clear()
    torch.cuda.empty_cache()
    return {
        "kind": kind,
        "m": m if kind != "tiny_add" else 1,
        "hidden": HIDDEN,
        "bytes": nbytes,
        "seconds": sec,
        "tb_s": nbytes / sec / 1e12,
        "chain": CHAIN,
        "reps": REPS,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="-")
    a = ap.parse_args(argv)
    import torch

    out = sys.stdout if a.out == "-" else Path(a.out).open("w", encoding="utf-8")
    head = {
        "kind": "device",
        "name": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    print(json.dumps(head), file=out, flush=True)
    for kind in ("tiny_add", "rmsnorm_residual", "group_quant_fp8", "copy"):
        for m in SIZES if kind != "tiny_add" else (1,):
            print(json.dumps(measure(kind, m)), file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
