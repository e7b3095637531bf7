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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_loads: Callable[[bytes | str], Any]
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
            if i > 65536:
                raise FramingError("response head longer than 64 KiB")
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
    head_t: float | None = None  # time of the read that ended the response head

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
    if i > 65536:
        out.framing_error = "response head longer than 64 KiB"
        return out
    try:
        out.status, out.headers = _parse_head(raw[:i])
    except FramingError as exc:
        out.framing_error = str(exc)
        return out
    pos = i + 4
    out.head_t = raw_times[bisect.bisect_right(raw_ends, i + 3)]
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
    """An OpenAI streaming response, interpreted: token chunks with times, usage, and the first problem seen.

    Stamp certainty: a read's time is exact for the bytes that ended it (the kernel's stamp is the newest segment's
    arrival). A token chunk followed in the same read by another chunk carrying tokens (several token events
    delivered together: a client that read late, or one receive stamp shared by reads) arrived at or before its
    stamp, no earlier than the previous read: `uncertain` lists those chunks, `uncert_s[i]` bounds how late the
    stamp may be. Events that carry no tokens are taken as written with their neighbour (a role chunk right
    before the first token, the usage chunk and [DONE] right after the last: vLLM and Dynamo write them so).
    """

    status: int = 0
    chunk_t: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reasoning_tokens_reported: int | None = None
    done: bool = False
    finish_reason: str | None = None
    error: str | None = None
    error_detail: str | None = None
    text_chars: int = 0
    reasoning_chars: int = 0
    uncertain: list[int] = field(default_factory=list)
    uncert_s: list[float | None] = field(default_factory=list)
    chunk_reasoning: list[bool] = field(default_factory=list)
    first_answer: int | None = None
    reasoning_source: str | None = None  # "server": reasoning fields; "inline": text up to </think>
    think_end: int | None = None  # the chunk whose text carried </think> (no reasoning field in the stream)

    def fail(self, kind: str, detail: str) -> None:
        if self.error is None:
            self.error, self.error_detail = kind, detail[:500]

    @property
    def reasoning_tokens(self) -> int:
        """Tokens in chunks that carried reasoning (`delta.reasoning` / `reasoning_content`)."""
        return sum(n for n, r in zip(self.chunk_tokens, self.chunk_reasoning, strict=False) if r)

    @property
    def answer_tokens(self) -> int:
        return sum(n for n, r in zip(self.chunk_tokens, self.chunk_reasoning, strict=False) if not r)


THINK_END = "</think>"


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


class ShapeError(ValueError):
    """A well-formed JSON event of a shape no OpenAI server sends."""


def _str(v: object, what: str) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise ShapeError(f"{what} is {type(v).__name__}, not a string")
    return v


def _delta_text(choice: dict) -> tuple[str, str]:
    """(content, reasoning) of one completion or chat choice."""
    if "text" in choice:
        return _str(choice["text"], "choices[0].text"), ""
    delta = choice.get("delta")
    if delta is None:
        delta = choice.get("message") or {}
    if not isinstance(delta, dict):
        raise ShapeError(f"choices[0].delta is {type(delta).__name__}, not an object")
    content = _str(delta.get("content"), "delta.content")
    reasoning = _str(delta.get("reasoning_content"), "delta.reasoning_content") or _str(
        delta.get("reasoning"), "delta.reasoning"
    )
    return content, reasoning


