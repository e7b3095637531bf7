"""Build the native `r1lab.perf.simulate` (simulate.py compiled by Cython with simulate.pxd's types), if stale.

    .venv/bin/python scripts/build_native.py           # scripts/bootstrap.sh runs it; a no-op when current
    .venv/bin/python scripts/build_native.py --force   # rebuild even when current

The extension lands beside simulate.py (r1lab/perf/simulate<EXT_SUFFIX>, git-ignored) and the digest of its
sources in r1lab/perf/simulate.native.json (r1lab.perf._native): a module built from other bytes than today's
simulate.py / simulate.pxd is not used (the import falls back to the source). C generated under build/native/.
Compiled with the interpreter's own flags (-O3, no -ffast-math, no -march) and -ffp-contract=off: every float
operation rounds as Python's does. Without Cython or a C compiler, or when the build fails, it says so in one
warning line and exits 0: r1lab then runs the pure-Python simulate (same results, slower). --strict: exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import io
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from r1lab.perf import _native  # noqa: E402

EXT = ROOT / "r1lab" / "perf" / f"simulate{sysconfig.get_config_var('EXT_SUFFIX')}"
BUILD = ROOT / "build" / "native"
DIRECTIVES = {
    "language_level": 3,
    "annotation_typing": False,  # the .py's annotations are for mypy; the C types are simulate.pxd's
    "cdivision": False,  # // and % floor as Python's, ZeroDivisionError kept
    "infer_types": False,  # untyped locals stay Python objects (ints of any size, float or int as in Python)
    "boundscheck": True,
    "wraparound": True,
}
CFLAGS = ["-ffp-contract=off", "-fno-fast-math"]


def log(msg: str) -> None:
    print(f"\033[1mbootstrap:\033[0m native simulate: {msg}", flush=True)


def build() -> None:
    from Cython.Build import cythonize  # noqa: PLC0415  (absent where only pure Python runs)
    from setuptools import Distribution, Extension  # noqa: PLC0415

    BUILD.mkdir(parents=True, exist_ok=True)
    ext = Extension(
        "r1lab.perf.simulate", [str(_native.SOURCES[0].relative_to(ROOT))], extra_compile_args=CFLAGS
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            mods = cythonize(
                [ext], compiler_directives=DIRECTIVES, build_dir=str(BUILD), force=True, quiet=True
            )
            dist = Distribution({"ext_modules": mods, "script_name": "build_native.py"})
            cmd = dist.get_command_obj("build_ext")
            cmd.build_lib = str(BUILD / "lib")  # type: ignore[attr-defined]
            cmd.build_temp = str(BUILD / "tmp")  # type: ignore[attr-defined]
            cmd.ensure_finalized()
            cmd.run()
            built = BUILD / "lib" / "r1lab" / "perf" / EXT.name
            # a new file renamed into place: a process that has the old module loaded keeps its (unlinked) copy
            tmp = EXT.with_name(f"{EXT.name}.{os.getpid()}.new")
            shutil.copy2(built, tmp)
            os.replace(tmp, EXT)
        except Exception as e:  # (Ctrl-C stops bootstrap, not just the build)
            tail = "\n".join(out.getvalue().strip().splitlines()[-15:])
            raise RuntimeError(f"{type(e).__name__}: {e}\n{tail}") from e


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--force", action="store_true", help="rebuild even when the built module is current")
    ap.add_argument("--strict", action="store_true", help="exit 1 when it cannot be built")
    a = ap.parse_args(argv)
    BUILD.mkdir(parents=True, exist_ok=True)
    # one build at a time per checkout (make demo and make test started together)
    with open(BUILD / "lock", "w") as lock:
        if not _try_lock(lock):
            log("waiting for another build of this checkout")
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_if_stale(a.force, a.strict)


def _try_lock(f: IO[str]) -> bool:
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _build_if_stale(force: bool, strict: bool) -> int:
    """Build unless the module is current (checked with the lock held: another build may just have finished)."""
    digest = _native.source_digest()
    if not force and EXT.exists() and _native.built_digest() == digest:
        log("up to date")
        return 0
    t0 = time.monotonic()
    log("building (Cython + C compiler, ~30 s)")
    # no record while the module is replaced: a half-done build is unused
    _native.RECORD.unlink(missing_ok=True)
    try:
        build()
    except Exception as e:  # a missing Cython or compiler, a compile error: pure Python still works
        log(f"WARNING: not built, r1lab.perf.simulate runs as pure Python (same results, slower): {e}")
        EXT.unlink(missing_ok=True)
        return 1 if strict else 0
    _native.RECORD.write_text(json.dumps({"sources": digest, "module": EXT.name}) + "\n")
    log(f"built {EXT.relative_to(ROOT)} in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
