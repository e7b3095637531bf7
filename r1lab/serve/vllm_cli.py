"""Check command lines against vLLM's own CLI parser, run in the vLLM venv (`scripts/bootstrap.sh --vllm`).

Public interface: `vllm_python() -> str | None`, `parse_with_vllm(items) -> list[dict]` where items are
`(id, argv)` pairs; each result has id, ok, error (vLLM's own message) and the parsed values that matter.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).with_name("vllm_argcheck.py")


def vllm_python() -> str | None:
    """The vLLM venv's python: $R1LAB_VLLM_PYTHON, else <repo>/.venv-vllm/bin/python, else None."""
    env = os.environ.get("R1LAB_VLLM_PYTHON")
    if env and Path(env).exists():
        return env
    p = REPO / ".venv-vllm" / "bin" / "python"
    return str(p) if p.exists() else None


def parse_with_vllm(
    items: list[tuple[str, list[str]]], python: str | None = None, timeout: float = 300.0
) -> list[dict]:
    """Parse each argv with vLLM's parser in one subprocess (importing vLLM takes ~15-40 s, so batch them)."""
    python = python or vllm_python()
    if python is None:
        raise FileNotFoundError(
            "no vLLM venv: run `scripts/bootstrap.sh --vllm` (creates .venv-vllm) or set R1LAB_VLLM_PYTHON"
        )
    payload = json.dumps([{"id": i, "argv": a} for i, a in items])
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "VLLM_TARGET_DEVICE": "cpu"}
    proc = subprocess.run([python, str(HELPER)], input=payload, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM argument check failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)
