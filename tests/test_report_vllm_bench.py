"""Per load point, a `vllm bench serve` result JSON beside r1lab's own schema (which now carries std and p95)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_run import make_run  # noqa: E402

VLLM_KEYS = {"duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
             "request_goodput", "output_throughput", "total_token_throughput", "input_lens", "output_lens", "ttfts",
             "itls", "start_times", "errors", "max_concurrency", "request_rate", "num_prompts"} | {
    f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "median", "std", "p99")}  # fmt: skip


def test_vllm_bench_json_per_point(tmp_path: Path) -> None:
    from r1lab.report import build_report

    rd = make_run(tmp_path, metrics=False)
    build_report(rd, png=False)
    summary = {
        (p["scenario"], p["point"]): p for p in json.loads((rd / "summary.json").read_text())["points"]
    }
    files = sorted((rd / "vllm_bench").glob("*.json"))
    assert {f.stem for f in files} == {f"{s}-{p}" for s, p in summary}
    req = pd.read_parquet(rd / "requests.parquet")
    for f in files:
        res = json.loads(f.read_text())
        assert VLLM_KEYS <= set(res), VLLM_KEYS - set(res)
        p = summary[(res["r1lab_scenario"], res["r1lab_point"])]
        assert res["completed"] + res["failed"] == p["requests"] and res["failed"] == p["errors"]
        assert res["mean_ttft_ms"] == pytest.approx(p["ttft_ms"]["mean"]) and res[
            "p99_ttft_ms"
        ] == pytest.approx(p["ttft_ms"]["p99"])
        assert res["median_tpot_ms"] == pytest.approx(p["tpot_ms"]["p50"])
        assert res["std_e2el_ms"] == pytest.approx(p["e2el_ms"]["std"]) and res[
            "p95_itl_ms"
        ] == pytest.approx(p["itl_ms"]["p95"])
        assert res["request_throughput"] == pytest.approx(p["rps"]) and res[
            "output_throughput"
        ] == pytest.approx(p["output_tok_s"])
        assert res["total_token_throughput"] == pytest.approx(p["input_tok_s"] + p["output_tok_s"])
        # std recomputed from the raw records, independently
        g = req[
            (req.scenario == res["r1lab_scenario"]) & (req.point == res["r1lab_point"]) & req.error.isna()
        ]
        ttft = (g.t_first - g.t_send).to_numpy() * 1000
        assert res["std_ttft_ms"] == pytest.approx(float(np.std(ttft))) and res["std_ttft_ms"] > 0
        assert len(res["ttfts"]) == res["num_prompts"] == len(res["errors"])
    assert {"std", "p95"} <= set(next(iter(summary.values()))["ttft_ms"])  # r1lab's own schema too
