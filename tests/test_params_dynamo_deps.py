"""Every params file that installs `ai-dynamo --no-deps` (its own requirements pin `aisimulate`, a placeholder that
cannot be installed: facts.md) lists ai-dynamo's other requirements itself, each at least as strict as ai-dynamo
declares it, on the same pod: else `python -m dynamo.frontend` fails on a RunPod pod with a missing module (or an
older preinstalled one is kept). The requirements are read from the ai-dynamo wheel the project installs."""

from __future__ import annotations

import importlib.metadata
import shlex
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
PLACEHOLDERS = {"aisimulate"}  # facts.md: downloads from a vendor index; the reason for --no-deps
PARAMS = sorted((REPO / "params").glob("*.yaml")) + sorted((REPO / "tests" / "data").glob("*.yaml"))


def dynamo_requirements() -> dict[str, Requirement]:
    dist = importlib.metadata.distribution("ai-dynamo")
    assert dist.version == "1.6.1", dist.version  # the version every params file pins
    out = {}
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is not None and "extra" in str(req.marker):
            continue  # extras ([vllm], [sglang], ...) are not installed by `ai-dynamo`
        if canonicalize_name(req.name) not in PLACEHOLDERS:
            out[canonicalize_name(req.name)] = req
    return out


def setup_requirements(lines: list[str]) -> dict[str, Requirement]:
    """The requirements of every pip / uv pip install in a pod's setup lines, by name."""
    out: dict[str, Requirement] = {}
    for line in lines:
        for seg in line.replace("&&", ";").split(";"):
            words = shlex.split(seg)
            if "install" not in words or not ({"pip", "pip3"} & set(words) or "-m" in words):
                continue
            for w in words[words.index("install") + 1 :]:
                if w.startswith("-") or "==" not in w and not w[0].isalpha():
                    continue
                req = Requirement(w)
                out[canonicalize_name(req.name)] = req
    return out


def _no_deps_dynamo(lines: list[str]) -> bool:
    return any("--no-deps" in seg and "ai-dynamo==" in seg for line in lines for seg in line.split("&&"))


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.name)
def test_pods_installing_ai_dynamo_without_deps_list_its_requirements(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    need = dynamo_requirements()
    for pod in data.get("pods") or []:
        lines = pod.get("setup") or []
        if not _no_deps_dynamo(lines):
            continue
        have = setup_requirements(lines)
        problems = []
        for name, req in sorted(need.items()):
            got = have.get(name)
            if got is None:
                problems.append(f"{req} missing")
            elif not set(req.specifier) <= set(got.specifier):
                problems.append(f"{got} is looser than ai-dynamo's {req}")
        assert not problems, f"{path.name} pods[role={pod['role']}].setup: {'; '.join(problems)}"


def test_the_check_finds_what_it_must() -> None:
    lines = ["pip install -q --no-deps ai-dynamo==1.6.1 && pip install -q ai-dynamo-runtime==1.6.1 certifi"]
    assert _no_deps_dynamo(lines)
    have = setup_requirements(lines)
    need = dynamo_requirements()
    assert "kubernetes" in need and "kubernetes" not in have  # what runpod-2x8-h100nvl.yaml lacked
    assert not set(need["certifi"].specifier) <= set(have["certifi"].specifier)  # unpinned: looser
    with_dynamo = [p.name for p in PARAMS if any(_no_deps_dynamo(q.get("setup") or [])
                                                 for q in yaml.safe_load(p.read_text()).get("pods") or [])]  # fmt: skip
    assert {"twin.yaml", "runpod-2x8-h100nvl.yaml"} <= set(with_dynamo), with_dynamo