def _count(v: object, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ShapeError(f"{what} is {v!r}, not a token count")
    return v


def interpret(body: Body) -> Stream:
    """Interpret a de-chunked body as an OpenAI completion/chat stream (or an error response). Any event of an
    unexpected shape makes the stream an error (`bad_shape`), never an exception."""
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
    ends = body.ends
    state = {"last_usage_out": 0, "k": 0}
    reads_of: list[int] = []
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
        try:
            k = _event_into(s, obj, name, end, ends, state)
        except (ShapeError, TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
            s.fail("bad_shape", f"{exc}: {data[:200].decode('utf-8', 'replace')}")
            continue
        if k is not None:
            reads_of.append(k)
    _certainty(s, reads_of, body)
    _inline_reasoning(s)
    if s.error is None:
        if not s.chunk_t:
            s.fail("no_output", "the stream ended without a chunk carrying choices")
        elif not s.done:
            s.fail("incomplete", "the stream ended without data: [DONE]")
    return s


def _event_into(s: Stream, obj: dict, name: str, end: int, ends: list[int], state: dict) -> int | None:
    """Fold one JSON event into `s`; the index of the read that completed it when it is a token chunk."""
    if name == "error" or "error" in obj or obj.get("object") == "error":
        err = obj.get("error", obj)
        msg = err.get("message") if isinstance(err, dict) else str(err)
        s.fail("stream_error", str(msg or obj)[:300])
        return None
    usage = obj.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise ShapeError(f"usage is {type(usage).__name__}, not an object")
    usage = usage or {}
    choices = obj.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise ShapeError(f"choices is {type(choices).__name__}, not a list")
    out_tok = _count(usage["completion_tokens"], "usage.completion_tokens") if usage.get(
        "completion_tokens") is not None else None  # fmt: skip
    in_tok = _count(usage["prompt_tokens"], "usage.prompt_tokens") if usage.get(
        "prompt_tokens") is not None else None  # fmt: skip
    k = None
    if choices:
        c0 = choices[0]
        if not isinstance(c0, dict):
            raise ShapeError(f"choices[0] is {type(c0).__name__}, not an object")
        content, reasoning = _delta_text(c0)
        nc, nr = len(content), len(reasoning)
        if nr:
            s.reasoning_source = "server"
        elif s.think_end is None and THINK_END in content:
            s.think_end = len(s.chunk_t)  # this chunk's index (appended below)
        fr = c0.get("finish_reason")
        if fr is not None and not isinstance(fr, str):
            raise ShapeError(f"finish_reason is {fr!r}, not a string")
        if out_tok is not None:
            tokens = out_tok - state["last_usage_out"]
            state["last_usage_out"] = out_tok
        else:
            tokens = 1 if (nc or nr or c0.get("token_ids")) else 0
        k = state["k"]
        nreads = len(ends)
        while k < nreads - 1 and ends[k] < end:  # events come in order: walk instead of bisecting
            k += 1
        state["k"] = k
        s.text_chars += nc
        s.reasoning_chars += nr
        if fr:
            s.finish_reason = fr
        s.chunk_t.append(0.0)  # the read's time, set by _certainty
        s.chunk_tokens.append(tokens)
        s.chunk_reasoning.append(nr > 0 and nc == 0)
        if nc and s.first_answer is None:
            s.first_answer = len(s.chunk_t) - 1
        s.uncert_s.append(0.0)  # decided by _certainty once every event of the read is known
    if in_tok is not None:
        s.prompt_tokens = in_tok
    if out_tok is not None:
        s.completion_tokens = out_tok
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        s.reasoning_tokens_reported = details["reasoning_tokens"]
    return k


def _inline_reasoning(s: Stream) -> None:
    """A server without a reasoning parser (vLLM without --reasoning-parser, Dynamo's mocker with --reasoning)
    streams the reasoning phase in the answer text, closed by `</think>` (R1's template opens `<think>` in the
    prompt, or the engine emits it first): the chunks up to and with `</think>` are reasoning, the first
    answer is the next chunk with text. Used only when the stream carried no reasoning field."""
    if s.reasoning_source is not None or s.think_end is None:
        return
    e = s.think_end
    s.reasoning_source = "inline"
    for i in range(e + 1):
        s.chunk_reasoning[i] = True
    s.first_answer = next((i for i in range(e + 1, len(s.chunk_t)) if s.chunk_tokens[i] > 0), None)


def _certainty(s: Stream, reads_of: list[int], body: Body) -> None:
    """Times of the token chunks, and which of them are late-biased (see Stream)."""
    times = body.times
    n = len(reads_of)
    later = 0  # chunks with tokens after i in the same read
    for i in range(n - 1, -1, -1):
        k = reads_of[i]
        s.chunk_t[i] = times[k]
        if i + 1 < n and reads_of[i + 1] != k:
            later = 0
        exact = later == 0 or (later == 1 and s.chunk_tokens[i] == 0 and s.chunk_tokens[i + 1] > 0)
        if s.chunk_tokens[i] > 0:
            later += 1
        if exact:
            s.uncert_s[i] = 0.0
            continue
        prev = times[k - 1] if k > 0 else body.head_t
        s.uncert_s[i] = (times[k] - prev) if prev is not None and prev < times[k] else float("inf")
        s.uncertain.append(i)
    s.uncertain.reverse()


def parse_response(reads: list[tuple[float, bytes]]) -> Stream:
    """Raw timed reads of one HTTP response -> the interpreted stream."""
    return interpret(dechunk(reads))


def answer_text(reads: list[tuple[float, bytes]]) -> str:
    """The answer text a streamed response carried (completions `text`, chat `delta.content`; reasoning left
    out, in its own field or inline up to `</think>`, as a chat client keeps only the answer in the history): what
    a multi-turn conversation appends."""
    body = dechunk(reads)
    parts: list[str] = []
    for _, _, data in iter_events(body.data):
        if data == b"[DONE]":
            continue
        try:
            obj = _loads(data)
        except ValueError:
            continue
        choices = obj.get("choices") if isinstance(obj, dict) else None
        if not choices or not isinstance(choices[0], dict):
            continue
        c0 = choices[0]
        if isinstance(c0.get("text"), str):
            parts.append(c0["text"])
            continue
        delta = c0.get("delta") or {}
        if isinstance(delta, dict) and isinstance(delta.get("content"), str):
            parts.append(delta["content"])
    text = "".join(parts)
    # reasoning streamed inline (no server parser): the answer is what follows </think>, as R1's template keeps
    return text.split(THINK_END, 1)[1] if THINK_END in text else text
