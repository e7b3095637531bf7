"""Trace replay: Mooncake-style JSON lines (`timestamp` ms since the trace's start, `input_length`,
`output_length`, `hash_ids`: one id per block of `block_size` prompt tokens, equal ids = equal blocks), as
Mooncake, Dynamo's data generator and aiperf read them (block size 512 by default).

Prompts are synthesised so that equal hash ids give equal prompt blocks: each id's block is `block_size` random
token ids seeded by (seed, id), decoded to text; a prompt is its blocks' texts in order, its last block cut to the
input length, the tail then fitted so the server tokenizes the prompt to exactly `input_length` tokens (BOS
included). Blocks are identical as text; as tokens, a boundary may merge differently with what follows it.
Timestamps are replayed open-loop (`shapes.Shape(kind="trace")`), optionally scaled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from r1lab.bench.client import completion_body
from r1lab.bench.workloads import ModelTokenizer, Request, WorkloadError, fit_tail

BLOCK_SIZE = 512  # Mooncake's and aiperf's default


@dataclass(frozen=True)
class TraceRow:
    """One request of a trace."""

    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def read_trace(
    path: str | Path, block_size: int = BLOCK_SIZE, max_requests: int | None = None,
    max_total_tokens: int | None = None,
) -> list[TraceRow]:  # fmt: skip
    """The rows of a Mooncake-style JSONL trace; a bad line is an error naming file, line, key and fix. Rows whose
    input + output exceed `max_total_tokens` (the deployment's max_model_len) are skipped, and said so."""
    skipped = 0
    p = Path(path)
    if not p.is_file():
        raise WorkloadError(
            f"{p}: no such trace file (a relative trace.file is read from the working directory, else the repository root)"
        )
    rows: list[TraceRow] = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{i}"
        try:
            d = json.loads(line)
        except ValueError:
            raise WorkloadError(f"{where}: not a JSON object; one request per line") from None
        for key in ("timestamp", "input_length", "output_length", "hash_ids"):
            if key not in d:
                raise WorkloadError(
                    f"{where}: no {key!r}; each line needs timestamp, input_length, output_length, hash_ids"
                )
        ts, il, ol, h = d["timestamp"], d["input_length"], d["output_length"], d["hash_ids"]
        if isinstance(ts, bool) or not isinstance(ts, int | float) or ts < 0:
            raise WorkloadError(f"{where}: timestamp {ts!r} is not milliseconds >= 0")
        for key, v in (("input_length", il), ("output_length", ol)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WorkloadError(f"{where}: {key} {v!r} is not a token count >= 1")
        if (
            not isinstance(h, list)
            or not h
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in h)
        ):
            raise WorkloadError(f"{where}: hash_ids must be a non-empty list of integers")
        if il > len(h) * block_size:
            raise WorkloadError(
                f"{where}: input_length {il} needs more than its {len(h)} blocks of {block_size} tokens: "
                "set trace.block_size to the block size the trace was made with"
            )
        if rows and ts < rows[-1].timestamp_ms:
            raise WorkloadError(f"{where}: timestamp {ts} goes back in time; sort the trace by timestamp")
        if max_total_tokens is not None and il + ol > max_total_tokens:
            skipped += 1
            continue
        rows.append(TraceRow(float(ts), il, ol, tuple(h[: math.ceil(il / block_size)])))
        if max_requests is not None and len(rows) >= max_requests:
            break
    if skipped:
        print(
            f"{p}: skipped {skipped} requests longer than max_total_tokens {max_total_tokens} (input + output)"
        )
    if not rows:
        raise WorkloadError(f"{p}: the trace has no requests (within max_total_tokens: raise it or drop it)")
    return rows


def trace_offsets(rows: list[TraceRow], time_scale: float = 1.0) -> tuple[float, ...]:
    """Send offsets in seconds from the first request; `time_scale` multiplies them (0.5: twice as fast)."""
    t0 = rows[0].timestamp_ms
    return tuple((r.timestamp_ms - t0) / 1000.0 * time_scale for r in rows)


def block_ids(hash_id: int, block_size: int, tok: ModelTokenizer, seed: int) -> list[int]:
    """The token ids of one hash id's block: the same for the same (seed, id), whichever request it is in."""
    rng = np.random.default_rng([seed, hash_id & 0xFFFFFFFF, hash_id >> 32 & 0xFFFFFFFF])
    return [int(x) for x in rng.choice(tok.sample_ids, size=block_size)]


def block_texts(row: TraceRow, tok: ModelTokenizer, block_size: int, seed: int) -> list[str]:
    """The text of each block of a row's prompt before the tail is fitted (the last block cut to its length)."""
    out = []
    left = row.input_length
    for h in row.hash_ids:
        ids = block_ids(h, block_size, tok, seed)[: min(block_size, left)]
        left -= len(ids)
        out.append(tok.decode(ids))
    return out


def build_trace_workload(
    tok: ModelTokenizer, rows: list[TraceRow], *, model: str, block_size: int = BLOCK_SIZE, api: str = "completions",
    seed: int = 0, force_output: bool = True,
) -> list[Request]:  # fmt: skip
    """One request per trace row: its prompt from its hash blocks (exactly input_length tokens as the server counts
    them), its output forced to output_length."""
    rng = np.random.default_rng(seed)
    out = []
    for row in rows:
        texts = block_texts(row, tok, block_size, seed)
        rem = row.input_length - (len(row.hash_ids) - 1) * block_size
        last = block_ids(row.hash_ids[-1], block_size, tok, seed)[:rem]
        prompt = fit_tail(tok, "".join(texts[:-1]), last, row.input_length, rng, api)
        body = completion_body(model, api, prompt, row.output_length, force_output=force_output)
        out.append(Request(prompt, row.input_length, row.output_length, body))
    return out
