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

import math
import re
import urllib.request
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
    """Bytes NIXL moves for `tokens` prompt tokens: whole blocks, one full MLA copy per decode TP rank."""
    blocks = math.ceil(tokens / block_size)
    return decode_tp * blocks * block_size * model.kv_bytes_per_token(kv_dtype)


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
        return asdict(self)

    def summary(self) -> str:
        return (
            f"[{self.engine}] prompt {self.prompt_tokens} tokens: NIXL {self.nixl_transfers:.0f} transfer(s), "
            f"{self.nixl_bytes:,.0f} B; decode pod link rx {self.link_rx_bytes:,} B; predicted "
            f"{self.predicted_bytes:,} B ({self.decode_tp} decode TP rank(s) x blocks of {self.block_size} x "
            f"{self.kv_bytes_per_token} B/token); prompt tokens by transfer {self.tokens_external:.0f}, "
            f"computed on decode {self.tokens_local:.0f}"
        )
