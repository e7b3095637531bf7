"""A Jupyter server started from .venv lists the notebooks and runs a cell in the project's kernel."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

REPO = Path(__file__).resolve().parent.parent
JUPYTER = REPO / ".venv" / "bin" / "jupyter"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _execute(base: str, token: str, kernel: str, code: str) -> tuple[str, list[str]]:
    headers = {"Authorization": f"token {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{base}/api/contents") as r:
            listing = await r.json()
        names = [item["name"] for item in listing["content"]]
        async with http.post(f"{base}/api/kernels", json={"name": kernel}) as r:
            assert r.status == 201, await r.text()
            kid = (await r.json())["id"]
        msg_id = uuid.uuid4().hex
        request = {
            "header": {
                "msg_id": msg_id,
                "username": "test",
                "session": uuid.uuid4().hex,
                "msg_type": "execute_request",
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "channel": "shell",
            "content": {
                "code": code,
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
                "stop_on_error": True,
            },
        }
        out: list[str] = []
        async with http.ws_connect(f"{base.replace('http', 'ws')}/api/kernels/{kid}/channels") as ws:
            await ws.send_str(json.dumps(request))
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                msg = await ws.receive_json(timeout=90)
                if msg.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                if msg["msg_type"] == "stream":
                    out.append(msg["content"]["text"])
                elif msg["msg_type"] == "error":
                    raise AssertionError(
                        f"cell failed: {msg['content']['ename']}: {msg['content']['evalue']}"
                    )
                elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle" and out:
                    break
        await http.delete(f"{base}/api/kernels/{kid}")
        return "".join(out), names


def test_jupyter_lists_notebooks_and_runs_project_kernel() -> None:
    if not JUPYTER.exists():
        pytest.fail(".venv has no jupyter: run scripts/bootstrap.sh")
    port, token = _free_port(), uuid.uuid4().hex
    proc = subprocess.Popen(
        [
            str(JUPYTER),
            "server",
            "--no-browser",
            f"--ServerApp.port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={REPO / 'notebooks'}",
            "--ServerApp.port_retries=0",
            "--allow-root",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.3)
        code = "import sys, r1lab\nprint(sys.executable)\nprint(r1lab.__version__)"
        text, names = asyncio.run(_execute(base, token, "r1lab", code))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert {"00_plan.ipynb", "06_report.ipynb"} <= set(names)
    assert str(REPO / ".venv") in text and "0.1.0" in text
