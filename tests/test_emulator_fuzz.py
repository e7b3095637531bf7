"""Spec-driven fuzzing of the RunPod emulator with schemathesis, on the operations r1lab's client uses.

Cases come from RunPod's own OpenAPI spec (r1lab/data/runpod/openapi-v2.json): positive and negative data, the
spec's examples, its boundary values (the coverage phase) and stateful sequences along its links. The bar: no
server error, no response outside the spec (status, content type, headers, schema), no schema-violating request
accepted, RFC 9457 405s for undeclared methods. Not checked: `positive_data_acceptance`, since the spec's prose
rules (CPU pods without global networking, GPU counts within a type's maximum...) refuse schema-valid bodies
with 400 on purpose. Rate limits are off here: the fuzzer explores the API, not the quota (test_emulator_rules).
Two seeds; the coverage phase is deterministic, so it runs with the first only. Figures are printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1lab.cloud.emulator import Emulator, Timings
from r1lab.cloud.emulator.spec import spec_path

KEY = "rpa_FUZZTESTKEY0123456789abcdefghi"
OPERATIONS = [  # every operation r1lab.cloud.runpod calls
    "getSshKeys", "updateSshKeys", "listPods", "createPod", "getPod", "deletePod", "podAction",
    "listNetworkVolumes", "createNetworkVolume", "getNetworkVolume", "deleteNetworkVolume", "listGpuTypes",
    "listDataCenters", "listClusters", "createCluster", "getCluster", "deleteCluster", "listClusterPods",
]  # fmt: skip
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CASES_PER_OPERATION = 10
RUNS = [(1, "examples,coverage,fuzzing,stateful"), (2, "examples,fuzzing,stateful")]


@pytest.fixture
def emu():
    e = Emulator(api_key=KEY, timings=Timings(0.05, 0.05, 0.05), stock=1_000_000, rate_limits=()).start()
    yield e
    e.stop()


@pytest.mark.parametrize(("seed", "phases"), RUNS)
def test_fuzz_finds_nothing(emu, tmp_path: Path, seed: int, phases: str) -> None:
    assert SCHEMATHESIS.exists(), "schemathesis is missing: scripts/bootstrap.sh installs the dev extra"
    cmd = [str(SCHEMATHESIS), "--no-color", "run", str(spec_path()), "--url", emu.url]
    cmd += ["-H", f"Authorization: Bearer {KEY}", "--generation-database", "none"]
    cmd += ["--checks", "all", "--exclude-checks", "positive_data_acceptance", "--mode", "all"]
    cmd += ["--phases", phases, "-n", str(CASES_PER_OPERATION), "--seed", str(seed), "--workers", "1"]
    cmd += ["--request-timeout", "10"]  # no --max-time: it repeats fuzzing until the time is spent
    for op in OPERATIONS:
        cmd += ["--include-operation-id", op]
    t0 = time.monotonic()
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    wall = time.monotonic() - t0
    text = out.stdout + out.stderr
    counts = re.search(r"(\d+) generated, (.+)", text)
    tested = re.search(r"Tested: (\d+)", text)
    print(f"schemathesis seed {seed} [{phases}]: {counts.group(0) if counts else '?'}; operations "
          f"{tested.group(1) if tested else '?'}/{len(OPERATIONS)}; {wall:.0f} s")  # fmt: skip
    assert out.returncode == 0, text[-6000:]
    assert counts and int(counts.group(1)) > 0 and "fail" not in counts.group(2), text[-3000:]
    assert tested and int(tested.group(1)) == len(OPERATIONS), text[-3000:]
    assert emu.spec_violations == []
    assert [r for r in emu.requests if r[2] >= 500] == []
