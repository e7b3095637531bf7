"""One small progress interface, rendered for where it runs: rich in a terminal, plain timestamped lines in CI or
a log, and in Jupyter an HTML bar that updates in place and stays in the saved notebook as static HTML (no widget
JavaScript, no stderr). Amounts are in human units: s/min/h, kB/MB/GB, MB/s, with an ETA.

Inside a kernel started by `r1lab run`, bars are also appended to `$R1LAB_PROGRESS_FILE`; the runner relays the
latest one to its terminal (`relay`), so a long notebook is never silent there.
"""

from __future__ import annotations

import html
import json
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PROGRESS_FILE_ENV = "R1LAB_PROGRESS_FILE"


# --- human units --------------------------------------------------------------------------------------------


def fmt_duration(seconds: float | None) -> str:
    """4.2 s, 1 min 43 s, 2 h 05 min."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s:02d} s"
    h, m = divmod(int(round(seconds / 60)), 60)
    return f"{h} h {m:02d} min"


def fmt_bytes(n: float | None) -> str:
    """Decimal units, as disks and downloads are sold: 16.0 MB, 689 GB."""
    if n is None:
        return "?"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.1f} {unit}" if v < 100 else f"{v:,.0f} {unit}"
    return f"{n:.0f} B"


def fmt_amount(value: float, unit: str) -> str:
    """An amount in its unit, made human (B -> MB/GB, s -> min/h)."""
    if unit == "B":
        return fmt_bytes(value)
    if unit == "s":
        return fmt_duration(value)
    return f"{value:,.0f} {unit}" if float(value).is_integer() else f"{value:,.1f} {unit}"


def fmt_rate(per_s: float, unit: str) -> str:
    if unit == "B":
        return f"{fmt_bytes(per_s)}/s"
    return f"{per_s:,.1f} {unit}/s"


def describe(description: str, done: float, total: float | None, unit: str, elapsed: float) -> str:
    """One line: what, how far (and of how much), rate, elapsed and ETA."""
    if unit == "s":  # waiting against a deadline: elapsed of the allowed time
        of = f" of {fmt_duration(total)} allowed" if total else ""
        return f"{description}: {fmt_duration(done)}{of}"
    parts = [f"{description}: {fmt_amount(done, unit)}"]
    if total:
        parts[0] += f" / {fmt_amount(total, unit)} ({100 * min(done / total, 1):.0f}%)"
    rate = done / elapsed if elapsed > 0.5 and done > 0 else None
    if rate:
        parts.append(fmt_rate(rate, unit))
    parts.append(f"{fmt_duration(elapsed)} elapsed")
    if total and rate and done < total:
        parts.append(f"ETA {fmt_duration((total - done) / rate)}")
    return ", ".join(parts)


# --- where we run -------------------------------------------------------------------------------------------


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def _mode() -> str:
    if _in_kernel():
        return "notebook"  # JupyterLab, and papermill (the saved notebook keeps the last state as HTML)
    if os.environ.get("R1LAB_PROGRESS") in {"plain", "rich"}:  # for terminals and logs
        return os.environ["R1LAB_PROGRESS"]
    if os.environ.get("CI"):
        return "plain"
    return "rich" if sys.stderr.isatty() else "plain"


def _bar_html(text: str, fraction: float | None) -> str:
    width = "100%" if fraction is None else f"{100 * min(max(fraction, 0.0), 1.0):.1f}%"
    fill = "#9ecae1" if fraction is None else "#3182bd"
    return (
        "<div class='r1lab-progress' style='font:12px system-ui,sans-serif;color:#333;margin:2px 0'>"
        "<div style='display:inline-block;vertical-align:middle;width:220px;height:8px;background:#e8eef7;"
        f"border-radius:4px;margin-right:8px'><div style='width:{width};height:8px;background:{fill};"
        f"border-radius:4px'></div></div>{html.escape(text)}</div>"
    )


def _to_file(event: dict[str, Any]) -> None:
    path = os.environ.get(PROGRESS_FILE_ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")
    except OSError:
        pass


class Progress:
    """A progress handle: `advance(n)`, `set_description(text)`, `close()`."""

    def __init__(self, description: str, total: float | None = None, unit: str = "it") -> None:
        self.description, self.total, self.unit = description, total, unit
        self.done = 0.0
        self.start = time.monotonic()
        self._mode = _mode()
        self._last = 0.0
        self._handle: Any = None
        self._rich: Any = None
        if self._mode == "notebook":
            from IPython.display import HTML, display

            self._handle = display(HTML(self._html()), display_id=True)
        elif self._mode == "rich":
            from rich.console import Console
            from rich.progress import BarColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(BarColumn(bar_width=30), TextColumn("{task.description}"),
                                      console=Console(stderr=True), transient=False)  # fmt: skip
            self._rich.start()
            self._task = self._rich.add_task(self.text(), total=total or None)
        self._show(force=True)

    def text(self) -> str:
        return describe(self.description, self.done, self.total, self.unit, time.monotonic() - self.start)

    def _fraction(self) -> float | None:
        return min(self.done / self.total, 1.0) if self.total else None

    def _html(self) -> str:
        return _bar_html(self.text(), self._fraction())

    def _show(self, force: bool = False, final: bool = False) -> None:
        now = time.monotonic()
        interval = {"plain": 5.0, "notebook": 0.5, "rich": 0.1}[self._mode]
        if not force and now - self._last < interval:
            return
        self._last = now
        text = self.text()
        _to_file(
            {"description": self.description, "text": text, "fraction": self._fraction(), "final": final}
        )
        if self._mode == "notebook":
            from IPython.display import HTML

            self._handle.update(HTML(self._html()))
        elif self._mode == "rich":
            self._rich.update(self._task, completed=self.done, description=text)
        else:
            print(f"[{fmt_duration(now - self.start):>10}] {text}", file=sys.stderr, flush=True)

    def advance(self, n: float = 1) -> None:
        self.done += n
        self._show()

    def set_description(self, text: str) -> None:
        self.description = text
        self._show(force=True)

    def close(self) -> None:
        self._show(force=True, final=True)
        if self._rich is not None:
            self._rich.stop()
            self._rich = None


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
    if total is None and isinstance(items, Sized):
        total = len(items)
    with progress(description, total) as p:
        for item in items:
            yield item
            p.advance()


def say(text: str) -> None:
    """A status line: stdout in a notebook (never a red stderr block), stderr in a terminal; relayed by the runner."""
    _to_file({"description": text, "text": text, "fraction": None, "final": True})
    print(text, file=sys.stdout if _in_kernel() else sys.stderr, flush=True)


@contextmanager
def step(description: str) -> Iterator[None]:
    """Announce a step and how long it took."""
    start = time.monotonic()
    say(f"▶ {description} ...")
    try:
        yield
    except BaseException:
        say(f"✗ {description} failed after {fmt_duration(time.monotonic() - start)}")
        raise
    say(f"✓ {description} ({fmt_duration(time.monotonic() - start)})")


# --- the runner's terminal ----------------------------------------------------------------------------------


def latest_line(path: Path, offset: int, last: str) -> tuple[int, str]:
    """The newest text among the whole lines appended to `path` since `offset`, and the offset after them. A line
    the kernel is still writing (no newline yet) is left for the next read, never consumed half-written."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    for line in data[:end].splitlines():
        try:
            last = json.loads(line).get("text") or last
        except ValueError:  # not JSON (nor UTF-8): skipped
            continue
    return offset + end, last


