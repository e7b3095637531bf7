"""MLA prefill attention of one TP8 shard (16 heads) at long prompts, as `layer_bench.py` runs it in its layer
forward (k = [k_nope | k_pe], v padded to the q/k head dim, PyTorch SDPA causal), at prompt sizes past the layer
forward's 8192: the model extends the measured attention rate with these instead of holding the 8192 value.

    python -m r1lab.calibrate.prefill_attention_bench [--out FILE] [--sizes 1024,8192,16384,32768,65536]

Needs a CUDA GPU (torch). Writes one JSON record per size, as it measures: kind "attention_prefill", heads, m
(causal prompt of m tokens, m(m+1)/2 query-key pairs), seconds (median of CUDA-event-timed runs after warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HEADS, NOPE, ROPE, VD = 16, 128, 64, 128  # DeepSeek-R1 MLA, one TP8 shard


def measure(m: int, reps: int = 5) -> float:
    import torch

    dev = "cuda"
    q = torch.randn(1, HEADS, m, NOPE + ROPE, device=dev, dtype=torch.bfloat16)
    kvb = torch.randn(m, HEADS, NOPE + VD, device=dev, dtype=torch.bfloat16)
    kpe = torch.randn(m, ROPE, device=dev, dtype=torch.bfloat16)

    def attn() -> torch.Tensor:  # the layer forward's attention part, unchanged
        k = torch.cat(
            [kvb[:, :, :NOPE].transpose(0, 1), kpe.unsqueeze(0).expand(HEADS, m, ROPE)], -1
        ).unsqueeze(0)
        v = torch.nn.functional.pad(kvb[:, :, NOPE:].transpose(0, 1), (0, ROPE)).unsqueeze(0)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return o[0, :, :, :VD].transpose(0, 1).reshape(m, HEADS * VD)

    for _ in range(2):
        attn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        attn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="-", help="JSON lines file ('-': stdout)")
    ap.add_argument("--sizes", default="1024,8192,16384,32768,65536")
    a = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("prefill_attention_bench: needs torch with CUDA", file=sys.stderr)
        return 1
    if not torch.cuda.is_available():
        print("prefill_attention_bench: no CUDA GPU", file=sys.stderr)
        return 1
    out = sys.stdout if a.out == "-" else Path(a.out).open("w", encoding="utf-8")
    for m in (int(x) for x in a.sizes.split(",")):
        rec = {"kind": "attention_prefill", "heads": HEADS, "m": m, "seconds": measure(m),
               "impl": "torch SDPA causal (layer_bench's MLA prefill attention)",
               "device_name": torch.cuda.get_device_name(), "torch": torch.__version__}  # fmt: skip
        out.write(json.dumps(rec) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
