"""r1lab: deploy DeepSeek-R1 on RunPod (vLLM + Ray + NVIDIA Dynamo), load-test it, report TTFT/TPOT/cost.

Notebooks start with `ctx = r1lab.open_run(params_path, run_dir)`; see docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from r1lab.rundir import RunContext, new_run, open_run

__all__ = ["RunContext", "new_run", "open_run", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`r1lab.open_run` & co. on first use (PEP 562): a process that imports only a submodule (each load worker,
    `python -m r1lab.bench.workers`, started per load point) does not pay for the run directory's imports."""
    if name in ("RunContext", "new_run", "open_run"):
        from r1lab import rundir

        value = getattr(rundir, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'r1lab' has no attribute {name!r}")
