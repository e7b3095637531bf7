"""Cost: live prices win over dated fallbacks, the run's total from its ledger, $ per million tokens."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from r1lab import cost, resolve
from r1lab.cloud.budget import BudgetGuard
from r1lab.config import load_experiment
from r1lab.report.build import cost_context
from r1lab.rundir import new_run


@pytest.fixture
def exp(repo):
    return load_experiment(repo / "params" / "twin.yaml")  # 2 x 8 H100 NVL serving, plus a CPU utility pod


def test_fallback_and_live_prices(exp) -> None:
    d = cost.deployment_cost(exp)
    assert d.gpus == 16 and not d.billed and d.label == "modelled"
    q = d.quotes["NVIDIA H100 NVL"]
    assert (q.usd_per_gpu_hour, q.date, q.live) == (3.19, "2026-11-09", False)
    volume = 1000 * 0.07 / 730
    assert d.usd_per_hour == pytest.approx(16 * 3.19 + volume) and d.gpu_usd_per_hour == pytest.approx(51.04)
    live = cost.deployment_cost(exp, live={"NVIDIA H100 NVL": 2.99}, live_date="2026-11-27")
    assert live.quotes["NVIDIA H100 NVL"].live and live.quotes["NVIDIA H100 NVL"].date == "2026-11-27"
    assert live.usd_per_hour == pytest.approx(16 * 2.99 + volume)
    assert "live 2026-11-27" in live.quotes["NVIDIA H100 NVL"].label()


def test_missing_price_names_the_fix(exp) -> None:
    unpriced = exp.cost.model_copy(update={"prices": {}})
    with pytest.raises(cost.PriceError, match=r"cost\.prices\['NVIDIA B200'\]"):
        cost.quote("NVIDIA B200", unpriced)


def test_usd_per_mtok() -> None:
    # $36/h at 1000 tok/s = 3.6M tok/h -> $10 per million
    assert cost.usd_per_mtok(36.0, 1000.0) == pytest.approx(10.0)
    assert cost.usd_per_mtok(36.0, 0.0) is None and cost.usd_per_mtok(None, 5.0) is None
    rows = cost.point_costs([{"scenario": "s", "point": "c4", "concurrency": 4, "output_tok_s": 500.0,
                              "input_tok_s": 2000.0}], 36.0)  # fmt: skip
    assert rows[0]["usd_per_mtok_out"] == pytest.approx(20.0) and rows[0]["usd_per_mtok_in"] == pytest.approx(
        5.0
    )


def test_run_total_from_ledger(exp) -> None:
    entries = [
        {"event": "created", "kind": "runpod-volume", "id": "v1", "name": "r1lab-x-volume",
         "time": "2026-11-27T10:00:00+00:00", "meta": {"size_gb": 730}},
        {"event": "created", "kind": "runpod-pod", "id": "p1", "name": "r1lab-x-head",
         "time": "2026-11-27T10:00:00+00:00", "meta": {}},
        {"event": "created", "kind": "runpod-pod", "id": "p2", "name": "r1lab-x-utility",
         "time": "2026-11-27T10:00:00+00:00", "meta": {}},
        {"event": "created", "kind": "local-process", "id": "9", "name": "r1lab-x-prometheus",
         "time": "2026-11-27T10:00:00+00:00", "meta": {}},
        {"event": "deleted", "kind": "runpod-pod", "id": "p1", "time": "2026-11-27T10:30:00+00:00"},
        {"event": "deleted", "kind": "runpod-pod", "id": "p2", "time": "2026-11-27T10:10:00+00:00"},
        {"event": "created", "kind": "runpod-pod", "id": "p3", "name": "r1lab-x-worker",
         "time": "2026-11-27T10:00:00+00:00", "meta": {"gpu_type": "NVIDIA H200", "gpu_count": 2}},
        {"event": "created", "kind": "runpod-pod", "id": "p4", "name": "r1lab-x-loadgen",
         "time": "2026-11-27T10:30:00+00:00", "meta": {"usd_per_hour": 0.5}},
    ]  # fmt: skip
    now = cost._parse_time("2026-11-27T11:00:00+00:00")  # p3 still live: counted up to now
    rc = cost.run_total(exp, entries, now=now)
    by = {i["name"]: i for i in rc.items}
    assert by["r1lab-x-head"]["usd"] == pytest.approx(8 * 3.19 * 0.5)
    assert by["r1lab-x-utility"]["usd"] == 0.0  # a CPU pod: no GPU price
    assert by["r1lab-x-worker"]["usd"] == pytest.approx(2 * 4.59 * 1.0) and by["r1lab-x-worker"]["live"]
    assert by["r1lab-x-volume"]["usd"] == pytest.approx(730 * 0.07 / 730 * 1.0)
    assert by["r1lab-x-loadgen"]["usd"] == pytest.approx(0.25)  # the rate recorded at creation wins
    assert "r1lab-x-prometheus" not in by
    assert rc.usd == pytest.approx(sum(i["usd"] for i in rc.items)) and rc.hours == pytest.approx(1.0)


def test_topology_comparison() -> None:
    rows = cost.topology_comparison(
        [{"topology": "1x8 H200 TP8", "usd_per_hour": 36.72, "output_tok_s": 2000.0},
         {"topology": "2x8 H100 NVL TP8xPP2", "usd_per_hour": 51.04, "output_tok_s": 400.0}],
        {"topology": "2x8 H100 NVL TP8xPP2", "usd_per_hour": 51.04, "output_tok_s": 350.0, "source": "modelled"},
    )  # fmt: skip
    assert rows[0]["measured_usd_per_mtok_out"] is None
    assert rows[1]["predicted_usd_per_mtok_out"] == pytest.approx(51.04 / (400 * 3600) * 1e6)
    assert rows[1]["measured_usd_per_mtok_out"] == pytest.approx(51.04 / (350 * 3600) * 1e6)
    with pytest.raises(ValueError, match="topology"):
        cost.topology_comparison([{"usd_per_hour": 1.0}])


PARAMS = sorted((Path(__file__).resolve().parents[1] / "params").glob("*.yaml"))


@pytest.mark.parametrize("params", PARAMS, ids=[p.stem for p in PARAMS])
def test_the_resolved_quotes_price_every_params_file_as_before(params: Path) -> None:
    """The resolved deployment's quotes (the planner's) are the params' prices: same $/h, date and source."""
    exp = load_experiment(params)
    quotes = resolve.resolve(exp).prices
    assert cost.deployment_cost(exp, quotes=quotes).as_dict() == cost.deployment_cost(exp).as_dict()


