"""The native build of r1lab.perf.simulate (scripts/build_native.py) is in use and gives bit for bit what the
pure-Python module gives: MTP, P/D, lock-step DP ranks, preemption, length ranges, Poisson rates, every engine."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from r1lab.model import Parallelism
from r1lab.perf import _native
from r1lab.perf import simulate as sim
from r1lab.perf.network import Link
from r1lab.perf.ops import Deployment, StepModel

ROOT = Path(__file__).resolve().parents[1]


def _can_build() -> str | None:
    """Why no native build can exist here, None where one can."""
    if importlib.util.find_spec("Cython") is None:
        return "Cython is not installed (pip install -e '.[dev]')"
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed (pip install -e '.[dev]')"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    if os.environ.get(_native.PURE_ENV, "") not in ("", "0"):
        return f"{_native.PURE_ENV} is set"
    return None


def test_native_module_is_in_use() -> None:
    why = _can_build()
    if why:
        pytest.skip(f"no native build: {why}")
    assert sim.COMPILED, (
        f"r1lab.perf.simulate runs as pure Python ({sim.__file__}) although Cython and a C compiler are here: "
        "scripts/build_native.py builds it (bootstrap runs it; after editing simulate.py/.pxd run it again)"
    )


def test_pure_python_when_asked() -> None:
    """R1LAB_PURE_PYTHON=1 (or a module built from other sources) gives the pure-Python module, which runs where
    Cython is not installed too (here: its import refused)."""
    env = {**os.environ, _native.PURE_ENV: "1"}
    code = (
        "import sys; sys.modules['cython'] = None\n"
        "import r1lab.perf.simulate as s\n"
        "from r1lab.model import Parallelism\n"
        "from r1lab.perf.ops import Deployment, StepModel\n"
        "r = s.simulate(StepModel(Deployment('NVIDIA H200', Parallelism(8))), s.Workload(512, 64, 8))\n"
        "print(s.COMPILED, s.__file__, r.requests)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    compiled, path, requests = out.stdout.split()
    assert compiled == "False" and path.endswith("simulate.py") and requests == "32"


TP8 = Deployment("NVIDIA H200", Parallelism(8))
DP8 = Deployment("NVIDIA H200", Parallelism(1, 1, 8, True))
MODELS = {
    "vllm TP8": TP8,
    "vllm DP8 EP": DP8,
    "sglang TP8": Deployment("NVIDIA H200", Parallelism(8), engine="sglang"),
    "sglang DP8 EP": Deployment("NVIDIA H200", Parallelism(1, 1, 8, True), engine="sglang"),
    "vllm TP8 MTP2": Deployment("NVIDIA H200", Parallelism(8), num_speculative_tokens=2),
    "vllm DP8 EP MTP1": Deployment("NVIDIA H200", Parallelism(1, 1, 8, True), num_speculative_tokens=1),
    "trtllm TP8": Deployment("NVIDIA H200", Parallelism(8), engine="trtllm"),
    "vllm TP4 PP2": Deployment(
        "NVIDIA H100 80GB HBM3", Parallelism(4, 2), network="infiniband", gpus_per_node=4
    ),
}
LINK = Link("l", 50.0, 5.0)
# (model, workload args, scheduler args, P/D (prefill instances) or None, ranks)
CASES = {
    "closed loop": ("vllm TP8", ((1024, 512, 64), {}), {}, None, 1),
    "length ranges": ("vllm TP8", (((100, 3000), (1, 900), 96), {}), {}, None, 1),
    "poisson": ("vllm TP8", ((2048, 300, None), {"rate": 30.0}), {}, None, 1),
    "preemption": ("vllm TP8", ((2000, 1500, 200), {}), {"num_blocks": 3000}, None, 1),
    "no chunked prefill": ("vllm TP8", ((6000, 200, 24), {}), {"enable_chunked_prefill": False}, None, 1),
    "lock-step DP ranks": ("vllm DP8 EP", (((500, 1500), 400, 128), {}), {}, None, 8),
    "DP ranks preempted": ("vllm DP8 EP", ((3000, 800, 256), {}), {"num_blocks": 1500}, None, 8),
    "P/D": ("vllm TP8", ((1024, (1, 40), 32), {}), {}, 1, 1),
    "P/D poisson, 2 prefill": ("vllm TP8", ((4096, 256, None), {"rate": 5.0}), {}, 2, 1),
    "sglang ranges": ("sglang TP8", (((200, 4000), (10, 900), 64), {}), {}, None, 1),
    "sglang preemption": ("sglang TP8", ((3000, 1500, 200), {}), {"num_blocks": 3000}, None, 1),
    "sglang P/D": ("sglang TP8", ((2048, 500, 48), {}), {}, 1, 1),
    "sglang DP ranks": ("sglang DP8 EP", (((500, 1500), 400, 128), {}), {}, None, 8),
    "MTP ranges": ("vllm TP8 MTP2", (((200, 3000), (10, 900), 64), {}), {}, None, 1),
    "MTP preemption": ("vllm TP8 MTP2", ((2000, 1500, 200), {}), {"num_blocks": 3000}, None, 1),
    "MTP DP ranks, few seqs": ("vllm DP8 EP MTP1", ((1024, 600, 128), {}), {"max_num_seqs": 16}, None, 8),
    "trtllm P/D poisson": ("trtllm TP8", ((1024, 1024, None), {"rate": 8.0}), {}, 1, 1),
    "PP2": ("vllm TP4 PP2", ((1024, 256, 32), {}), {}, None, 1),
}


@pytest.fixture(scope="module")
def pure() -> object:
    if not sim.COMPILED:
        pytest.skip(
            "r1lab.perf.simulate is pure Python here: nothing to compare (test_native_module_is_in_use)"
        )
    return _native.load_source("r1lab.perf._simulate_pure")


@pytest.fixture(scope="module")
def steps() -> dict[str, StepModel]:
    return {k: StepModel(d) for k, d in MODELS.items()}


def _run(mod: object, steps: dict[str, StepModel], case: str) -> str:
    model, (wl_args, wl_kw), sched_kw, pd, ranks = CASES[case]
    m = mod  # the compiled module or the pure one: each with its own classes
    step = steps[model]
    pdc = None if pd is None else m.PDConfig(step, LINK, pd)  # type: ignore[attr-defined]
    wl = m.Workload(*wl_args, **wl_kw)  # type: ignore[attr-defined]
    res = m.simulate(step, wl, m.SchedulerConfig(**sched_kw), pdc, ranks=ranks)  # type: ignore[attr-defined]
    return repr(res)


@pytest.mark.parametrize("case", CASES)
def test_native_is_bit_identical(case: str, pure: object, steps: dict[str, StepModel]) -> None:
    native = _run(sim, steps, case)
    assert native == _run(pure, steps, case)
    if "preempt" in case:
        assert "preemptions=0," not in native  # the case exercises what it names
