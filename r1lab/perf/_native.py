"""The native build of `r1lab.perf.simulate`: which sources it is built from, whether a built module is current.

`scripts/build_native.py` compiles simulate.py (with the types of simulate.pxd, Cython's pure-Python mode) into an
extension module beside it, which Python imports in the source's place, and records the sources' digest in
`simulate.native.json`. The extension checks at import that it was built from the sources as they are now; where
it was not (the source edited since), or where R1LAB_PURE_PYTHON=1 asks for it, the import gives the pure-Python
module instead (`use_source`). Either way `simulate.COMPILED` says which one runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
SOURCES = (HERE / "simulate.py", HERE / "simulate.pxd")
RECORD = HERE / "simulate.native.json"
PURE_ENV = "R1LAB_PURE_PYTHON"


class cython:  # noqa: N801  (named as the module it stands for)
    """Stand-in for Cython's pure-Python shadow module where Cython is not installed: nothing is compiled."""

    compiled = False


def source_digest() -> str:
    """sha256 over the native module's sources, in order."""
    h = hashlib.sha256()
    for p in SOURCES:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def built_digest() -> str | None:
    """The digest the last successful build recorded, None without one."""
    try:
        v = json.loads(RECORD.read_text()).get("sources")
    except (OSError, ValueError, AttributeError):
        return None
    return v if isinstance(v, str) else None


def current() -> bool:
    """Whether the built module may stand for the sources: built from these bytes and not refused by the env."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return False
    try:
        return built_digest() == source_digest()
    except OSError:
        return False


def load_source(name: str, path: Path = SOURCES[0]) -> ModuleType:
    """simulate.py executed as pure Python under module `name` (registered in sys.modules, as an import does)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class body runs
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def use_source(name: str) -> None:
    """Called by a stale or refused native module while it is imported: the import returns the pure module."""
    load_source(name)  # replaces sys.modules[name], which is what the import system hands out
