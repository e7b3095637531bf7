"""HTTP/1.1 response framing and OpenAI server-sent-event parsing.

Two halves with different budgets:
- `Framer` runs in the client's hot path on every read: it only tracks where the response ends (head, chunked
  framing, content-length or close) without copying payload, so a read costs microseconds.
- `parse_response` runs later, off the hot path, on the raw `(time, bytes)` reads: it de-chunks the body, splits
  SSE events, gives each event the time of the read that completed it, and interprets OpenAI completion and chat
  chunks exactly as `vllm bench serve` does (a chunk with a non-empty `choices` list is a token chunk; TTFT is its
  first, ITL the gaps between them; a final `usage` chunk gives completion tokens).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

try:  # orjson parses a chunk ~4x faster; the results are identical
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER, _UNTIL_CLOSE, _DONE = range(7)


class FramingError(ValueError):
    """The bytes are not a valid HTTP/1.1 response."""


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise FramingError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise FramingError(f"bad status code in {lines[0][:80]!r}") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers


class Framer:
    """Incremental HTTP/1.1 response framing: `feed(data)` returns True once the response is complete."""

    __slots__ = ("state", "remaining", "pending", "status", "headers", "keep_alive")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.state = _HEAD
        self.remaining = 0
        self.pending = b""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = True

    def _start_body(self, head: bytes) -> None:
        self.status, self.headers = _parse_head(head)
        conn = self.headers.get("connection", "").lower()
        self.keep_alive = conn != "close" and not head.startswith(b"HTTP/1.0")
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self.state = _CHUNK_SIZE
        elif "content-length" in self.headers:
            self.state = _LENGTH
            self.remaining = int(self.headers["content-length"])
        elif self.status in (204, 304) or 100 <= self.status < 200:
            self.state = _DONE
        else:
            self.state = _UNTIL_CLOSE
            self.keep_alive = False

    def feed(self, data: bytes) -> bool:
        """Account for one read; True when the response is complete. Raises FramingError on garbage."""
        if self.pending:
            data, self.pending = self.pending + data, b""
        state = self.state
        pos = 0
        n = len(data)
        if state == _HEAD:
            i = data.find(b"\r\n\r\n")
            if i < 0:
                if n > 65536:
                    raise FramingError("response head longer than 64 KiB")
                self.pending = data
                return False
            self._start_body(data[:i])
            pos = i + 4
            state = self.state
            if state == _LENGTH and self.remaining <= n - pos:
                self.state = _DONE
                return True
            if state == _DONE:
                return True
        if state == _LENGTH:
            self.remaining -= n - pos
            if self.remaining <= 0:
                self.state = _DONE
                return True
            return False
        if state == _UNTIL_CLOSE or state == _DONE:
            return state == _DONE
        while pos < n:
            if state == _CHUNK_DATA:
                take = n - pos
                if take < self.remaining:
                    self.remaining -= take
                    self.state = state
                    return False
                pos += self.remaining
                self.remaining = 0
                state = _CHUNK_SIZE
                continue
            if state == _CHUNK_SIZE:
                j = data.find(b"\r\n", pos)
                if j < 0:
                    self.pending = data[pos:]
                    if len(self.pending) > 1024:
                        raise FramingError("chunk-size line longer than 1 KiB")
                    self.state = state
                    return False
                line = data[pos:j]
                semi = line.find(b";")
                try:
                    size = int(line if semi < 0 else line[:semi], 16)
                except ValueError:
                    raise FramingError(f"bad chunk-size line {line[:40]!r}") from None
                pos = j + 2
                if size == 0:
                    state = _TRAILER
                else:
                    self.remaining = size + 2
                    state = _CHUNK_DATA
                continue
            # _TRAILER: lines until an empty one
            if data.startswith(b"\r\n", pos):
                self.state = _DONE
                return True
            j = data.find(b"\r\n", pos)
            if j < 0:
                self.pending = data[pos:]
                self.state = state
                return False
            pos = j + 2
        self.state = state
        return False

    @property
    def done(self) -> bool:
        return self.state == _DONE

    @property
    def until_close(self) -> bool:
        return self.state == _UNTIL_CLOSE


# --- parse later ---------------------------------------------------------------------------------------------


@dataclass
class Body:
    """A de-chunked response: status, headers, body bytes and, per read, the body offset it ended at and its time."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    data: bytes = b""
    ends: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    complete: bool = False
    framing_error: str | None = None

    def time_at(self, offset: int) -> float:
        """Time of the read that delivered body byte `offset - 1` (the end of a span)."""
        i = bisect.bisect_left(self.ends, offset)
        return self.times[min(i, len(self.times) - 1)]


