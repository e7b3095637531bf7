"""Bottleneck findings and labels from hand-made numbers: each verdict follows from its evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from r1lab.config import load_experiment
from r1lab.report import analysis as A
from r1lab.report import charts as C
from r1lab.report.data import RunData

REPO = Path(__file__).resolve().parent.parent
COLS = ["time", "source", "metric", "labels", "value"]


def _pt(c: int, tok_s: float, ttft: float, tpot: float, source: str = "measured-gpu") -> dict:
    return {"scenario": "sweep", "point": f"c{c}", "concurrency": c, "rate": None, "output_tok_s": tok_s,
            "input_tok_s": tok_s * 4, "rps": tok_s / 128, "ttft_ms": {"p50": ttft, "p99": ttft * 1.5},
            "tpot_ms": {"p50": tpot}, "e2el_ms": {"p50": ttft + 127 * tpot}, "itl_ms": {"p50": tpot},
            "tok_s_per_gpu": tok_s / 8, "tok_s_per_user": 1000 / tpot, "source": source}  # fmt: skip


def _requests(windows: list[tuple[int, float, float]]) -> pd.DataFrame:
    rows = [{"scenario": "sweep", "point": f"c{c}", "concurrency": c, "t_send": a, "t_end": b, "t_first": a + 0.1,
             "chunk_t": [a + 0.1, b], "error": None, "warmup": False} for c, a, b in windows]  # fmt: skip
    return pd.DataFrame(rows)


def _data(points, metrics_rows=(), windows=(), params="runpod-1x8-h200.yaml", plan=None) -> RunData:
    exp = load_experiment(REPO / "params" / params)
    return RunData(Path("/nonexistent"), {"run_id": "r"}, exp, {"points": points}, _requests(list(windows)),
                   pd.DataFrame(list(metrics_rows), columns=COLS), plan)  # fmt: skip


def test_compute_bound_when_throughput_flattens_with_kv_room() -> None:
    pts = [_pt(1, 40, 60, 10), _pt(8, 300, 70, 13), _pt(32, 600, 90, 25), _pt(64, 610, 95, 50)]
    win = [(1, 0, 10), (8, 20, 30), (32, 40, 50), (64, 60, 70)]
    kv = [(t, "head/vllm", "vllm:kv_cache_usage_perc", "{}", 0.2 + t / 200) for t in range(0, 71, 2)]
    f = {x.kind: x for x in A.findings(_data(pts, kv, win))}
    assert f["compute-bound"].verdict == "yes" and "c=32" in f["compute-bound"].summary
    assert f["kv-bound"].verdict == "no" and "55%" in f["kv-bound"].evidence[0]
    assert f["queueing"].verdict == "no"  # TTFT x1.6 against TPOT x5
    assert f["compute-bound"].source == "measured on GPU"


def test_kv_bound_and_queueing_with_waiting_requests() -> None:
    pts = [_pt(1, 40, 60, 10), _pt(16, 500, 80, 14), _pt(128, 520, 4000, 15)]
    win = [(1, 0, 10), (16, 20, 30), (128, 40, 50)]
    rows = []
    for t in range(0, 51):
        high = t >= 40
        rows += [(t, "head/vllm", "vllm:kv_cache_usage_perc", "{}", 0.97 if high else 0.3),
                 (t, "head/vllm", "vllm:num_requests_waiting", "{}", 60.0 if high else 0.0),
                 (t, "head/vllm", "vllm:num_preemptions_total", "{}", float(max(0, t - 40) * 3))]  # fmt: skip
    f = {x.kind: x for x in A.findings(_data(pts, rows, win))}
    assert f["kv-bound"].verdict == "yes"
    assert any("60 requests waited" in e for e in f["kv-bound"].evidence)
    assert any("30 preemptions" in e for e in f["kv-bound"].evidence)
    assert f["queueing"].verdict == "yes" and "x66.7" in f["queueing"].summary
    assert f["compute-bound"].verdict == "no"  # saturated, but with the KV cache full


def test_unsaturated_sweep_says_extend() -> None:
    pts = [_pt(1, 40, 60, 10), _pt(4, 160, 60, 10), _pt(16, 640, 62, 10)]
    f = {x.kind: x for x in A.findings(_data(pts))}
    assert f["compute-bound"].verdict == "no" and "extend the sweep" in f["compute-bound"].summary
    assert f["kv-bound"].verdict == "unknown"  # no series and no plan: says so rather than guessing


def test_network_bound_from_plan_confirmed_by_ttft() -> None:
    plan = {"params_topology": "p", "topologies": [{"id": "p", "label": "2x8", "max_concurrency": 100,
            "kv_tokens": 20000, "bottleneck": {"component": "kv_transfer", "detail": "36 MB at 100 Mbps"},
            "points": [{"scenario": "sweep", "concurrency": 1, "kv_transfer_ms": 2900.0,
                        "ttft_ms": {"p50": 2970.0}, "tpot_ms": {"p50": 9.0}, "e2e_ms": {"p50": 4100.0},
                        "output_tok_s": 31.0}]}]}  # fmt: skip
    pts = [_pt(1, 30, 3100, 10, "measured-twin"), _pt(4, 31, 9000, 10, "measured-twin")]
    data = _data(pts, params="twin.yaml", plan=plan)
    f = {x.kind: x for x in A.findings(data)}
    assert f["network-bound"].verdict == "yes" and "2,900 ms" in f["network-bound"].evidence[1]
    assert f["kv-bound"].source == "modelled"  # no series: from the plan, and labelled so
    pvm = A.predicted_vs_measured(data)
    assert pvm.loc[0, "ttft_ms_p50_ratio"] == 3100 / 2970 and len(pvm) == 1


def test_gpu_memory_measured_on_gpu_pods() -> None:
    rows = []
    for t in range(10):
        for g in ("0", "1"):
            lab = json.dumps({"gpu": g, "UUID": f"GPU-{g}"})
            rows += [(t, "head/gpu", "DCGM_FI_DEV_FB_USED", lab, 130000.0),
                     (t, "head/gpu", "DCGM_FI_DEV_FB_FREE", lab, 13771.0),
                     (t, "head/gpu", "DCGM_FI_DEV_GPU_UTIL", lab, 90.0 + int(g))]  # fmt: skip
    pts = [_pt(1, 40, 60, 10), _pt(8, 300, 70, 13), _pt(32, 310, 90, 25)]
    data = _data(pts, rows, [(1, 0, 2), (8, 3, 5), (32, 6, 9)])
    fig = C.gpu_memory(data)
    assert "measured on GPU" in fig.layout.title.text and len(fig.data) == 4  # memory and utilisation per GPU
    assert max(fig.data[0].y) == 130000.0 / 1024
    f = {x.kind: x for x in A.findings(data)}
    assert any(
        "GPU utilisation at the top point: mean 90% over 2 GPUs" in e for e in f["compute-bound"].evidence
    )
    twin = C.gpu_memory(_data([_pt(1, 40, 60, 10, "measured-twin")], rows, params="twin.yaml"))
    assert "modelled" in twin.layout.title.text  # the twin never presents GPU memory as measured
