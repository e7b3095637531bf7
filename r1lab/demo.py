"""`make demo`: run every notebook on the twin, then print where the report is and a ten-line summary."""

from __future__ import annotations

import sys
import time

from r1lab.report.brief import summary_lines
from r1lab.runner import run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    params = argv[0] if argv else "params/twin.yaml"
    start = time.monotonic()
    ctx, code = run(params)
    elapsed = time.monotonic() - start
    print()
    print(f"run directory     {ctx.run_dir}   ({elapsed:.0f} s, exit {code})")
    for line in summary_lines(ctx.run_dir):
        print(line)
    return code


if __name__ == "__main__":
    sys.exit(main())
