"""r1lab: deploy DeepSeek-R1 on RunPod (vLLM + Ray + NVIDIA Dynamo), load-test it, report TTFT/TPOT/cost.

Notebooks start with `ctx = r1lab.open_run(params_path, run_dir)`; see docs/architecture.md.
"""

from r1lab.rundir import RunContext, new_run, open_run

__all__ = ["RunContext", "new_run", "open_run", "__version__"]
__version__ = "0.1.0"