@contextmanager
def relay(title: str, path: Path) -> Iterator[None]:
    """While a notebook runs in its kernel: show `title`, time elapsed and the kernel's latest progress line (read
    from `path`, which the kernel's bars append to) in this terminal; rich on a TTY, a plain line every 15 s else."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    stop = threading.Event()
    start = time.monotonic()
    rich_mode = _mode() == "rich"

    def loop() -> None:
        offset, last, shown = path.stat().st_size, "", 0.0
        live = None
        if rich_mode:
            from rich.console import Console
            from rich.live import Live

            live = Live("", console=Console(stderr=True), refresh_per_second=4, transient=True)
            live.start()
        try:
            while not stop.wait(0.25):
                offset, last = latest_line(path, offset, last)
                line = f"{title} · {fmt_duration(time.monotonic() - start)}" + (f" · {last}" if last else "")
                if live is not None:
                    live.update(line)
                elif time.monotonic() - shown >= 15:
                    shown = time.monotonic()
                    print(f"  {line}", file=sys.stderr, flush=True)
        finally:
            if live is not None:
                live.stop()

    thread = threading.Thread(target=loop, daemon=True, name="r1lab-progress-relay")
    previous = os.environ.get(PROGRESS_FILE_ENV)
    os.environ[PROGRESS_FILE_ENV] = str(path)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
        if previous is None:
            os.environ.pop(PROGRESS_FILE_ENV, None)
        else:
            os.environ[PROGRESS_FILE_ENV] = previous
