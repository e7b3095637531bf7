"""The `r1lab` command: each subcommand lives with the module that does the work (lazy imports keep it fast)."""

from __future__ import annotations

import importlib
import sys

# subcommand -> ("module", "function", one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "validate": ("r1lab.config", "cli_main", "check params files; every error names file, key and fix"),
    "plan": (
        "r1lab.plan_cli",
        "cli_main",
        "fit, KV capacity, predicted latency/throughput/cost per topology",
    ),
    "run": (
        "r1lab.runner",
        "cli_main",
        "run the notebook suite into a new run directory (always tears down)",
    ),
    "serve": (
        "r1lab.serve.cli",
        "cli_main",
        "print the exact vLLM/Ray/Dynamo commands; audit the original plan",
    ),
    "twin": ("r1lab.cloud.twin.cli", "cli_main", "the local twin: up | down | status"),
    "reap": ("r1lab.cloud.ledger", "cli_main", "delete every r1lab resource of a run (or all) and prove it"),
    "runs": ("r1lab.runs", "cli_main", "list run directories with their state (and the current run)"),
    "teardown": ("r1lab.teardown_cli", "cli_main", "tear down what one run directory's ledger still holds"),
    "download": ("r1lab.hub", "cli_main", "download and verify model weights onto a volume"),
    "bench": ("r1lab.bench.cli", "cli_main", "run load scenarios against an OpenAI-compatible endpoint"),
    "report": ("r1lab.report.cli", "report_main", "rebuild a run's report from its files alone"),
    "compare": ("r1lab.report.cli", "compare_main", "compare several runs"),
    "calibrate": ("r1lab.calibrate", "cli_main", "measure a GPU machine's ceilings into a hardware profile"),
}


def version() -> str:
    """r1lab's version, with the git commit it runs from (when in a checkout)."""
    from r1lab import __version__
    from r1lab.rundir import git_sha

    sha = git_sha()
    return f"r1lab {__version__}" + (
        f" (git {sha[:12]}{'+dirty' if sha.endswith('+dirty') else ''})" if sha else ""
    )


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: r1lab [--version] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`r1lab COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("--version", "-V", "version"):
        print(version())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"r1lab: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    handler = getattr(importlib.import_module(module), func)
    return int(handler(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
