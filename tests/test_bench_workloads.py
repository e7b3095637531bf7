"""Workloads built with the served model's tokenizer: exact input lengths, forced outputs, seeded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from r1lab.bench.workloads import ModelTokenizer, WorkloadError, build_workload, sample_lengths
from r1lab.config import Distribution
from r1lab.tinymodel import write_tiny_model


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return ModelTokenizer(write_tiny_model(tmp_path_factory.mktemp("tiny")))


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_input_lengths_are_exact_as_the_server_counts_them(tok, api):
    lengths = Distribution(kind="uniform", min=20, max=900)
    wl = build_workload(tok, n=12, input_tokens=lengths, output_tokens=64, model="tiny", api=api, seed=5)
    count = tok.count_chat if api == "chat" else tok.count_completion
    assert [count(r.prompt) for r in wl] == [r.input_tokens for r in wl]
    assert len({r.input_tokens for r in wl}) > 6
    body = json.loads(wl[0].body)
    assert body["stream"] and body["max_tokens"] == body["min_tokens"] == 64 and body["ignore_eos"]
    assert body["stream_options"] == {"include_usage": True}
    assert ("messages" in body) == (api == "chat")


def test_chat_count_includes_r1_template(tok):
    rendered = tok.render_chat("hello")
    assert rendered.startswith("<｜begin▁of▁sentence｜><｜User｜>hello<｜Assistant｜>")
    assert tok.count_chat("hello") == len(tok.tok.encode(rendered, add_special_tokens=False).ids)


def test_seeded_and_long_context(tok):
    a = build_workload(tok, n=3, input_tokens=300, output_tokens=8, model="m", seed=1)
    b = build_workload(tok, n=3, input_tokens=300, output_tokens=8, model="m", seed=1)
    c = build_workload(tok, n=3, input_tokens=300, output_tokens=8, model="m", seed=2)
    assert [r.body for r in a] == [r.body for r in b] != [r.body for r in c]
    long = build_workload(
        tok, n=1, input_tokens=32768, output_tokens=8, model="m", seed=3, force_output=False
    )
    assert tok.count_completion(long[0].prompt) == 32768
    assert "ignore_eos" not in json.loads(long[0].body)


def test_lengths_and_errors(tok):
    rng = np.random.default_rng(0)
    assert sample_lengths(7, 3, rng) == [7, 7, 7]
    n = sample_lengths(Distribution(kind="normal", mean=100, std=10), 2000, rng)
    assert abs(np.mean(n) - 100) < 1.5 and min(n) >= 1
    with pytest.raises(WorkloadError, match="overhead"):
        build_workload(tok, n=1, input_tokens=3, output_tokens=8, model="m", api="chat")
    with pytest.raises(WorkloadError, match="tokenizer.json"):
        ModelTokenizer("/nonexistent-model-dir")
