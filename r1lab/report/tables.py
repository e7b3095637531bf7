"""Tables as a reader wants them: formatted numbers (17,542 not 17542.245150; 0.0421 not 4.21e-02) and human
headers with units (TTFT p50 (ms), not ttft_p50_ms). Used by the notebooks and report.html alike."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

_WORDS = {
    "ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2el": "E2E", "e2e": "E2E", "rps": "req/s", "usd": "$",
    "mtok": "M tok", "gpu": "GPU", "kv": "KV", "isl": "ISL", "osl": "OSL", "tp": "TP", "pp": "PP", "dp": "DP",
    "goodput": "goodput", "conc": "concurrency",
}  # fmt: skip
_UNITS = {"ms": "ms", "s": "s", "gb": "GB", "gib": "GiB", "pct": "%", "usd": "$"}
_SPECIAL = {
    "output_tok_s": "output tok/s", "input_tok_s": "input tok/s", "total_tok_s": "total tok/s",
    "tok_s_per_gpu": "tok/s per GPU", "tok_s_per_user": "tok/s per user", "usd_per_mtok_out": "$ per M output tok",
    "usd_per_mtok_in": "$ per M input tok", "usd_per_hour": "$/h", "goodput_rps": "goodput (req/s)",
}  # fmt: skip


def human_header(name: str) -> str:
    """snake_case metric names to words with their unit: ttft_p50_ms -> TTFT p50 (ms)."""
    if not isinstance(name, str):
        return name
    if "_" not in name:
        return _WORDS.get(name, name) if name in ("rps", "ttft", "tpot", "itl") else name
    for key, words in sorted(_SPECIAL.items(), key=lambda kv: -len(kv[0])):
        if key in name:
            if name.endswith("_ratio"):
                return words + " measured/predicted"
            rest = name.replace(key, "\0").split("_")
            return " ".join(words if p == "\0" else _WORDS.get(p, p) for p in rest if p).replace("\0", words)
    parts = name.split("_")
    unit = None
    if parts[-1] in _UNITS and len(parts) > 1:
        unit = _UNITS[parts.pop()]
    elif len(parts) > 2 and parts[1] in _UNITS:  # ttft_ms_p50_measured
        unit = _UNITS[parts.pop(1)]
    if parts[-1] == "ratio":  # a ratio has no unit
        return " ".join(_WORDS.get(p, p) for p in parts[:-1]) + " measured/predicted"
    text = " ".join(_WORDS.get(p, p) for p in parts)
    return f"{text} ({unit})" if unit else text


def fmt_number(v: Any) -> Any:
    """A number for reading: thousands separators, digits by magnitude, blanks for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return v
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 1:
        return f"{int(v):,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:,.1f}"
    if a >= 1:
        return f"{v:,.2f}"
    if a == 0:
        return "0"
    return f"{v:.3g}" if a >= 1e-3 else f"{v:.2e}"


class Table:
    """A formatted table for a notebook: HTML that JupyterLab does not typeset as math (a `$` stays a dollar)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    def html(self) -> str:
        return self.frame.to_html(index=False, border=0, na_rep="", escape=True)

    def _repr_html_(self) -> str:
        return f"<div class='tex2jax_ignore mathjax_ignore r1lab-table'>{self.html()}</div>"

    def __repr__(self) -> str:
        return self.frame.to_string(index=False)


def display_table(rows: Any) -> Table:
    """A DataFrame (or list of dicts) with formatted numbers and human headers, for a notebook or an HTML page."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    out = df.copy()
    for c in out.columns:
        out[c] = [fmt_number(v) for v in out[c]]
    out.columns = [human_header(c) for c in out.columns]
    return Table(out)


def html_table(rows: Any) -> str:
    """display_table as an HTML table (numbers right-aligned by the page's CSS)."""
    return display_table(rows).html()
