"""Shared test fixtures."""

from __future__ import annotations

import os
import signal
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
    # A suite started in the background (`make test &`, nohup) inherits SIGINT and SIGQUIT ignored, and so would
    # every `r1lab run` the signal tests start: their Ctrl-C / SIGQUIT would do nothing. Give this process (and so
    # its children) the dispositions a terminal gives; SIGHUP stays as inherited (nohup keeps the suite alive).
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import procguard  # every server a test starts dies with this process (see procguard.py)

    procguard.start()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--faults",
        action="store_true",
        help="run the full fault matrix (tests marked `faults`); `make test` runs its bounded subset",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--faults") or os.environ.get("R1LAB_FAULTS") == "full":
        return
    bounded = os.environ.get("R1LAB_FAULTS") == "bounded"
    skip = pytest.mark.skip(reason="the full fault matrix: pytest -m faults --faults (or R1LAB_FAULTS=full)")
    for item in items:
        if "faults" in item.keywords and not (bounded and "faults_bounded" in item.keywords):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault suite's closing table (tests/test_faults.py), after the results, when any of its cases ran."""
    for name, mod in list(sys.modules.items()):
        lines = getattr(mod, "fault_table_lines", None) if name.endswith("test_faults") else None
        if callable(lines) and lines():
            terminalreporter.write_sep("-", "faults and outcomes (tests/test_faults.py)")
            for line in lines():
                terminalreporter.write_line(line)
