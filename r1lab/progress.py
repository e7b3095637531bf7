"""One small progress interface, rendered for where it runs: rich in a terminal, tqdm.notebook in Jupyter,
plain timestamped lines in CI or under papermill (whose captured output must stay readable)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def _mode() -> str:
    if os.environ.get("R1LAB_PROGRESS") in {"plain", "rich", "notebook"}:
        return os.environ["R1LAB_PROGRESS"]
    if os.environ.get("CI") or os.environ.get("PAPERMILL_EXECUTION"):
        return "plain"
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell":
            return "notebook"
    except ImportError:
        pass
    return "rich" if sys.stderr.isatty() else "plain"


class Progress:
    """A progress handle: `advance(n)`, `set_description(text)`, `close()`."""

    def __init__(self, description: str, total: float | None = None, unit: str = "it") -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done = 0.0
        self.start = time.monotonic()
        self._mode = _mode()
        self._last_plain = 0.0
        self._bar = None
        if self._mode == "notebook":
            from tqdm.notebook import tqdm

            self._bar = tqdm(total=total, desc=description, unit=unit)
        elif self._mode == "rich":
            import warnings

            from tqdm.rich import tqdm

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._bar = tqdm(total=total, desc=description, unit=unit)
        else:
            self._plain(force=True)

    def _plain(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_plain < 5.0:
            return
        self._last_plain = now
        of = f"/{self.total:g}" if self.total else ""
        print(
            f"[{now - self.start:7.1f}s] {self.description}: {self.done:g}{of} {self.unit}",
            file=sys.stderr,
            flush=True,
        )

    def advance(self, n: float = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        else:
            self._plain()

    def set_description(self, text: str) -> None:
        self.description = text
        if self._bar is not None:
            self._bar.set_description(text)
        else:
            self._plain(force=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        else:
            self._plain(force=True)


@contextmanager
def progress(description: str, total: float | None = None, unit: str = "it") -> Iterator[Progress]:
    """`with progress("downloading", total=n, unit="B") as p: p.advance(k)`."""
    p = Progress(description, total, unit)
    try:
        yield p
    finally:
        p.close()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(description, total) as p:
        for item in items:
            yield item
            p.advance()


@contextmanager
def step(description: str) -> Iterator[None]:
    """Announce a step and how long it took (plain text, works everywhere)."""
    start = time.monotonic()
    print(f"▶ {description} ...", file=sys.stderr, flush=True)
    try:
        yield
    except BaseException:
        print(f"✗ {description} failed after {time.monotonic() - start:.1f}s", file=sys.stderr, flush=True)
        raise
    print(f"✓ {description} ({time.monotonic() - start:.1f}s)", file=sys.stderr, flush=True)
