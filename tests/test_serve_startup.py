"""Where a dynamo.vllm worker's start-up time goes, read from its log (r1lab/serve/startup.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from r1lab.serve.startup import startup_phases

LOG = """\
\x1b[2m2026-12-02T00:08:17.682307Z\x1b[0m \x1b[32m INFO\x1b[0m dynamo_runtime::worker: dynamo runtime configuration: num_worker_threads=2
(MainProcess pid=53) INFO 12-02 00:09:16 [model.py:699] Resolved architecture: DeepseekV3ForCausalLM
(EngineCore pid=1924) INFO 12-02 00:09:56 [core.py:129] Initializing a V1 LLM engine (v0.31.0) with config: ...
(Worker pid=2488) INFO 12-02 00:12:04 [cpu_model_runner.py:69] Starting to load model /workspace/models/x...
(Worker pid=2488) INFO 12-02 00:12:07 [default_loader.py:484] Loading weights took 0.47 seconds
2026-12-02 00:12:15 NIXL INFO    _api.py:285 Initialized NIXL agent: 9c9c3d5b
(Worker pid=2488) INFO 12-02 00:12:48 [base_worker.py:1437] Registering KV_Caches. use_mla: True
(EngineCore pid=1924) INFO 12-02 00:12:48 [core.py:380] init engine (profile, create kv cache, warmup model) took 40.27 s
2026-12-02T00:13:17.457281Z  INFO shared_tcp_endpoint: Registered endpoint 'dynamo.prefill.worker_kv_query_source_1'
2026-12-02T00:13:17.564124Z  INFO shared_tcp_endpoint: Registered endpoint 'dynamo.prefill.generate' with shared TCP
"""


def test_startup_phases_in_order_from_the_three_timestamp_forms() -> None:
    got = startup_phases(LOG, datetime(2026, 12, 2, 0, 7, 0, tzinfo=UTC))
    assert got == {
        "dynamo runtime up": 77.7,
        "vLLM config resolved": 136.0,
        "engine core process up": 176.0,
        "model loading": 304.0,
        "weights loaded": 307.0,
        "NIXL agent up": 315.0,
        "KV cache allocated, registering with NIXL": 348.0,
        "engine ready": 348.0,
        "registered (serving)": 377.5,
    }


def test_startup_phases_of_a_log_without_milestones_is_empty() -> None:
    assert startup_phases("Traceback (most recent call last):\n", datetime.now(UTC)) == {}
