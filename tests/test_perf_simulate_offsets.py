"""simulate's offset mode (_Decoding, MTP off) gives bit for bit what scanning every request gives."""

from __future__ import annotations

import random

import pytest

from r1lab.model import Parallelism
from r1lab.perf import simulate as sim
from r1lab.perf.network import Link
from r1lab.perf.ops import Deployment, StepModel

TP8 = StepModel(Deployment("NVIDIA H200", Parallelism(8)))
DP8 = StepModel(Deployment("NVIDIA H200", Parallelism(1, 1, 8, True)))
CASES = {
    "closed loop": (TP8, sim.Workload(1024, 512, 64), sim.SchedulerConfig(), None, 1),
    "length ranges": (TP8, sim.Workload((100, 3000), (1, 900), 96), sim.SchedulerConfig(), None, 1),
    "poisson": (TP8, sim.Workload(2048, 300, None, rate=30.0), sim.SchedulerConfig(), None, 1),
    "preemption": (TP8, sim.Workload(2000, 1500, 200), sim.SchedulerConfig(num_blocks=3000), None, 1),
    "no chunked prefill": (
        TP8, sim.Workload(6000, 200, 24), sim.SchedulerConfig(enable_chunked_prefill=False), None, 1,
    ),
    "lock-step DP ranks": (DP8, sim.Workload((500, 1500), 400, 128), sim.SchedulerConfig(), None, 8),
    "P/D, output length 1": (
        TP8, sim.Workload(1024, (1, 40), 32), sim.SchedulerConfig(), sim.PDConfig(TP8, Link("l", 50.0, 5.0)), 1,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", CASES)
def test_offset_mode_is_bit_identical(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    step, wl, sched, pd, ranks = CASES[name]
    fast = sim.simulate(step, wl, sched, pd, ranks=ranks)
    monkeypatch.setattr(sim, "OFFSET_MODE", False)
    slow = sim.simulate(step, wl, sched, pd, ranks=ranks)
    assert repr(fast) == repr(slow)
    if name == "preemption":
        assert fast.preemptions > 0  # the case exercises what it names


def test_blocks_held_from_residues() -> None:
    """_Decoding.held(g) is the sum of ceil(computed / bs) of its members at decode step g."""
    rng = random.Random(1)
    for _ in range(200):
        bs = rng.choice([1, 2, 16, 64])
        d = sim._Decoding(bs)
        d.g = rng.randint(0, 500)
        for i in range(rng.randint(1, 30)):
            c = rng.randint(0, 3000)
            r = sim._Req(i, 10, c + rng.randint(1, 100), 0.0)
            r.computed, r.generated, r.blocks, r.first, r.seq = float(c), 1.0, -(-c // bs), 0.0, i
            assert d.can_join(r)
            d.add(r)
            d.g += rng.choice([0, 0, 1, 63, 64, 65])
        for k in range(0, 200, 7):
            want = sum(-(-(int(r.c0) + d.g + k - r.g0) // bs) for r in d.members.values())
            assert d.held(d.g + k) == want
        assert d.ctx() == sum(int(r.c0) + d.g - r.g0 for r in d.members.values())
