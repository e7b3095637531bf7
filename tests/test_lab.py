"""`make lab` (as root, as the README says to run): JupyterLab on 127.0.0.1, the notebooks open with the project's
kernel, a cell runs in it without the "running over TCP without encryption" warning, and the Lab page draws in
headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_jupyter import _execute, _free_port  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on port (from /proc/net/tcp{,6})."""
    addrs = set()
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, p = local.rsplit(":", 1)
            if state == "0A" and int(p, 16) == port:
                addrs.add(
                    socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)[::-1]) if len(host) == 8 else host
                )
    return addrs


@pytest.mark.skipif(os.geteuid() != 0, reason="checks `make lab` as root, as the README runs it")
def test_make_lab_as_root_serves_the_notebooks_with_the_r1lab_kernel(tmp_path: Path) -> None:
    port, token = _free_port(), uuid.uuid4().hex
    env = {**os.environ, "JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    err = tmp_path / "lab.log"
    with open(err, "w") as log:
        proc = subprocess.Popen(["make", "-s", "lab", f"LAB_PORT={port}"], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"make lab exited {proc.returncode}: {err.read_text()[-2000:]}"
            assert time.monotonic() < deadline, err.read_text()[-2000:]
            try:
                if _get(f"{base}/api/status?token={token}")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        assert _listening(port) == {"127.0.0.1"}, _listening(port)
        status, page = _get(f"{base}/lab?token={token}")
        assert status == 200 and "JupyterLab" in page
        specs = json.loads(_get(f"{base}/api/kernelspecs?token={token}")[1])
        assert specs["default"] == "r1lab" and "r1lab" in specs["kernelspecs"]
        for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
            model = json.loads(_get(f"{base}/api/contents/{nb.name}?token={token}")[1])
            assert model["content"]["metadata"]["kernelspec"]["name"] == "r1lab", nb.name
        text, _ = asyncio.run(_execute(base, token, "r1lab", "import sys, r1lab\nprint(sys.executable)"))
        assert str(REPO / ".venv") in text
        with tempfile.TemporaryDirectory() as prof:
            dom = subprocess.run(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 f"--user-data-dir={prof}", "--virtual-time-budget=20000", "--window-size=1400,900",
                 "--dump-dom", f"{base}/lab/tree/00_plan.ipynb?token={token}"],
                capture_output=True, text=True, timeout=180,
            )  # fmt: skip
        assert "jp-LabShell" in dom.stdout, dom.stderr[-1500:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    log_text = err.read_text()
    assert "Running as root is not recommended" not in log_text
    assert "without encryption" not in log_text, log_text[-2000:]


def test_run_uses_the_r1lab_kernel_without_encryption_warnings(tmp_path: Path) -> None:
    import nbformat as nbf

    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "r1lab", "display_name": "r1lab (.venv)", "language": "python"}
    params = nbf.v4.new_code_cell('params_path = ""\nrun_dir = ""')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbf.v4.new_code_cell("import sys\nprint(sys.executable)")]
    nbf.write(nb, nbdir / "00_only.ipynb")
    env = {**os.environ, "R1LAB_OUTPUTS": str(tmp_path / "out")}
    res = subprocess.run([str(REPO / ".venv" / "bin" / "r1lab"), "run", str(REPO / "params" / "runpod-1x8-h200.yaml"),
                          "--notebooks", str(nbdir)], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert "without encryption" not in res.stderr, res.stderr
    run_dir = Path(res.stdout.strip().splitlines()[-1])
    out = nbf.read(run_dir / "notebooks" / "00_only.ipynb", as_version=4)
    assert out.metadata["kernelspec"]["name"] == "r1lab"
    assert str(REPO / ".venv") in out.cells[-1].outputs[0]["text"]
