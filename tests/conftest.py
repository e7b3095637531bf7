"""Shared test fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VENV_PY = REPO / ".venv" / "bin" / "python"


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def venv_python() -> str:
    return str(VENV_PY) if VENV_PY.exists() else sys.executable


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("R1LAB_PROGRESS", "plain")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import procguard  # every server a test starts dies with this process (see procguard.py)

    procguard.start()
