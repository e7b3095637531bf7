"""The report from a run directory's files alone: every chart drawn (checked in headless Chromium), PNGs,
rebuilt identically from a copied run dir through `r1lab report`, clear errors on bad inputs."""

from __future__ import annotations

import json
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from report_run import make_run  # noqa: E402

from r1lab.cli import main as r1lab_main  # noqa: E402
from r1lab.report import ReportError, build_report, check_report, compare_runs, load_run  # noqa: E402
from r1lab.report.build import PNG_SIZE  # noqa: E402

needs_chromium = pytest.mark.skipif(
    not Path("/usr/bin/chromium").exists(), reason="Debian's chromium (bootstrap)"
)
ALL_CHARTS = {
    "summary_table", "latency_vs_concurrency", "throughput_vs_concurrency", "pareto", "latency_cdfs",
    "server_timeseries", "cost_vs_concurrency", "gpu_memory", "predicted_vs_measured", "topology_cost", "reasoning",
}  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rd = make_run(root)
    return rd, build_report(rd, png=True)


@needs_chromium
def test_every_chart_is_written_and_draws(built, tmp_path: Path) -> None:
    rd, rep = built
    assert rep.path == rd / "report.html" and not rep.missing
    assert set(rep.charts) == ALL_CHARTS
    for name in ALL_CHARTS:
        html_file, png = rd / "charts" / f"{name}.html", rd / "charts" / f"{name}.png"
        assert (
            html_file.exists()
            and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            and png.stat().st_size > 10_000
        )
        width, height = struct.unpack(">II", png.read_bytes()[16:24])  # the PNG's IHDR chunk
        assert width == PNG_SIZE[0] and height >= PNG_SIZE[1], f"{png}: {width} x {height}"
    assert (rd / "charts" / "plotly.min.js").exists()  # chart pages open offline
    text = rep.path.read_text()
    assert not re.search(r"<script[^>]+src=", text), "report.html must not load scripts from anywhere"
    assert "measured on twin" in text and "modelled" in text
    checks, shot = check_report(rep.path, screenshot=tmp_path / "report.png")
    assert shot is not None and shot.stat().st_size > 50_000
    drawn = {c.id: c for c in checks}
    assert set(drawn) == ALL_CHARTS - {"summary_table"}  # the summary is an HTML table in the report
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


@needs_chromium
def test_check_catches_a_chart_that_did_not_draw(built, tmp_path: Path) -> None:
    rd, rep = built
    text = rep.path.read_text()
    hidden = text.replace("</head>", "<style>#pareto .scatterlayer{display:none}</style></head>")
    broken = re.sub(r'Plotly\.newPlot\(\s*"latency_cdfs"', 'Plotly.newPlot("no-such-div"', hidden, count=1)
    assert broken != hidden
    page = tmp_path / "report.html"
    page.write_text(broken)
    checks = {c.id: c for c in check_report(page)[0]}
    assert not checks["pareto"].ok and checks["pareto"].ink < 0.001  # traces hidden: no ink in the plot area
    assert not checks["latency_cdfs"].ok  # never plotted
    assert checks["latency_vs_concurrency"].ok and checks["server_timeseries"].ok


def test_rebuild_from_a_copied_run_dir(built, tmp_path: Path, capsys) -> None:
    rd, rep = built
    copy = Path(shutil.copytree(rd, tmp_path / "copied" / rd.name))
    assert r1lab_main(["report", str(copy), "--no-png"]) == 0
    out = Path(capsys.readouterr().out.strip().splitlines()[0])
    assert out.parent.parent == copy and out.parent.name.startswith(
        "rebuilt-"
    )  # never overwrites report.html
    assert (copy / "report.html").read_text() == rep.path.read_text()
    again = out.read_text().replace(str(copy), "RUN")
    assert again == rep.path.read_text().replace(str(rd), "RUN")
    with pytest.raises(FileExistsError, match="never overwritten"):
        build_report(copy, out.parent, png=False)


