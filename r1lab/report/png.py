"""PNG export of a report's charts through kaleido 1.x (a headless Chromium), started early.

`PngWriter()` launches the browser and its tabs in a thread as soon as it is made, so Chromium's start-up (seconds
on a small machine) overlaps building the charts; `write(figs, paths)` then renders them, `TABS` at a time, and
raises on the first figure that fails. `close()` stops the browser when nothing is written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
TABS = 2  # figures rendered at once: one per core of a small machine (11 charts: ~6 s with one tab, ~4 s with two)
TIMEOUT_S = 600.0


def ensure_browser() -> None:
    """kaleido 1.x drives a Chrome: use Debian's chromium (facts.md) when no browser is configured."""
    if not os.environ.get("BROWSER_PATH") and Path(CHROMIUM).exists():
        os.environ["BROWSER_PATH"] = CHROMIUM


class PngWriter:
    """A kaleido browser started in a thread now; `write` hands it the figures and waits until every PNG is
    written."""

    def __init__(self, tabs: int = TABS) -> None:
        ensure_browser()
        self._tabs = tabs
        self._specs: concurrent.futures.Future[list[dict[str, Any]]] = concurrent.futures.Future()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name="r1lab-png", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to write(), in the caller's thread
            self._done.set_exception(exc)
        else:
            self._done.set_result(None)

    async def _main(self) -> None:
        import kaleido  # type: ignore[import-untyped]

        async with kaleido.Kaleido(n=self._tabs) as k:
            specs = await asyncio.wrap_future(self._specs)
            if specs:
                await k.write_fig_from_object(specs, cancel_on_error=True)

    def write(self, figs: list[dict[str, Any]], paths: list[Path]) -> None:
        """Render `figs` (plotly figure dicts) to `paths` (PNG) at plotly's default image size and scale, as
        `plotly.io.write_images` does; raises what kaleido raised."""
        import plotly.io as pio

        d = pio.defaults
        opts = {
            "format": "png",
            "width": d.default_width,
            "height": d.default_height,
            "scale": d.default_scale,
        }
        specs = [{"fig": f, "path": p, "opts": dict(opts)} for f, p in zip(figs, paths, strict=True)]
        self._hand(specs)
        self._done.result(timeout=TIMEOUT_S)
        self._thread.join(timeout=60)

    def close(self) -> None:
        """Stop the browser without writing anything (idempotent; errors of a browser never used are dropped)."""
        self._hand([])
        try:
            self._done.result(timeout=60)
        except Exception:  # noqa: BLE001  nothing was asked of it
            pass
        self._thread.join(timeout=60)

    def _hand(self, specs: list[dict[str, Any]]) -> None:
        if not self._specs.done():
            self._specs.set_result(specs)