def test_budget_guard_and_report_price_the_run_as_it_was_resolved(tmp_path: Path, monkeypatch) -> None:
    """Both read the run's resolved.json quotes through one run_total: a quote edited there moves both."""
    monkeypatch.setenv("R1LAB_OUTPUTS", str(tmp_path))
    ctx = new_run(Path(__file__).resolve().parents[1] / "params" / "twin.yaml")
    saved = json.loads((ctx.run_dir / resolve.FILENAME).read_text())
    saved["prices"]["NVIDIA H100 NVL"] |= {"usd_per_gpu_hour": 1.25, "date": "2026-12-01", "source": "edited"}
    (ctx.run_dir / resolve.FILENAME).write_text(json.dumps(saved))
    entry = ctx.ledger.record("runpod-pod", "p1", f"r1lab-{ctx.run_id}-head", "twin")
    now = cost._parse_time(entry["time"]) + 1800.0  # the head pod (8 GPUs) has lived half an hour
    guard = BudgetGuard(ctx.run_dir, ctx.exp, clock=lambda: now)
    assert guard.status().usd == pytest.approx(8 * 1.25 * 0.5)
    data = SimpleNamespace(run_dir=ctx.run_dir, exp=ctx.exp, points=[], ledger=ctx.ledger.entries())
    costs = cost_context(data)  # type: ignore[arg-type]
    assert (
        costs["deployment"].quotes["NVIDIA H100 NVL"].label() == "$1.25/GPU-h (fallback 2026-12-01, edited)"
    )
    assert costs["deployment"].gpu_usd_per_hour == pytest.approx(16 * 1.25)