def test_report_without_metrics_or_plan(tmp_path: Path) -> None:
    rd = make_run(tmp_path, metrics=False, plan=False, seed=1)
    rep = build_report(rd, png=False)
    assert {"server_timeseries", "predicted_vs_measured", "topology_cost"} <= set(rep.missing)
    assert "gpu_memory" in rep.charts  # modelled from the params when there is no plan
    assert any("metrics.parquet absent" in n for n in rep.notes)
    text = rep.path.read_text()
    assert "server_timeseries: not drawn: metrics.parquet has no KV/queue series" in text


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="no run.json"):
        load_run(tmp_path)
    rd = make_run(tmp_path, metrics=False, plan=False, seed=2)
    (rd / "plan.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"plan\.json: not valid JSON"):
        load_run(rd)
    (rd / "plan.json").unlink()
    s = json.loads((rd / "summary.json").read_text())
    s.pop("points")
    (rd / "summary.json").write_text(json.dumps(s))
    with pytest.raises(ReportError, match="key 'points' missing"):
        load_run(rd)
    (rd / "summary.json").unlink()  # the report summarizes from the records itself
    data = load_run(rd)
    assert {p["point"] for p in data.points} >= {"c1", "c4", "c16", "c64"}
    assert data.summary["saturation"]["sweep"]["saturated"]


def test_compare_runs(built, tmp_path: Path) -> None:
    rd, _ = built
    other = make_run(tmp_path, metrics=False, plan=False, seed=3)
    out = tmp_path / "cmp.html"
    assert r1lab_main(["compare", str(rd), str(other), "--out", str(out)]) == 0
    text = out.read_text()
    assert rd.name in text and other.name in text and "Plotly.newPlot" in text
    assert r1lab_main(["compare", str(rd), str(other), "--out", str(out)]) == 1  # never overwritten
    assert compare_runs.__name__ == "compare_runs"


def test_a_cut_short_run_says_so(tmp_path: Path) -> None:
    rd = make_run(tmp_path, metrics=False, plan=False, seed=2)
    events = [
        {"event": "run_started"},
        {"event": "notebook_started", "notebook": "05_load_test"},
        {"event": "run_interrupted", "reason": "SIGHUP"},
        {"event": "teardown_started"},
        {"event": "run_finished", "code": 129},
    ]
    (rd / "runner.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    data = load_run(rd)
    assert data.summary["run_outcome"]["complete"] is False
    assert data.notes[0] == "this run was CUT SHORT: interrupted by SIGHUP during 05_load_test"
    assert "summary.json stays" not in json.dumps(data.summary)  # the file on disk is untouched
    assert "run_outcome" not in json.loads((rd / "summary.json").read_text())
    rep = build_report(rd, png=False)
    assert "This run was cut short" in rep.path.read_text()
    # a killed runner (no run_finished) is cut short too; a finished one is not
    (rd / "runner.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events[:2]))
    assert "killed during 05_load_test" in load_run(rd).notes[0]
    (rd / "runner.jsonl").write_text(json.dumps({"event": "run_started"}) + "\n" + json.dumps(
        {"event": "run_finished", "code": 0}) + "\n")  # fmt: skip
    assert load_run(rd).summary["run_outcome"]["complete"] is True


def test_a_png_kaleido_did_not_render_is_named_and_not_listed(tmp_path: Path, monkeypatch) -> None:
    import plotly.graph_objects as go
    import plotly.io as pio

    from r1lab.report.build import write_charts

    # kaleido returns its render errors to plotly.io.write_images, which drops them: one chart fails here
    def renders_only_the_first(figs, paths, **kw) -> None:
        Path(paths[0]).write_bytes(b"\x89PNG\r\n\x1a\n")

    monkeypatch.setattr(pio, "write_images", renders_only_the_first)
    charts = {"a": go.Figure(go.Scatter(x=[1], y=[1])), "b": go.Figure(go.Scatter(x=[2], y=[2]))}
    with pytest.warns(UserWarning, match=r"b\.png: kaleido rendered no PNG for chart 'b'"):
        files = write_charts(charts, tmp_path / "charts")
    assert [p.suffix for p in files["a"]] == [".html", ".png"] and [p.suffix for p in files["b"]] == [".html"]
