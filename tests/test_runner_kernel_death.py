"""A signal that stops a notebook kills its kernel; nbclient's pending cell task then ends in DeadKernelError,
which asyncio logs at exit with a traceback. `r1lab run` keeps that expected traceback off the terminal, and only
that one: any other never-retrieved task exception is still logged."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import asyncio, gc, sys
import r1lab.runner  # installs the filter
from nbclient.exceptions import DeadKernelError

async def dies(exc):
    raise exc

async def main(exc):
    asyncio.get_running_loop().create_task(dies(exc))
    await asyncio.sleep(0.05)

asyncio.run(main(DeadKernelError("Kernel died") if sys.argv[1] == "dead" else RuntimeError("other")))
gc.collect()
"""


def _stderr(kind: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, kind], capture_output=True, text=True, timeout=60
    ).stderr


def test_a_dead_kernels_pending_task_prints_no_traceback() -> None:
    assert "Traceback" not in _stderr("dead")


def test_other_unretrieved_task_errors_still_print() -> None:
    err = _stderr("other")
    assert "Task exception was never retrieved" in err and "RuntimeError: other" in err, err
