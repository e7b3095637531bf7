"""Parse command lines with vLLM's own CLI parser. Runs INSIDE the vLLM venv (.venv-vllm): imports nothing of r1lab.

stdin: JSON list of {"id": str, "argv": [...]}; argv is `vllm serve MODEL ...`, or `python -m dynamo.vllm ...`
(its engine flags are parsed by vLLM's AsyncEngineArgs parser, Dynamo's own flags set aside).
stdout: JSON list of {"id", "ok": bool, "error": str|null, "args": {flag values that matter}}.

`vllm serve` is parsed exactly as `vllm` builds it (vllm.entrypoints.cli.main): a FlexibleArgumentParser with
the `serve` subcommand from `ServeSubcommand.subparser_init` (make_arg_parser), then `ServeSubcommand.validate`
(validate_parsed_serve_args), then `AsyncEngineArgs.from_cli_args`.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

# Dynamo's own flags on `python -m dynamo.vllm` (dynamo/vllm/backend_args.py, common runtime args): flag -> takes value
DYNAMO_FLAGS = {"--disaggregation-mode": True, "--dyn-reasoning-parser": True, "--dyn-tool-call-parser": True,
                "--endpoint": True, "--use-vllm-tokenizer": False}  # fmt: skip
KEEP = ("model", "model_tag", "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
        "enable_expert_parallel", "kv_cache_dtype", "max_model_len", "dtype", "reasoning_parser",
        "served_model_name", "distributed_executor_backend", "nnodes", "node_rank", "headless", "api_key",
        "gpu_memory_utilization", "load_format", "kv_transfer_config", "quantization")  # fmt: skip


def _serve_parser():
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm", description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    cmd = ServeSubcommand()
    cmd.subparser_init(subparsers).set_defaults(dispatch_function=cmd.cmd)
    return parser, cmd


def _engine_parser():
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return AsyncEngineArgs.add_cli_args(FlexibleArgumentParser(prog="dynamo.vllm (engine flags)"))


def _strip_dynamo(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        if flag in DYNAMO_FLAGS:
            i += 2 if DYNAMO_FLAGS[flag] and "=" not in argv[i] else 1
            continue
        out.append(argv[i])
        i += 1
    return out


def check(argv: list[str]) -> dict:
    from vllm.engine.arg_utils import AsyncEngineArgs

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            if argv[:2] == ["vllm", "serve"]:
                parser, cmd = _serve_parser()
                args = parser.parse_args(argv[1:])
                cmd.validate(args)
            elif argv[:3] == ["python", "-m", "dynamo.vllm"]:
                args = _engine_parser().parse_args(_strip_dynamo(argv[3:]))
            else:
                raise ValueError(f"not a vLLM command: {' '.join(argv[:3])}")
            AsyncEngineArgs.from_cli_args(args)
    except SystemExit as exc:  # argparse reports through stderr + exit 2
        msg = err.getvalue().strip().splitlines()
        return {"ok": False, "error": (msg[-1] if msg else f"exit {exc.code}"), "args": {}}
    except Exception as exc:  # noqa: BLE001 - report every failure, keep checking the others
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "args": {}}
    values = {k: getattr(args, k) for k in KEEP if hasattr(args, k)}
    return {"ok": True, "error": None, "args": json.loads(json.dumps(values, default=str))}


def main() -> int:
    items = json.load(sys.stdin)
    results = [{"id": it["id"], **check(list(it["argv"]))} for it in items]
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
