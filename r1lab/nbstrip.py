"""A git clean filter (nbstripout-like) for the committed notebooks: outputs, execution counts and per-run
metadata never reach a commit, whatever JupyterLab autosaved. `scripts/bootstrap.sh` installs it:

    git config filter.r1lab-nbstrip.clean ".venv/bin/python -m r1lab.nbstrip"   # + .gitattributes

Reads a notebook on stdin, writes it stripped on stdout; a notebook that is already clean comes back byte for
byte (so git sees no change). `python -m r1lab.nbstrip FILE...` strips files in place.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CELL_METADATA_DROP = ("execution", "collapsed", "scrolled", "ExecuteTime")
NB_METADATA_DROP = ("widgets", "papermill", "varInspector", "toc")


def strip(nb: dict[str, Any]) -> bool:
    """Strip in place; True if anything changed."""
    changed = False
    for key in NB_METADATA_DROP:
        changed |= nb.get("metadata", {}).pop(key, None) is not None
    for cell in nb.get("cells", []):
        md = cell.get("metadata", {})
        for key in CELL_METADATA_DROP:
            changed |= md.pop(key, None) is not None
        if cell.get("cell_type") == "code":
            if cell.get("outputs"):
                cell["outputs"] = []
                changed = True
            if cell.get("execution_count") is not None:
                cell["execution_count"] = None
                changed = True
    return changed


def strip_text(text: str) -> str:
    try:
        nb = json.loads(text)
    except json.JSONDecodeError:
        return text  # not a notebook (a merge conflict, ...): leave it for the person to see
    if not strip(nb):
        return text
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.stdout.write(strip_text(sys.stdin.read()))
        return 0
    for name in argv:
        p = Path(name)
        text = p.read_text(encoding="utf-8")
        new = strip_text(text)
        if new != text:
            p.write_text(new, encoding="utf-8")
            print(f"stripped {p}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