def dechunk(reads: list[tuple[float, bytes]]) -> Body:
    """Rebuild the body of a raw HTTP/1.1 response from its timed reads."""
    out = Body()
    raw = b"".join(d for _, d in reads)
    raw_ends: list[int] = []
    acc = 0
    for _, d in reads:
        acc += len(d)
        raw_ends.append(acc)
    raw_times = [t for t, _ in reads]
    i = raw.find(b"\r\n\r\n")
    if i < 0:
        out.framing_error = "no complete response head" if raw else None
        return out
    try:
        out.status, out.headers = _parse_head(raw[:i])
    except FramingError as exc:
        out.framing_error = str(exc)
        return out
    pos = i + 4
    pieces: list[bytes] = []
    body_ends: list[int] = []
    body_times: list[float] = []
    blen = 0

    def add(start: int, stop: int) -> None:
        # split [start, stop) of raw at read boundaries so every body byte keeps its read's time
        nonlocal blen
        k = bisect.bisect_right(raw_ends, start)
        while start < stop:
            end = min(stop, raw_ends[k])
            pieces.append(raw[start:end])
            blen += end - start
            if body_times and body_times[-1] == raw_times[k] and body_ends:
                body_ends[-1] = blen
            else:
                body_ends.append(blen)
                body_times.append(raw_times[k])
            start = end
            k += 1

    te = out.headers.get("transfer-encoding", "").lower()
    if "chunked" in te:
        n = len(raw)
        while True:
            j = raw.find(b"\r\n", pos)
            if j < 0:
                break
            line = raw[pos:j]
            semi = line.find(b";")
            try:
                size = int(line if semi < 0 else line[:semi], 16)
            except ValueError:
                out.framing_error = f"bad chunk-size line {line[:40]!r}"
                break
            pos = j + 2
            if size == 0:
                out.complete = raw.find(b"\r\n", pos) >= 0
                break
            stop = min(pos + size, n)
            add(pos, stop)
            if stop < pos + size:
                break
            pos += size + 2
    elif "content-length" in out.headers:
        length = int(out.headers["content-length"])
        stop = min(len(raw), pos + length)
        if stop > pos:
            add(pos, stop)
        out.complete = stop - pos == length
    else:
        if len(raw) > pos:
            add(pos, len(raw))
    out.data = b"".join(pieces)
    out.ends = body_ends
    out.times = body_times
    return out


_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")


@dataclass
class Stream:
    """An OpenAI streaming response, interpreted: token chunks with times, usage, and the first problem seen."""

    status: int = 0
    chunk_t: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = False
    finish_reason: str | None = None
    error: str | None = None
    error_detail: str | None = None
    text_chars: int = 0
    reasoning_chars: int = 0

    def fail(self, kind: str, detail: str) -> None:
        if self.error is None:
            self.error, self.error_detail = kind, detail[:500]


def iter_events(data: bytes) -> list[tuple[int, str, bytes]]:
    """Split an SSE body into complete events: (end offset, event name, data bytes). A trailing partial event
    (no blank line after it) is dropped."""
    events: list[tuple[int, str, bytes]] = []
    if b"\r" not in data:  # the common case: \n line endings
        pos = 0
        blocks = data.split(b"\n\n")
        for block in blocks[:-1]:
            pos += len(block) + 2
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append((pos, "message", block[6:]))
            elif block:
                ev = _event(block)
                if ev is not None:
                    events.append((pos, ev[0], ev[1]))
        return events
    start = 0
    for m in _EVENT_END.finditer(data):
        ev = _event(data[start : m.start()])
        start = m.end()
        if ev is not None:
            events.append((m.end(), ev[0], ev[1]))
    return events


