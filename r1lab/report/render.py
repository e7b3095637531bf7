"""Check that a report drew: open it in headless Chromium (Debian's), read each chart's plot areas from the
page's render hook, screenshot the page and look for ink (dark pixels) inside every chart's plot area.
Gridlines and shading are light and do not count; a chart whose traces failed to draw has no ink there."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
INK_LEVEL = 180  # a pixel with any channel below this is ink (plotly_white gridlines are ~#ebf0f8)

_HOOK_AREAS = """
<script>
window.addEventListener('load', function () {
  setTimeout(function () {
    var pre = document.getElementById('r1lab-render-check');
    if (!pre) return;
    var data = JSON.parse(pre.textContent);
    data.charts.forEach(function (c) {
      var box = document.querySelector('[data-chart="' + c.id + '"]');
      var el = box && box.querySelector('.js-plotly-plot');
      var areas = [];
      if (!el) { c.areas = areas; return; }
      el.querySelectorAll('.draglayer .nsewdrag, .table-control-view').forEach(function (a) {
        var r = a.getBoundingClientRect();
        areas.push({x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height});
      });
      c.areas = areas;
    });
    pre.textContent = JSON.stringify(data);
  }, 600);
});
</script>
"""


@dataclass
class ChartCheck:
    id: str
    traces: int
    drawn: int
    areas: int
    ink: float  # largest fraction of ink pixels over the chart's plot areas

    @property
    def ok(self) -> bool:
        return self.traces > 0 and self.drawn > 0 and self.areas > 0 and self.ink >= 0.001


def _chromium(args: list[str], profile: str, timeout: float) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--mute-audio",
           "--force-device-scale-factor=1", "--no-first-run", f"--user-data-dir={profile}",
           "--virtual-time-budget=30000", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check_report(html_path: str | Path, screenshot: str | Path | None = None, width: int = 1280,
                 timeout: float = 120) -> tuple[list[ChartCheck], Path | None]:  # fmt: skip
    """Per chart: traces, drawn trace groups, plot areas and ink; and the screenshot's path (if asked for)."""
    import numpy as np
    from PIL import Image

    src = Path(html_path).resolve()
    with tempfile.TemporaryDirectory(prefix="r1lab-render-") as tmp:
        page = Path(tmp) / src.name
        text = src.read_text(encoding="utf-8")
        if "r1lab-render-check" not in text:
            raise ValueError(f"{src}: no render hook (not an r1lab report.html)")
        page.write_text(text.replace("</body>", _HOOK_AREAS + "</body>"), encoding="utf-8")
        dom = _chromium([f"--window-size={width},2000", "--dump-dom", page.as_uri()], f"{tmp}/p1", timeout)
        m = re.search(r'<pre id="r1lab-render-check"[^>]*>(.*?)</pre>', dom.stdout, re.S)
        if not m:
            raise RuntimeError(
                f"chromium rendered no check data for {src} (exit {dom.returncode}): {dom.stderr[-800:]}"
            )
        info = json.loads(_unescape(m.group(1)))
        height = min(int(info["height"]) + 40, 30000)
        shot = Path(screenshot).resolve() if screenshot else Path(tmp) / "page.png"
        res = _chromium(
            [f"--window-size={width},{height}", f"--screenshot={shot}", page.as_uri()], f"{tmp}/p2", timeout
        )
        if not shot.exists():
            raise RuntimeError(f"chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-800:]}")
        img = np.asarray(Image.open(shot).convert("RGB"))
        checks = []
        for c in info["charts"]:
            best = 0.0
            for a in c.get("areas", []):
                x0, y0 = int(a["x"]) + 2, int(a["y"]) + 2
                x1, y1 = int(a["x"] + a["w"]) - 2, int(a["y"] + a["h"]) - 2
                if x1 <= x0 or y1 <= y0 or y1 > img.shape[0]:
                    continue
                crop = img[y0:y1, x0:x1]
                best = max(best, float((crop.min(axis=2) < INK_LEVEL).mean()))
            checks.append(ChartCheck(c["id"], c["traces"], c["drawn"], len(c.get("areas", [])), best))
        return checks, (shot if screenshot else None)


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)


