"""`r1lab serve PARAMS [--dry-run] [--audit-plan] [--stage S] [--json] [--verify]`: print the exact commands.

Prints every command (and environment) each stage of the experiment launches, per node, with secrets as
`$NAME` references; with --audit-plan, first the original plan's command flag by flag. Launching itself
happens in `r1lab run` (notebooks 02-04), which owns the pods; this command never starts anything.
"""

from __future__ import annotations

import argparse
import json
import sys

from r1lab.config import ParamsError, load_experiment
from r1lab.serve.commands import ServeConfigError, render, stages
from r1lab.serve.plan_audit import audit_plan, format_audit


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="r1lab serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("params")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the commands (the default: this command never launches anything)",
    )
    parser.add_argument(
        "--audit-plan", action="store_true", help="first show the original plan, flag by flag"
    )
    parser.add_argument(
        "--stage",
        choices=["single", "multi", "dynamo"],
        action="append",
        help="only these stages (default: every stage the params use)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also parse every vLLM command with vLLM's own parser (needs .venv-vllm)",
    )
    args = parser.parse_args(argv)
    try:
        exp = load_experiment(args.params)
    except ParamsError as exc:
        for p in exc.problems:
            print(p, file=sys.stderr)
        return 1
    wanted = args.stage or stages(exp)
    bad = [s for s in wanted if s not in stages(exp)]
    if bad:
        print(
            f"{args.params}: stage {bad[0]!r} is not used by this experiment (stages: {', '.join(stages(exp))})",
            file=sys.stderr,
        )
        return 2
    try:
        deps = [render(exp, s) for s in wanted]
        audit = audit_plan(exp, verify=args.verify) if args.audit_plan else []
    except ServeConfigError as exc:
        print(f"{args.params}: {exc}", file=sys.stderr)
        return 1
    verdicts: dict[str, dict] = {}
    if args.verify:
        from r1lab.serve.vllm_cli import parse_with_vllm

        items = [
            (f"{d.stage}/{c.name}", c.argv)
            for d in deps
            for c in d.commands
            if c.argv[:2] == ["vllm", "serve"] or c.argv[:3] == ["python", "-m", "dynamo.vllm"]
        ]
        verdicts = {r["id"]: r for r in parse_with_vllm(items)}
    if args.json:
        out = {"params": args.params, "stages": [], "audit": [a.__dict__ for a in audit]}
        for d in deps:
            cmds = [{**c.as_dict(), "vllm_parser": verdicts.get(f"{d.stage}/{c.name}")} for c in d.commands]
            out["stages"].append(
                {
                    "stage": d.stage,
                    "topology": d.topology,
                    "engine": d.engine,
                    "notes": d.notes,
                    "endpoint": {"node": d.endpoint_node, "port": d.endpoint_port},
                    "commands": cmds,
                }
            )
        print(json.dumps(out, indent=2))
        return 0 if all(v["ok"] for v in verdicts.values()) else 1
    if audit:
        print(format_audit(audit))
        print()
    print(
        "# node addresses are placeholders (HEAD_ADDR, ...): the launcher fills in the pods' private addresses"
    )
    for d in deps:
        print(d.script())
    failed = [k for k, v in verdicts.items() if not v["ok"]]
    for k, v in verdicts.items():
        print(f"# vLLM's parser: {k}: {'ok' if v['ok'] else 'REJECTED: ' + v['error']}")
    return 1 if failed else 0
