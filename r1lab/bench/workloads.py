"""Workloads built offline with the served model's own tokenizer, so every prompt is exactly its input length.

Prompts are random token sequences decoded to text and corrected until the server's tokenization (BOS added for
completions; the chat template rendered for chat) gives exactly the target count: input lengths are exact, not
estimated, up to 128K-token contexts. Outputs are forced to their length with `ignore_eos` + `min_tokens`
(vLLM's sampling extensions). Same seed, same workload.

Workloads that share prefixes (what a prefix cache and Dynamo's KV-aware router exist for): `build_shared_prefix`
(groups of requests behind one long common prefix) and `conversation_plan` (multi-turn conversations whose turns
carry the answers the server really streamed; run by the workers). Trace replay lives in `traces`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import jinja2

from r1lab.bench.client import completion_body


class WorkloadError(ValueError):
    """A workload that cannot be built as asked (names the setting and the fix)."""


@dataclass(frozen=True)
class Request:
    """One request of a workload: the prompt, its exact input tokens, the forced output tokens, the JSON body."""

    prompt: str
    input_tokens: int
    output_tokens: int
    body: bytes


class ModelTokenizer:
    """The served model's tokenizer (tokenizer.json + tokenizer_config.json of a model dir), counting tokens the
    way the server does for completions (special tokens added) and chat (template rendered, then encoded)."""

    def __init__(self, model_dir: str | Path) -> None:
        from tokenizers import Tokenizer

        d = Path(model_dir)
        tj = d / "tokenizer.json"
        if not tj.exists():
            raise WorkloadError(
                f"{tj}: no tokenizer.json in the model dir; point model_dir at the served model"
            )
        self.tok = Tokenizer.from_file(str(tj))
        cfg_path = d / "tokenizer_config.json"
        self.config: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        self._template: jinja2.Template | None = None
        special = {t.content for t in self.tok.get_added_tokens_decoder().values() if t.special}
        vocab = self.tok.get_vocab(with_added_tokens=True)
        added = set(self.tok.get_added_tokens_decoder())
        self.sample_ids = np.array(
            sorted(i for t, i in vocab.items() if i not in added and t not in special), dtype=np.int64
        )

    def count_completion(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=True).ids)

    def render_chat(self, text: str) -> str:
        if self._template is None:
            tmpl = self.config.get("chat_template")
            if not tmpl:
                raise WorkloadError("tokenizer_config.json has no chat_template: use endpoint 'completions'")
            import jinja2

            env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
            self._template = env.from_string(tmpl)
        tokens = {k: _token_str(self.config.get(k)) for k in ("bos_token", "eos_token")}
        return self._template.render(
            messages=[{"role": "user", "content": text}], add_generation_prompt=True, **tokens
        )

    def count_chat(self, text: str) -> int:
        return len(self.tok.encode(self.render_chat(text), add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def _token_str(v: Any) -> str:
    if isinstance(v, dict):
        return v.get("content", "")
    return v or ""


def exact_prompt(tok: ModelTokenizer, length: int, rng: np.random.Generator, api: str = "completions") -> str:
    """A random prompt that the server tokenizes to exactly `length` tokens."""
    count = tok.count_chat if api == "chat" else tok.count_completion
    overhead = count("")
    if length <= overhead:
        raise WorkloadError(
            f"input length {length} is not above the {api} overhead of {overhead} tokens "
            f"(BOS/chat template): raise input_tokens"
        )
    ids = list(rng.choice(tok.sample_ids, size=length - overhead))
    for _ in range(30):
        text = tok.decode(ids)
        n = count(text)
        if n == length:
            return text
        if n > length:
            ids = ids[: max(1, len(ids) - (n - length))]
        else:
            ids += list(rng.choice(tok.sample_ids, size=length - n))
    for trim in range(1, 64):  # rare: merges at the cut keep overshooting; trim characters instead
        if count(text[:-trim]) == length:
            return text[:-trim]
    raise WorkloadError(f"could not build a prompt of exactly {length} tokens; try another seed")


def fit_tail(
    tok: ModelTokenizer,
    head: str,
    tail: list[int],
    length: int,
    rng: np.random.Generator,
    api: str = "completions",
) -> str:
    """`head` + a tail (from token ids `tail`, trimmed or extended) that the server tokenizes to exactly `length`
    tokens: `head` is kept byte for byte."""
    count = tok.count_chat if api == "chat" else tok.count_completion
    ids = list(tail)
    text = head + tok.decode(ids)
    for _ in range(30):
        text = head + tok.decode(ids)
        n = count(text)
        if n == length:
            return text
        if n > length:
            if not ids:
                break
            ids = ids[: max(0, len(ids) - (n - length))]
        else:
            ids += list(rng.choice(tok.sample_ids, size=length - n))
    for trim in range(1, 64):
        if len(text) - trim > len(head) and count(text[:-trim]) == length:
            return text[:-trim]
    raise WorkloadError(
        f"could not build a prompt of exactly {length} tokens after a fixed head; try another seed"
    )


def server_ids(tok: ModelTokenizer, text: str, api: str = "completions") -> list[int]:
    """The token ids the server prefills for `text` (completions: BOS added; chat: the template rendered)."""
    if api == "chat":
        return tok.tok.encode(tok.render_chat(text), add_special_tokens=False).ids
    return tok.tok.encode(text, add_special_tokens=True).ids


def head_tokens(tok: ModelTokenizer, api: str = "completions") -> int:
    """Tokens the server puts before the user's text (BOS; for chat, the template's head)."""
    if api != "chat":
        return tok.count_completion("")
    mark = "R1LAB-MARK-7f3a"
    head = tok.render_chat(mark).split(mark)[0]
    return len(tok.tok.encode(head, add_special_tokens=False).ids)


def _plain_text(tok: ModelTokenizer, n: int, rng: np.random.Generator) -> str:
    """Random text that encodes (no special tokens) to exactly n tokens."""
    ids = list(rng.choice(tok.sample_ids, size=n))
    for _ in range(30):
        text = tok.decode(ids)
        m = len(tok.tok.encode(text, add_special_tokens=False).ids)
        if m == n:
            return text
        ids = ids[: len(ids) - (m - n)] if m > n else ids + list(rng.choice(tok.sample_ids, size=n - m))
    raise WorkloadError(f"could not build a text of exactly {n} tokens; try another seed")


def build_shared_prefix(
    tok: ModelTokenizer, *, n: int, groups: int, prefix_tokens: int, suffix_tokens: int, output_tokens: Any,
    model: str, api: str = "completions", seed: int = 0, force_output: bool = True,
) -> list[Request]:  # fmt: skip
    """`n` requests in `groups` groups (request i in group i % groups): every request of a group starts with the
    group's prefix of `prefix_tokens` tokens, then its own suffix of `suffix_tokens` tokens. As the server
    tokenizes them, two prompts of a group share exactly head_tokens + prefix_tokens leading tokens (the head:
    BOS, and for chat the template's head) and prompts of different groups share only the head; every input is
    exactly head + prefix + suffix (+ chat template tail) tokens."""
    if groups < 1 or prefix_tokens < 1 or suffix_tokens < 1:
        raise WorkloadError("shared_prefix: groups, prefix_tokens and suffix_tokens must all be >= 1")
    rng = np.random.default_rng(seed)
    head = head_tokens(tok, api)
    outs = sample_lengths(output_tokens, n, rng)
    prefixes = [_plain_text(tok, prefix_tokens, rng) for _ in range(groups)]
    want = (tok.count_chat("") if api == "chat" else tok.count_completion("")) + prefix_tokens + suffix_tokens
    pids = [server_ids(tok, p, api)[: head + prefix_tokens] for p in prefixes]
    firsts: list[set[int]] = [set() for _ in range(groups)]
    out = []
    for i in range(n):
        g = i % groups
        for _ in range(50):
            prompt = prefixes[g] + _plain_text(tok, suffix_tokens, rng)
            ids = server_ids(tok, prompt, api)
            k = head + prefix_tokens
            if len(ids) == want and ids[:k] == pids[g] and ids[k] not in firsts[g]:
                firsts[g].add(ids[k])
                break
        else:
            raise WorkloadError(
                f"shared_prefix: could not keep the prefix boundary of group {g} exact; try another seed"
            )
        body = completion_body(model, api, prompt, outs[i], force_output=force_output)
        out.append(Request(prompt, want, outs[i], body))
    return out


def conversation_plan(
    tok: ModelTokenizer, *, conversations: int, turns: int, user_tokens: int, output_tokens: Any, model: str,
    api: str = "completions", seed: int = 0, force_output: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """Multi-turn conversations for the workers (`loadgen.run_point(conversations=...)`): per conversation its
    user messages (`user_tokens` tokens each; the first turn's input is exact), the forced output length per turn,
    and the global request index of its first turn. Turn j's prompt is every earlier message and the answer text
    the server streamed for it, then message j (workers.turn_body), so later inputs are counted by the server."""
    if conversations < 1 or turns < 1 or user_tokens < 1:
        raise WorkloadError("multi_turn: conversations, turns and user_tokens must all be >= 1")
    rng = np.random.default_rng(seed)
    overhead = tok.count_chat("") if api == "chat" else tok.count_completion("")
    plan = []
    for c in range(conversations):
        first = exact_prompt(tok, overhead + user_tokens, rng, api)
        rest = [_plain_text(tok, user_tokens, rng) for _ in range(turns - 1)]
        plan.append({"id": c, "first_k": c * turns, "model": model, "api": api, "force_output": force_output,
                     "user": [first, *rest], "max_tokens": sample_lengths(output_tokens, turns, rng),
                     "input_tokens": [overhead + user_tokens] + [None] * (turns - 1)})  # fmt: skip
    return plan


def sample_lengths(spec: Any, n: int, rng: np.random.Generator) -> list[int]:
    """n lengths from an int or a config Distribution (fixed / uniform [min, max] / normal(mean, std) >= 1)."""
    if isinstance(spec, int):
        return [spec] * n
    if spec.kind == "fixed":
        return [int(spec.value)] * n
    if spec.kind == "uniform":
        return [int(x) for x in rng.integers(spec.min, spec.max + 1, size=n)]
    return [max(1, int(round(x))) for x in rng.normal(spec.mean, spec.std, size=n)]


def build_workload(
    model_dir: str | Path | ModelTokenizer,
    *,
    n: int,
    input_tokens: Any,
    output_tokens: Any,
    model: str,
    api: str = "completions",
    seed: int = 0,
    force_output: bool = True,
    extra: dict | None = None,
) -> list[Request]:
    """`n` requests with exact input lengths and forced output lengths (ints or Distributions), seeded."""
    if api not in ("completions", "chat"):
        raise WorkloadError(f"api must be 'completions' or 'chat', got {api!r}")
    tok = model_dir if isinstance(model_dir, ModelTokenizer) else ModelTokenizer(model_dir)
    rng = np.random.default_rng(seed)
    ins = sample_lengths(input_tokens, n, rng)
    outs = sample_lengths(output_tokens, n, rng)
    out = []
    for i_len, o_len in zip(ins, outs, strict=True):
        prompt = exact_prompt(tok, i_len, rng, api)
        body = completion_body(model, api, prompt, o_len, force_output=force_output, extra=extra)
        out.append(Request(prompt, i_len, o_len, body))
    return out


def bodies(workload: list[Request]) -> list[tuple[bytes, int]]:
    """What the load generator sends: (JSON body, input tokens) per request."""
    return [(r.body, r.input_tokens) for r in workload]


def write_workload(path: str | Path, workload: list[Request] | list[tuple[bytes, int]]) -> Path:
    """A workload as JSON lines (what the locustfile and the remote generator read): {"body": JSON text,
    "input_tokens": n}."""
    p = Path(path)
    with p.open("w") as f:
        for r in workload:
            body, n = (r.body, r.input_tokens) if isinstance(r, Request) else r
            f.write(json.dumps({"body": body.decode(), "input_tokens": n}) + "\n")
    return p


def read_workload(path: str | Path) -> list[tuple[bytes, int]]:
    """The (JSON body, input tokens) pairs of a file `write_workload` wrote."""
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                out.append((d["body"].encode(), int(d["input_tokens"])))
    return out
