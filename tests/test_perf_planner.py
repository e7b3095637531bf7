"""r1lab plan: the original plan's topology is flagged with numbers; 8 x H100 SXM does not fit; JSON is stable."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from r1lab.config import load_experiment
from r1lab.perf.planner import plan_experiment
from r1lab.plan_cli import cli_main
from r1lab.stages.plan import make_plan

PARAMS = Path(__file__).resolve().parents[1] / "params"


@pytest.fixture(scope="module")
def nvl_plan():
    return make_plan(load_experiment(PARAMS / "runpod-2x8-h100nvl.yaml"))  # the planner + serve's commands


def test_inter_pod_link_is_named_with_numbers(nvl_plan):
    me = nvl_plan.topology("params")
    assert me["fits"] and me["disaggregated"]
    assert me["bottleneck"]["component"] == "kv_transfer"
    assert "100 Mbps" in me["bottleneck"]["link"]
    link = next(p for p in nvl_plan.problems if p["id"] == "inter-pod-link")
    assert link["status"] == "present" and link["severity"] == "error"
    assert re.search(
        r"KV cache \([\d.]+ MB: one latent copy per decode TP rank, x8\) takes [\d,]+ ms over global-networking "
        r"at 100 Mbps",
        link["detail"],
    )
    assert re.search(r"at most [\d.]+ requests/s, about [\d,]+ output tok/s", link["detail"])
    pp2 = nvl_plan.topology("2x8-h100nvl-tp8pp2-gn")
    assert pp2["bottleneck"]["component"] == "pp_send"


def test_h100_sxm_single_node_does_not_fit(nvl_plan):
    sxm = nvl_plan.topology("1x8-h100sxm-tp8")
    assert not sxm["fits"]
    assert "weights alone need 79.3 GiB" in sxm["reason"]
    assert sxm["points"] == []


def test_original_plan_problems_listed(nvl_plan):
    ids = {p["id"]: p for p in nvl_plan.problems}
    for pid in (
        "download-patterns",
        "api-server",
        "dtype-fp8",
        "tp16-across-nodes",
        "dynamo-plain-vllm",
        "ray-public",
    ):
        assert pid in ids
    assert ids["nvl-pcie-allreduce"]["status"] == "present"


def test_costs_and_h200_alternative(nvl_plan):
    h200 = nvl_plan.topology("1x8-h200-tp8")
    assert h200["usd_per_hour"] == pytest.approx(8 * 4.59)
    best = max(h200["points"], key=lambda p: p["output_tok_s"])
    assert best["usd_per_mtok_out"] == pytest.approx(
        h200["usd_per_hour"] / (best["output_tok_s"] * 3600) * 1e6
    )
    assert nvl_plan.prices["NVIDIA H100 NVL"]["date"] == "2026-11-09"


def test_json_is_standard_and_complete(nvl_plan):
    d = json.loads(json.dumps(nvl_plan.as_dict(), allow_nan=False))
    assert d["schema_version"] == 1 and d["source"] == "modelled"
    for key in ("experiment", "params_topology", "prices", "topologies", "problems", "commands", "summary"):
        assert key in d
    t = d["topologies"][0]
    for key in (
        "id",
        "label",
        "fits",
        "reason",
        "memory",
        "kv_tokens",
        "max_concurrency",
        "usd_per_hour",
        "bottleneck",
        "points",
    ):
        assert key in t
    assert d["commands"]["lines"] and d["commands"]["source"] == "r1lab.serve.commands"
    assert set(d["commands"]["stages"]) == {"single", "multi", "dynamo"}


def test_the_planner_alone_renders_no_commands():
    # perf stands below serve: without the commands passed in, the plan says they were not rendered
    plan = plan_experiment(load_experiment(PARAMS / "runpod-1x8-h200.yaml"), include_standard=False)
    assert plan.commands["source"] == "not rendered" and plan.commands["lines"] == []


def test_cli_json_and_out(tmp_path, capsys):
    rc = cli_main([str(PARAMS / "runpod-1x8-h200.yaml"), "--json", "--only-params", "--out", str(tmp_path)])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert d["topologies"][0]["fits"]
    assert (tmp_path / "plan.json").exists()
    assert (tmp_path / "charts" / "plan_memory_per_gpu.html").stat().st_size > 100_000  # plotly.js embedded
    assert cli_main([str(PARAMS / "runpod-1x8-h200.yaml"), "--only-params", "--out", str(tmp_path)]) == 1


def test_cli_bad_params(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\npods: []\n")
    assert cli_main([str(p)]) == 1
    assert "bad.yaml" in capsys.readouterr().err


def test_prefix_sharing_scenarios_are_planned_as_stated_equivalents():
    plan = plan_experiment(load_experiment(PARAMS / "runpod-1x8-h200.yaml"), include_standard=False)
    pts = {p["scenario"]: p for p in plan.topologies[0]["points"]}
    sp, mt, tr = pts["shared-prefix"], pts["multi-turn"], pts["trace-mooncake"]
    assert (
        sp["isl"] == 8192 + 256 and sp["concurrency"] == 32 and "no prefix-cache reuse" in sp["modelled_as"]
    )
    assert mt["isl"] == round(512 * 3 + 256 * 2) and mt["concurrency"] == 16 and "turn" in mt["modelled_as"]
    rows = [
        json.loads(x)
        for x in (PARAMS / "traces" / "mooncake-conversation-60s.jsonl").read_text().splitlines()
    ]
    span = (rows[-1]["timestamp"] - rows[0]["timestamp"]) / 1000
    assert tr["rate"] == pytest.approx((len(rows) - 1) / span) and tr["concurrency"] is None
    assert tr["isl"] == round(sum(r["input_length"] for r in rows) / len(rows))
    assert tr["modelled_as"].startswith("poisson at the trace's mean rate")
    assert "modelled_as" not in pts["sweep"]


def test_plan_times_of_prefix_sharing_scenarios():
    from r1lab.perf.plan_text import point_seconds

    exp = load_experiment(PARAMS / "runpod-1x8-h200.yaml")
    pts = {p["scenario"]: p for p in plan_experiment(exp, include_standard=False).topologies[0]["points"]}
    mt, tr = pts["multi-turn"], pts["trace-mooncake"]
    assert point_seconds(exp, mt) == pytest.approx(2 * 5 * mt["e2e_ms"]["mean"] / 1000)  # 32 convs / 16 users
    assert point_seconds(exp, tr) == pytest.approx(
        (tr["requests"] - 1) / tr["rate"] + tr["e2e_ms"]["mean"] / 1000
    )
    assert 55 < (tr["requests"] - 1) / tr["rate"] < 61  # the trace's own 60 s


def test_plan_after_mocker_tables_is_the_same_json(tmp_path):
    """The step models the mocker's tables fill (numpy figures) are cached and reused by the planner: a plan made
    after them in the same process (a notebook kernel, `scripts/golden_outputs.py`) must still be plain JSON, the
    same bytes as a plan made alone (it raised on a numpy bool `meets_slo`)."""
    from r1lab.serve.commands import render
    from r1lab.serve.deploy import mocker_timings

    one = load_experiment(PARAMS / "runpod-1x8-h200.yaml")
    exp = load_experiment(PARAMS / "runpod-1x8-h200.yaml")
    predict = importlib.import_module("r1lab.perf.predict")  # the package re-exports the function `predict`
    predict._step_model.cache_clear()
    mocker_timings(one, render(one, "single", engine="mocker"), tmp_path)
    after = json.dumps(make_plan(exp, include_standard=False).as_dict(), indent=1)
    predict._step_model.cache_clear()
    assert json.dumps(make_plan(exp, include_standard=False).as_dict(), indent=1) == after
