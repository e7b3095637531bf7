"""DeepSeek-R1 performance model: memory, step times, serving simulation, mocker tables, the planner.

Entry points: `predict(...)` (r1lab.perf.predict), `memory_plan(...)` (r1lab.perf.memory),
`mocker.mocker_setup(...)`, `planner.plan_experiment(exp)`. Imports nothing of r1lab but `model` (and config types).
"""

from r1lab.perf.memory import MemoryPlan, memory_plan
from r1lab.perf.predict import Disaggregation, Prediction, parse_parallelism, predict

__all__ = ["Disaggregation", "MemoryPlan", "Prediction", "memory_plan", "parse_parallelism", "predict"]
