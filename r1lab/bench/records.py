"""Per-request records: built from raw reads, appended to `load/<scenario>/requests.jsonl` as they happen, and
consolidated into `requests.parquet` (columns as docs/architecture.md pins them)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from r1lab.bench.sse import Stream, parse_response

if TYPE_CHECKING:
    import pyarrow as pa

_dumps: Callable[[object], bytes]
try:
    from orjson import dumps as _dumps
except ImportError:  # pragma: no cover

    def _dumps(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


COLUMNS = [
    "scenario", "point", "request_id", "worker", "concurrency", "rate", "warmup",
    "t_sched", "t_send", "t_first", "t_end", "chunk_t", "chunk_tokens",
    "input_tokens", "output_tokens", "status", "error", "error_detail",
    "stamp_uncertain", "stamp_uncert_s", "t_first_token", "t_first_answer", "reasoning_tokens", "answer_tokens",
    "loop", "reasoning_source",
]  # fmt: skip


def clock_offset() -> float:
    """Seconds to add to time.perf_counter() (CLOCK_MONOTONIC, shared by all processes) to get epoch time."""
    samples = []
    for _ in range(5):
        a = time.perf_counter()
        e = time.time()
        b = time.perf_counter()
        samples.append((b - a, e - (a + b) / 2))
    return min(samples)[1]


def build_record(
    raw: Any,
    *,
    scenario: str,
    point: str,
    worker: int,
    concurrency: int | None,
    rate: float | None,
    offset: float,
    loop: str | None = None,
) -> dict[str, Any]:
    """Parse one raw result (client.Raw or the tuple workers send) into a record row; never raises on what a
    server sent (anything unparseable becomes the record's error).

    stamp_uncertain: indices of chunks whose stamp may be late (delivered in one read with later events, see
    sse.Stream); stamp_uncert_s: the largest such lateness bound (0.0: every stamp exact). loop: "closed" or
    "open" (shapes.loop_of), the load loop that sent the request."""
    try:
        stream = parse_response(raw.reads) if raw.reads else None
    except Exception as exc:  # a parser defect must cost one request, not the load point
        stream = Stream(status=0)
        stream.fail("parse_error", f"{type(exc).__name__}: {exc}")
    error, detail = raw.error, raw.error_detail
    if stream is not None and error is None and stream.error is not None:
        error, detail = stream.error, stream.error_detail
    if stream is None and error is None:
        error, detail = "no_response", "the server sent nothing"

    def ep(t: float | None) -> float | None:
        return None if t is None else t + offset

    chunk_t = [t + offset for t in stream.chunk_t] if stream else []
    chunk_tokens = list(stream.chunk_tokens) if stream else []
    uncertain = list(stream.uncertain) if stream else []
    uncert_s = stream.uncert_s if stream else []
    bound: float | None = 0.0
    for i in uncertain:
        b: float | None = uncert_s[i]
        if b == float("inf"):  # no earlier read of the body: bounded by the send
            b = (chunk_t[i] - (raw.t_send + offset)) if raw.t_send is not None else None
        bound = None if b is None or bound is None else max(bound, b)
    first_tok = next((t for t, n in zip(chunk_t, chunk_tokens, strict=False) if n > 0), None)
    fa = stream.first_answer if stream else None
    out_tokens = None
    in_tokens = raw.input_tokens
    if stream is not None:
        out_tokens = stream.completion_tokens if stream.completion_tokens is not None else sum(chunk_tokens)
        if stream.prompt_tokens is not None:
            in_tokens = stream.prompt_tokens
    return {
        "scenario": scenario,
        "point": point,
        "request_id": raw.request_id,
        "worker": worker,
        "concurrency": concurrency,
        "rate": rate,
        "warmup": bool(raw.warmup),
        "t_sched": ep(raw.t_sched),
        "t_send": ep(raw.t_send),
        "t_first": chunk_t[0] if chunk_t else None,
        "t_end": ep(raw.t_end),
        "chunk_t": chunk_t,
        "chunk_tokens": chunk_tokens,
        "input_tokens": in_tokens,
        "output_tokens": out_tokens,
        "status": stream.status if stream else 0,
        "error": error,
        "error_detail": detail,
        "stamp_uncertain": uncertain,
        "stamp_uncert_s": bound,
        "t_first_token": first_tok,
        "t_first_answer": chunk_t[fa] if fa is not None else None,
        "reasoning_tokens": stream.reasoning_tokens if stream and chunk_t else None,
        "answer_tokens": stream.answer_tokens if stream and chunk_t else None,
        "loop": loop,
        "reasoning_source": stream.reasoning_source if stream else None,
    }


class RecordWriter:
    """Append-only JSON-lines writer; every record reaches the OS as it is written (a killed run keeps it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        os.write(self._fd, _dumps(record) + b"\n")
        self.count += 1

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read records; a torn last line (a killed writer) is skipped, any other bad line is an error."""
    p = Path(path)
    lines = p.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(
                f"{p}:{i + 1}: not a JSON record; the file is damaged (remove the line)"
            ) from None
    return out


def load_records(run_dir: str | Path, scenarios: list[str] | None = None) -> list[dict[str, Any]]:
    """All records under `run_dir/load/*/requests.jsonl` (optionally only some scenarios)."""
    out: list[dict[str, Any]] = []
    for f in sorted(Path(run_dir).glob("load/*/requests.jsonl")):
        if scenarios is None or f.parent.name in scenarios:
            out += read_jsonl(f)
    return out


def arrow_schema() -> pa.Schema:
    import pyarrow as pa

    fields: list[tuple[str, pa.DataType]] = [
        ("scenario", pa.string()), ("point", pa.string()), ("request_id", pa.string()), ("worker", pa.int32()),
        ("concurrency", pa.int64()), ("rate", pa.float64()), ("warmup", pa.bool_()),
        ("t_sched", pa.float64()), ("t_send", pa.float64()), ("t_first", pa.float64()), ("t_end", pa.float64()),
        ("chunk_t", pa.list_(pa.float64())), ("chunk_tokens", pa.list_(pa.int64())),
        ("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("status", pa.int32()),
        ("error", pa.string()), ("error_detail", pa.string()),
        ("stamp_uncertain", pa.list_(pa.int32())), ("stamp_uncert_s", pa.float64()), ("t_first_token", pa.float64()),
        ("t_first_answer", pa.float64()), ("reasoning_tokens", pa.int64()), ("answer_tokens", pa.int64()),
        ("loop", pa.string()), ("reasoning_source", pa.string()),
    ]  # fmt: skip
    return pa.schema(fields)


def write_parquet(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Write records to a new parquet file (refuses to replace an existing one)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(path)
    if p.exists():
        raise FileExistsError(f"{p} exists and results are never overwritten: write to a new run directory")
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in records], schema=arrow_schema())
    tmp = p.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, p)
    return p


def consolidate(run_dir: str | Path) -> Path:
    """Build `run_dir/requests.parquet` from every scenario's requests.jsonl."""
    return write_parquet(load_records(run_dir), Path(run_dir) / "requests.parquet")
