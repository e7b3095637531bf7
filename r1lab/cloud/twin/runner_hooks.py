"""The twin in `r1lab run`: the runner calls `start_for_run(ctx)` when params say `provider.kind: twin`.

It finds the running twin (`r1lab twin up`, or a previous run's) or starts one recorded in the run's ledger (kind
`twin`, torn down last by the run's teardown), and returns the environment the notebook kernels need: the same
two settings a real account uses (RUNPOD_API_BASE, RUNPOD_API_KEY), plus R1LAB_TWIN_DIR so a kernel can
`Twin.find()` it.
"""

from __future__ import annotations

from typing import Any

from r1lab.cloud.twin.api import twin_for_run


def start_for_run(ctx: Any) -> dict[str, str]:
    twin = twin_for_run(ctx.exp, ctx.run_dir)
    if twin is None:
        return {}
    return {**twin.client_env(), "R1LAB_TWIN_DIR": str(twin.state_dir)}
