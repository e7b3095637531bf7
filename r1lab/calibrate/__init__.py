"""GPU calibration: measure a machine's real ceilings into a hardware profile for the performance model.

- `gpu_bench.py`: the self-contained measurement script (PyTorch only; copied to pods as it is).
- `cli.py`: `r1lab calibrate --local | --pod HOST[:PORT] --out DIR` (upload, run, fetch, check, compare).
- `summary.py`: headline figures against the datasheet and earlier measurements.
- `reference/`: the raw records behind the reference profiles in r1lab/data/profiles/.
"""

from __future__ import annotations


def cli_main(argv: list[str]) -> int:
    from r1lab.calibrate.cli import cli_main as main

    return main(argv)
