"""Unit test: what a bare twin pod is given of the CPU engine (netns.engine_binds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from r1lab.cloud.twin.netns import ENGINE_SYSTEM_LIBS, POD_ENGINE_VENV, engine_binds


def test_engine_binds_the_venv_its_interpreter_and_libnuma(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv, prefix = tmp_path / "venv", tmp_path / "pyenv" / "3.11.7"
    (prefix / "bin").mkdir(parents=True)
    venv.mkdir()
    (venv / "pyvenv.cfg").write_text(f"home = {prefix / 'bin'}\nversion = 3.11.7\n")
    monkeypatch.setenv("R1LAB_DYNAMO_VLLM_VENV", str(venv))
    binds = engine_binds()
    assert binds[:2] == [(str(venv), POD_ENGINE_VENV), (str(prefix), str(prefix))]
    assert binds[2:] == [(lib, lib) for lib in ENGINE_SYSTEM_LIBS if os.path.exists(lib)]
    # a system interpreter is the image's own: not bound over the pod's /usr
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    assert [b for b in engine_binds() if b[1].startswith("/usr/bin")] == []
    monkeypatch.setenv("R1LAB_DYNAMO_VLLM_VENV", str(tmp_path / "absent"))
    assert engine_binds() == []  # no CPU engine bootstrapped: nothing bound
