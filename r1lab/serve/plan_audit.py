"""The original plan's serving commands, flag by flag: rejected, corrected or kept, and what r1lab runs instead.

Shown before anything launches (`r1lab serve PARAMS --audit-plan`, notebooks 02-04). Reasons come from
facts.md ("What the original plan gets wrong"); the replacement of each flag is taken from the commands r1lab
renders for the experiment, so the audit can never drift from what is launched. With the vLLM venv present,
the plan's flags are also put through vLLM's own parser and its verdict is quoted.

Public interface: `ORIGINAL_PLAN`, `audit_plan(exp, verify=False) -> list[AuditItem]`, `format_audit(items)`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from r1lab.config import Experiment
from r1lab.serve.commands import Command, Stage, render, stages

ORIGINAL_PLAN = {
    "serve": "python -m vllm.entrypoints.api_server --model deepseek-ai/DeepSeek-R1 --tensor-parallel-size 16 "
    "--dtype float8_e4m3fn --host 0.0.0.0 --port 8000",
    "ray": "ray start --head --dashboard-host 0.0.0.0",
    "dynamo": "Dynamo frontend forwarding to the vLLM OpenAI endpoint at http://HEAD:8000",
    "download": 'huggingface-cli download deepseek-ai/DeepSeek-R1 --include "*.fp8"',
}


@dataclass
class AuditItem:
    part: str  # "serve", "ray", "dynamo", "download"
    original: str  # the flag or command of the plan
    verdict: str  # "rejected" | "corrected" | "kept" | "added"
    reason: str
    replacement: str  # what r1lab runs instead ("" when nothing replaces it)
    engine_says: str = ""  # vLLM's own parser's verdict, when checked


def _flag(cmd: Command | None, *names: str) -> str:
    """`--flag value` pairs of a rendered command, for the replacement column."""
    if cmd is None:
        return ""
    out = []
    for n in names:
        if n in cmd.argv:
            i = cmd.argv.index(n)
            takes = i + 1 < len(cmd.argv) and not cmd.argv[i + 1].startswith("--")
            out.append(shlex.join(cmd.argv[i : i + 2] if takes else [n]))
    return " ".join(out)


def _serve_cmd(exp: Experiment) -> tuple[Command | None, str]:
    st: Stage = "multi" if "multi" in stages(exp) else "single"
    dep = render(exp, st)
    for c in dep.commands:
        if c.argv[:2] == ["vllm", "serve"] and "--headless" not in c.argv:
            return c, dep.topology
    return None, dep.topology


def audit_plan(exp: Experiment, verify: bool = False) -> list[AuditItem]:
    """Each element of the original plan with its verdict and r1lab's replacement for this experiment."""
    serve, topo = _serve_cmd(exp)
    model = serve.argv[2] if serve else exp.model.path
    public = exp.provider.kind == "runpod"
    items = [
        AuditItem("serve", "python -m vllm.entrypoints.api_server", "rejected",
                  "the module is gone from vLLM (it was a demo server that only served /generate); the "
                  "OpenAI-compatible server is `vllm serve MODEL`", "vllm serve " + model),
        AuditItem("serve", "--model deepseek-ai/DeepSeek-R1", "corrected",
                  "`vllm serve` takes the model as its positional argument; r1lab serves the verified copy on the "
                  "network volume (downloaded once) under a stable API name",
                  f"{model} {_flag(serve, '--served-model-name')}"),
        AuditItem("serve", "--tensor-parallel-size 16", "corrected",
                  "TP16 across two pods puts an all-reduce over the inter-pod link in every layer; vLLM's guidance "
                  "is TP = GPUs per node, PP = nodes, or DP + EP",
                  f"{topo}: " + _flag(serve, "--tensor-parallel-size", "--pipeline-parallel-size",
                                      "--data-parallel-size", "--enable-expert-parallel",
                                      "--distributed-executor-backend")),
        AuditItem("serve", "--dtype float8_e4m3fn", "rejected",
                  "vLLM's parser rejects it; R1's FP8 comes from its checkpoint's quantization_config by itself "
                  "(the non-quantized parts stay bf16)", "(no --dtype)"),
        AuditItem("serve", "--host 0.0.0.0 --port 8000", "corrected" if public else "kept",
                  "a public port on RunPod needs an API key: vLLM reads it from VLLM_API_KEY (set from "
                  "R1LAB_VLLM_API_KEY), never from the command line" if public else
                  "the twin's pods are private network namespaces",
                  _flag(serve, "--host", "--port") + (" + VLLM_API_KEY in the environment" if public else "")),
        AuditItem("serve", "(missing)", "added",
                  "R1 needs its KV cache dtype and a max model length that fits the KV cache, the deepseek_r1 "
                  "reasoning parser (thinking in `reasoning`), and VLLM_HOST_IP per node",
                  _flag(serve, "--kv-cache-dtype", "--max-model-len", "--gpu-memory-utilization",
                        "--reasoning-parser") + (f" VLLM_HOST_IP={serve.env.get('VLLM_HOST_IP')}" if serve else "")),
        AuditItem("ray", "--dashboard-host 0.0.0.0", "corrected",
                  "Ray's dashboard and job API on a public address let anyone submit jobs; keep Ray on the private "
                  "network and the dashboard on the pod's localhost, reached through SSH forwarding",
                  "ray start --head --node-ip-address <private> --dashboard-host 127.0.0.1 (RAY_AUTH_MODE=token)"),
        AuditItem("dynamo", ORIGINAL_PLAN["dynamo"], "rejected",
                  "Dynamo's frontend does not forward to a plain vLLM endpoint: it routes to Dynamo workers that "
                  "register in its discovery (etcd/NATS)",
                  "python -m dynamo.frontend --router-mode ... + python -m dynamo.vllm workers "
                  "(--disaggregation-mode prefill|decode, NIXL KV transfer)"),
        AuditItem("download", '--include "*.fp8"', "rejected",
                  "matches no file: R1's FP8 weights are 163 model-*.safetensors shards; `huggingface-cli` is "
                  "now `hf`", "hf download ... (r1lab.hub: *.safetensors + configs, verified)"),
    ]  # fmt: skip
    if verify:
        from r1lab.serve.vllm_cli import parse_with_vllm, vllm_python

        if vllm_python() is not None:
            checks = [
                ("dtype", ["vllm", "serve", "deepseek-ai/DeepSeek-R1", "--dtype", "float8_e4m3fn"]),
                ("tp16", ["vllm", "serve", "deepseek-ai/DeepSeek-R1", "--tensor-parallel-size", "16"]),
            ]
            if serve is not None:
                checks.append(("r1lab", serve.argv))
            res = {r["id"]: r for r in parse_with_vllm(checks)}
            items[3].engine_says = res["dtype"]["error"] or "accepted (unexpected)"
            items[2].engine_says = (
                "parses (it is slow, not invalid)" if res["tp16"]["ok"] else res["tp16"]["error"]
            )
            if serve is not None:
                items[0].engine_says = (
                    "r1lab's command parses with vLLM's parser"
                    if res["r1lab"]["ok"]
                    else f"r1lab's command FAILS vLLM's parser: {res['r1lab']['error']}"
                )
    return items


def format_audit(items: list[AuditItem]) -> str:
    """Plain text, one block per flag."""
    lines = ["The original plan, flag by flag (facts.md: what the original plan gets wrong):"]
    for it in items:
        lines.append(f"  [{it.verdict.upper():9}] {it.part:8} {it.original}")
        lines.append(f"              why: {it.reason}")
        if it.replacement:
            lines.append(f"              r1lab: {it.replacement}")
        if it.engine_says:
            lines.append(f"              vLLM's parser: {it.engine_says}")
    return "\n".join(lines)
