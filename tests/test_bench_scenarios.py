"""The params' scenarios end to end against the ground-truth server: config -> records -> summary -> parquet."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from r1lab.bench import gtserver
from r1lab.bench.cli import cli_main
from r1lab.bench.metrics import Slo
from r1lab.bench.records import COLUMNS, consolidate
from r1lab.bench.scenarios import default_scenarios, run_load, shapes_for, summarize_run
from r1lab.config import Load, Scenario
from r1lab.tinymodel import write_tiny_model


def test_default_scenarios_are_valid_params():
    scs = [Scenario(**d) for d in default_scenarios(64)]
    assert {s.name for s in scs} >= {"sweep", "short-in-long-out", "long-in-short-out", "long-in-long-out",
                                     "long-context", "stress"}  # fmt: skip
    stress = next(s for s in scs if s.shape == "stress")
    assert shapes_for(stress)[0].duration_s == 1800 and shapes_for(stress)[0].requests is None
    with pytest.raises(ValueError, match="duration_s"):
        Scenario(name="x", shape="stress", concurrency=[4])


def test_scenarios_run_and_summarize(tmp_path):
    model = write_tiny_model(tmp_path / "tiny")
    load = Load(
        scenarios=[
            Scenario(name="sweep", concurrency=[1, 4, 16], input_tokens=64, output_tokens=12, requests_per_point=24),
            Scenario(name="rate", shape="poisson", rate=[40.0], input_tokens=32, output_tokens=6,
                     requests_per_point=30, endpoint="chat"),
            Scenario(name="stress", shape="stress", concurrency=[8], input_tokens=32, output_tokens=6,
                     duration_s=3.0, trend_window_s=0.5, warmup_s=0.3),
        ],
    )  # fmt: skip
    run = tmp_path / "run"
    with gtserver.running(ttft_ms=20, itl_ms=5, log=tmp_path / "truth") as url:
        got = run_load(load, url=url, model_dir=model, model="gt", run_dir=run)
    assert {k: len(v) for k, v in got.items() if k != "stress"} == {"sweep": 72, "rate": 30}
    s = summarize_run(run, scenarios=load.scenarios, slo=Slo(ttft_ms=2000, tpot_ms=500), gpus=8, usd_per_hour=25.52,
                      run_id="r1")  # fmt: skip
    pts = {(p["scenario"], p["point"]): p for p in s["points"]}
    assert set(pts) == {("sweep", "c1"), ("sweep", "c4"), ("sweep", "c16"), ("rate", "r40"), ("stress", "c8")}
    for p in s["points"]:
        assert p["errors"] == 0 and p["ttft_ms"]["p50"] >= 19 and p["usd_per_mtok_out"] > 0
        assert p["goodput_rps"] == pytest.approx(p["rps"])  # every request meets these loose SLOs
    assert pts[("sweep", "c16")]["output_tok_s"] > 3 * pts[("sweep", "c1")]["output_tok_s"]
    assert "sweep" in s["saturation"] and s["saturation"]["sweep"]["steps"]
    assert "stress" in s["trends"] and len(s["trends"]["stress"]["windows"]) >= 4
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["run_id"] == "r1" and len(on_disk["points"]) == 5
    assert (run / "summary.csv").read_text().count("\n") == 6
    table = pq.read_table(consolidate(run))
    assert table.column_names == COLUMNS and table.num_rows == sum(len(v) for v in got.values())
    with pytest.raises(FileExistsError):
        consolidate(run)


def test_cli_point_and_summarize(tmp_path, capsys):
    model = write_tiny_model(tmp_path / "tiny")
    with gtserver.running(ttft_ms=10, itl_ms=2, log=tmp_path / "t") as url:
        rc = cli_main(["point", url, "--out", str(tmp_path / "run"), "--concurrency", "4", "--requests", "12",
                       "--model-dir", str(model), "--model", "gt", "--input-tokens", "40", "--output-tokens", "5"])  # fmt: skip
    assert rc == 0 and '"errors": 0' in capsys.readouterr().out
    assert cli_main(["summarize", str(tmp_path / "run"), "--gpus", "1", "--usd-per-hour", "3.19"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["points"][0]["requests"] == 12


def _sweep_records(run_dir, thr):
    """Synthetic sweep records: at concurrency c, c streams of 10 tokens each taking e2el(c) seconds."""
    from r1lab.bench.records import RecordWriter

    with RecordWriter(run_dir / "load" / "sweep" / "requests.jsonl") as w:
        for c, e2el in thr.items():
            for k in range(c):
                ct = [0.1 + i * (e2el - 0.1) / 9 for i in range(10)]
                w.write({"scenario": "sweep", "point": f"c{c}", "request_id": f"c{c}-{k}", "concurrency": c,
                         "rate": None, "warmup": False, "t_send": 0.0, "t_first": ct[0], "t_end": ct[-1],
                         "chunk_t": ct, "chunk_tokens": [1] * 10, "output_tokens": 10, "error": None})  # fmt: skip


def test_stress_runs_at_the_knee_the_sweep_found(tmp_path):
    from r1lab.bench.scenarios import at_knee

    stress = Scenario(name="stress", shape="stress", concurrency=[2], duration_s=60, at_knee_of="sweep")
    # throughput (c * 10 tokens / e2el) doubles to c=8, then flattens while latency climbs: the knee is 8
    _sweep_records(tmp_path, {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0, 16: 1.9, 32: 3.9})
    got = at_knee(stress, tmp_path)
    assert got.concurrency == [8]
    knee = json.loads((tmp_path / "load" / "stress" / "knee.json").read_text())
    assert knee["from_knee"] and knee["concurrency"] == 8
    # a sweep that still scales: the configured concurrency, and the file says why
    other = tmp_path / "other"
    _sweep_records(other, {1: 1.0, 2: 1.0, 4: 1.0})
    assert at_knee(stress, other).concurrency == [2]
    assert not json.loads((other / "load" / "stress" / "knee.json").read_text())["from_knee"]


def test_at_knee_of_must_name_an_earlier_sweep():
    sweep = Scenario(name="sweep", concurrency=[1, 2, 4])
    stress = Scenario(name="stress", shape="stress", concurrency=[2], duration_s=60, at_knee_of="sweep")
    assert Load(scenarios=[sweep, stress]).scenarios[1].at_knee_of == "sweep"
    with pytest.raises(ValueError, match="at_knee_of"):
        Load(scenarios=[stress, sweep])
    with pytest.raises(ValueError, match="at_knee_of"):
        Scenario(name="x", concurrency=[2], at_knee_of="sweep")


def test_sweep_extends_until_the_servers_knee(tmp_path):
    """A server that generates at most 4 streams at once (the rest wait, as past an engine's max_num_seqs): the
    listed points [1, 2] scale, so the sweep adds 4 and 8 and stops at the knee, 4; never the cap's 32."""
    from r1lab.bench.scenarios import run_scenario
    from r1lab.bench.workloads import ModelTokenizer

    model = write_tiny_model(tmp_path / "tiny")
    sc = Scenario(name="sweep", concurrency=[1, 2], until_knee=32, input_tokens=16, output_tokens=16,
                  requests_per_point=16)  # fmt: skip
    run = tmp_path / "run"
    with gtserver.running(ttft_ms=20, itl_ms=10, log=tmp_path / "truth", extra=["--max-streams", "4"]) as url:
        run_scenario(sc, url=url, tokenizer=ModelTokenizer(model), model="gt", run_dir=run)
    ext = json.loads((run / "load" / "sweep" / "extension.json").read_text())
    assert ext["added"] == [4, 8] and ext["stopped"] == "knee found at concurrency 4", ext
    s = summarize_run(run, scenarios=[sc])
    assert [p["concurrency"] for p in s["points"]] == [1, 2, 4, 8]
    assert s["saturation"]["sweep"]["saturated"] and s["saturation"]["sweep"]["knee_concurrency"] == 4
    # the truth agrees: past 4 streams, requests waited for a slot (their first token came later than 20 ms)
    truth = gtserver.read_truth(tmp_path / "truth")
    waited = [t for t in truth.values() if t.get("sent") and t["sent"][0] - t["t_recv"] > 0.05]
    assert waited


def test_sweep_extension_stops_at_its_cap(tmp_path):
    """No knee (a server without a cap scales with concurrency): points are added up to until_knee, then the
    file says the sweep stopped there without one."""
    from r1lab.bench.scenarios import run_scenario
    from r1lab.bench.workloads import ModelTokenizer

    model = write_tiny_model(tmp_path / "tiny")
    sc = Scenario(name="sweep", concurrency=[1, 2], until_knee=7, input_tokens=16, output_tokens=8,
                  requests_per_point=16)  # fmt: skip
    with gtserver.running(ttft_ms=20, itl_ms=5) as url:
        run_scenario(sc, url=url, tokenizer=ModelTokenizer(model), model="gt", run_dir=tmp_path / "run")
    ext = json.loads((tmp_path / "run" / "load" / "sweep" / "extension.json").read_text())
    assert ext["added"] == [4] and "no knee up to concurrency 4" in ext["stopped"], ext


def test_until_knee_only_on_a_concurrency_sweep():
    with pytest.raises(ValueError, match="until_knee"):
        Scenario(name="x", shape="poisson", rate=[1.0], until_knee=64)
    with pytest.raises(ValueError, match="until_knee"):
        Scenario(name="x", concurrency=[1, 8], until_knee=8)