_HOOK_LAYOUT = """
<script>
window.addEventListener('load', function () {
  setTimeout(function () {
    var vw = document.documentElement.clientWidth, wide = [];
    document.querySelectorAll('body *').forEach(function (el) {
      var r = el.getBoundingClientRect();
      if (r.width > 0 && r.right > vw + 1 && getComputedStyle(el).display !== 'none') {
        // an element sticking out of the viewport counts unless an ancestor clips or scrolls it
        for (var p = el.parentElement; p && p !== document.body; p = p.parentElement) {
          var o = getComputedStyle(p).overflowX;
          if (o === 'auto' || o === 'scroll' || o === 'hidden') return;
        }
        wide.push((el.tagName + '.' + (el.className && el.className.baseVal === undefined ? el.className : '')).slice(0, 80)
                  + ' ' + Math.round(r.right) + 'px');
      }
    });
    var charts = [];
    document.querySelectorAll('[data-chart], .js-plotly-plot').forEach(function (box) {
      var ticks = [];
      box.querySelectorAll('g.xtick text, g.ytick text, g.y2tick text, g.x2tick text, g.y3tick text, g.y4tick text')
        .forEach(function (t) {
          ticks.push([t.parentNode.getAttribute('class'), t.textContent,
                      parseFloat(getComputedStyle(t).fontSize) || parseFloat(t.style.fontSize) || 0]);
        });
      var notes = Array.from(box.querySelectorAll('g.annotation-text-g text')).map(function (t) { return t.textContent; });
      charts.push({id: box.getAttribute('data-chart') || box.id, ticks: ticks, notes: notes});
    });
    var out = {scroll_width: document.documentElement.scrollWidth, viewport: vw, wide: wide.slice(0, 20), charts: charts,
               height: document.documentElement.scrollHeight,
               stderr_blocks: document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]').length,
               external_scripts: Array.from(document.scripts).map(function (s) { return s.src; })
                                      .filter(function (s) { return /^https?:/.test(s); }),
               math: document.querySelectorAll('.MathJax, mjx-container, .MathJax_Display, span.math').length};
    var pre = document.createElement('pre');
    pre.id = 'r1lab-layout-check'; pre.style.display = 'none';
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }, 1500);
});
</script>
"""


def check_layout(html_path: str | Path, screenshot: str | Path | None = None, width: int = 1400,
                 timeout: float = 180) -> dict:  # fmt: skip
    """Open a page (report.html, a rendered notebook) in headless Chromium at `width` px: its scroll width, the
    elements that stick out of the viewport, stderr output blocks, scripts loaded from the network, math
    typeset; and a full-page screenshot if asked for. Network access is off: a CDN script cannot load."""
    src = Path(html_path).resolve()
    with tempfile.TemporaryDirectory(prefix="r1lab-layout-") as tmp:
        page = Path(tmp) / src.name
        page.write_text(src.read_text(encoding="utf-8").replace("</body>", _HOOK_LAYOUT + "</body>"), "utf-8")
        offline = [
            "--disable-background-networking",
            "--proxy-server=127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
        ]
        dom = _chromium(
            [*offline, f"--window-size={width},1200", "--dump-dom", page.as_uri()], f"{tmp}/p1", timeout
        )
        m = re.search(r'<pre id="r1lab-layout-check"[^>]*>(.*?)</pre>', dom.stdout, re.S)
        if not m:
            raise RuntimeError(
                f"chromium rendered no layout data for {src} (exit {dom.returncode}): {dom.stderr[-800:]}"
            )
        info = json.loads(_unescape(m.group(1)))
        if screenshot:
            height = min(int(info["height"]) + 40, 16000)
            _chromium([*offline, f"--window-size={width},{height}", f"--screenshot={Path(screenshot).resolve()}",
                       page.as_uri()], f"{tmp}/p2", timeout)  # fmt: skip
        return info