def _event(block: bytes) -> tuple[str, bytes] | None:
    name = "message"
    lines = []
    for line in _LINE.split(block):
        if not line or line.startswith(b":"):
            continue
        key, sep, value = line.partition(b":")
        if not sep:
            key, value = line, b""
        if value.startswith(b" "):
            value = value[1:]
        if key == b"data":
            lines.append(value)
        elif key == b"event":
            name = value.decode("utf-8", "replace")
    return (name, b"\n".join(lines)) if lines else None


def _delta_text(choice: dict) -> tuple[int, int]:
    """(content chars, reasoning chars) of one completion or chat choice."""
    text = choice.get("text")
    if text is not None:
        return len(text), 0
    delta = choice.get("delta") or {}
    content = delta.get("content") or ""
    reasoning = delta.get("reasoning") or delta.get("reasoning_content") or ""
    return len(content), len(reasoning)


def interpret(body: Body) -> Stream:
    """Interpret a de-chunked body as an OpenAI completion/chat stream (or an error response)."""
    s = Stream(status=body.status)
    if body.framing_error:
        s.fail("bad_http", body.framing_error)
        return s
    ctype = body.headers.get("content-type", "")
    if body.status != 200:
        s.fail(f"http_{body.status}", body.data[:500].decode("utf-8", "replace"))
        return s
    if "text/event-stream" not in ctype:
        s.fail("not_a_stream", f"content-type {ctype!r}: {body.data[:300].decode('utf-8', 'replace')}")
        return s
    last_usage_out = 0
    ends, times = body.ends, body.times
    k, nreads = 0, len(ends)
    for end, name, data in iter_events(body.data):
        if data == b"[DONE]":
            s.done = True
            continue
        try:
            obj = _loads(data)
        except ValueError:
            s.fail("bad_json", f"non-JSON event: {data[:200].decode('utf-8', 'replace')}")
            continue
        if not isinstance(obj, dict):
            s.fail("bad_json", f"event is not an object: {data[:200].decode('utf-8', 'replace')}")
            continue
        if name == "error" or "error" in obj or obj.get("object") == "error":
            err = obj.get("error", obj)
            msg = err.get("message") if isinstance(err, dict) else str(err)
            s.fail("stream_error", str(msg or data[:300].decode("utf-8", "replace")))
            continue
        usage = obj.get("usage")
        choices = obj.get("choices")
        if choices:
            while k < nreads - 1 and ends[k] < end:  # events come in order: walk instead of bisecting
                k += 1
            t = times[k]
            c0 = choices[0] if isinstance(choices[0], dict) else {}
            nc, nr = _delta_text(c0)
            s.text_chars += nc
            s.reasoning_chars += nr
            if c0.get("finish_reason"):
                s.finish_reason = c0["finish_reason"]
            if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
                tokens = int(usage["completion_tokens"]) - last_usage_out
                last_usage_out = int(usage["completion_tokens"])
            else:
                tokens = 1 if (nc or nr or c0.get("token_ids")) else 0
            s.chunk_t.append(t)
            s.chunk_tokens.append(tokens)
        if isinstance(usage, dict):
            if usage.get("prompt_tokens") is not None:
                s.prompt_tokens = int(usage["prompt_tokens"])
            if usage.get("completion_tokens") is not None:
                s.completion_tokens = int(usage["completion_tokens"])
    if s.error is None:
        if not s.chunk_t:
            s.fail("no_output", "the stream ended without a chunk carrying choices")
        elif not s.done:
            s.fail("incomplete", "the stream ended without data: [DONE]")
    return s


def parse_response(reads: list[tuple[float, bytes]]) -> Stream:
    """Raw timed reads of one HTTP response -> the interpreted stream."""
    return interpret(dechunk(reads))
