"""Capture, or check against a capture, `repr(predict(...).as_dict())` over a broad set of load points.

    .venv/bin/python scripts/predict_cases.py capture FILE   # before a change to r1lab.perf (FILE outside the repo)
    .venv/bin/python scripts/predict_cases.py check FILE     # after it: lists every case that differs, exit 1

The cases: every predict() call `plan_experiment` makes for every params file under params/ (method "simulate"
and "auto"), and a grid over engines (vLLM, SGLang, TensorRT-LLM), parallelism (TP, PP, attention-DP under EP,
TP x EP, P/D), MTP, fixed and ranged lengths, concurrency and Poisson rates, small KV caches (preemption), a small
max_num_seqs, chunked prefill off. `repr` of the whole prediction: a speed-up of the simulation must leave every
float bit for bit (`--only N` checks the first N grid cases, for a quick look).

Not a test: the figures change on purpose whenever the performance model does (#18); a refactoring compares
against a capture taken just before it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from r1lab.config import load_experiment  # noqa: E402
from r1lab.perf import Disaggregation, planner  # noqa: E402
from r1lab.perf.predict import parse_parallelism  # noqa: E402
from r1lab.perf.predict import predict as _predict  # noqa: E402


def planner_cases() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """(args, kwargs) of every predict() the planner makes on every params file, both methods."""
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    real = planner.predict

    def spy(*a: Any, **k: Any) -> Any:
        seen.append((a, dict(k)))
        return real(*a, **k)

    planner.predict = spy
    try:
        for params in sorted((ROOT / "params").glob("*.yaml")):
            exp = load_experiment(params)
            for method in ("simulate", "auto"):
                planner.plan_experiment(exp, method=method)
    finally:
        planner.predict = real
    return seen


def grid_cases() -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    out: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def add(hw: str, gpus: int, par: str, eng: str, isl: int, osl: int, conc: int | None, **kw: Any) -> None:
        for method in ("simulate", "auto"):
            out.append(((hw, gpus, par, eng, isl, osl, conc), {**kw, "method": method}))

    lengths = [(1024, 1024), (8192, 1024), (1024, 8192), (128, 2048), (16000, 512)]
    for eng in ("vllm", "sglang", "trtllm"):
        for hw, gpus, par, extra in [
            ("H200", 8, "TP8", {}),
            ("H200", 8, "TP1 DP8 EP8", {}),
            ("H200", 8, "TP2 DP4 EP", {}),
            ("H100 NVL", 16, "TP8xPP2", {"network_name": "global-networking"}),
            ("H200", 8, "TP8 EP4", {}),
        ]:
            for isl, osl in lengths:
                for conc in (1, 16, 128, 512):
                    add(hw, gpus, par, eng, isl, osl, conc, **extra)
            add(hw, gpus, par, eng, 2048, 1024, 64, num_speculative_tokens=1, **extra)
            add(hw, gpus, par, eng, 1024, 2048, 256, num_speculative_tokens=2, **extra)
            add(hw, gpus, par, eng, 1024, 1024, None, rate=4.0, **extra)
            add(hw, gpus, par, eng, 4096, 1024, None, rate=20.0, **extra)
            add(hw, gpus, par, eng, 1024, 1024, 64, isl_range=(900, 1100), osl_range=(900, 1100), **extra)
            add(hw, gpus, par, eng, 3000, 1500, 200, isl_range=(1000, 5000), osl_range=(10, 3000), **extra)
            add(hw, gpus, par, eng, 2000, 3000, 512, gpu_memory_utilization=0.62, max_num_seqs=512, **extra)
            add(hw, gpus, par, eng, 16000, 4000, 96, gpu_memory_utilization=0.6, **extra)
            add(hw, gpus, par, eng, 1024, 1024, 64, max_num_seqs=8, **extra)
            add(hw, gpus, par, eng, 12000, 800, 32, enable_chunked_prefill=False, **extra)
            add(hw, gpus, par, eng, 1024, 512, 40, num_requests=300, seed=3, **extra)
        # P/D: one prefill pool feeding decode instances
        for pre, pi, di, dpar in [("TP8", 1, 1, "TP8"), ("TP8", 1, 2, "TP1 DP8 EP8"), ("TP4", 2, 1, "TP8")]:
            pd = Disaggregation(parse_parallelism(pre), pi, di, "infiniband")
            gpus = parse_parallelism(pre).gpus * pi + parse_parallelism(dpar).gpus * di
            for isl, osl, conc in [(1024, 1024, 64), (8192, 1024, 256), (2048, 256, 16)]:
                add("H200", gpus, dpar, eng, isl, osl, conc, disaggregation=pd, network_name="infiniband")
            add(
                "H200",
                gpus,
                dpar,
                eng,
                2048,
                1024,
                None,
                rate=8.0,
                disaggregation=pd,
                network_name="infiniband",
            )
    return out


def run(cases: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[str]:
    res = []
    for a, k in cases:
        try:
            res.append(repr(_predict(*a, **k).as_dict()))
        except (ValueError, RuntimeError) as exc:
            res.append(f"{type(exc).__name__}: {exc}")
    return res


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("capture", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, path = argv[0], Path(argv[1])
    only = int(argv[3]) if len(argv) >= 4 and argv[2] == "--only" else None
    t0 = time.perf_counter()
    grid = grid_cases()
    cases = grid[:only] if only is not None else planner_cases() + grid
    keys = [repr(c) for c in cases]
    got = run(cases)
    secs = time.perf_counter() - t0
    if mode == "capture":
        path.write_text(json.dumps(dict(zip(keys, got, strict=True))), encoding="utf-8")
        print(f"captured {len(got)} cases in {secs:.1f} s to {path}")
        return 0
    ref = json.loads(path.read_text(encoding="utf-8"))
    differ = [k for k, g in zip(keys, got, strict=True) if ref.get(k) != g]
    for k in differ[:20]:
        print(f"DIFFERS {k}\n  was {ref.get(k)}\n  now {got[keys.index(k)]}")
    print(f"{len(got)} cases in {secs:.1f} s: {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
