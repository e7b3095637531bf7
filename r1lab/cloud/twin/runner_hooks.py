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


def attach(run_dir: Any) -> bool:
    """Outside the runner (`r1lab teardown` of a run stepped through by hand): point this process's RunPod client
    at the twin the run used (the one its ledger started, else the running one), as the runner's process is.
    Returns False when no twin is running (then its pods are gone with it)."""
    import os
    from pathlib import Path

    from r1lab.cloud.twin.api import Twin
    from r1lab.teardown import Ledger

    dirs = [e["meta"].get("state_dir") for e in Ledger(Path(run_dir)).entries() if e.get("kind") == "twin"]
    for state_dir in [*[d for d in dirs if d], os.environ.get("R1LAB_TWIN_DIR")]:
        twin = Twin.find(state_dir)
        if twin is not None:
            twin.activate()
            return True
    return False
