"""One static decoder per run, CUDA-graph bookkeeping through the `engine.cuda` seam, and the out-of-memory split, on
the demo model: every row equals its batch-1 result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voiceclone.engine import cuda
from voiceclone.engine.decoding import KV_BUCKET
from voiceclone.engine.engine import Engine, EngineSettings
from voiceclone.io.manifest import Row, resolve
from voiceclone.loading.load import load_model, resolve_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "prompts"
PROMPTS = [
    (EXAMPLES / "canoe_44k.wav", "The birch canoe slid on the smooth planks."),
    (EXAMPLES / "stella_16k.wav", "Please call Stella and ask her to bring these things with her from the store."),
]
SENTENCE = "the river runs past the old mill and the green hills toward a quiet town by the sea"
WORDS = SENTENCE.split(" ")


@pytest.fixture(scope="module")
def demo():
    return load_model(resolve_model("demo"), "cpu", torch.float32)


def rows(n: int) -> list[Row]:
    """`n` rows of 1 to 12 words (the longest first), two prompts, fixed seeds."""
    sizes = [12] + [1 + (7 * i) % 11 for i in range(1, n)]
    texts = [" ".join(WORDS[:k]).capitalize() + "." for k in sizes]
    return resolve([Row(f"r{i:02d}", *PROMPTS[i % 2], text, seed=500 + i) for i, text in enumerate(texts)], 0)


def run(model, requests, **settings) -> tuple[dict, Engine]:
    engine = Engine(model, EngineSettings(text_frontend=False, **settings))
    results = {r.id: r for r in engine.run(requests)}
    return results, engine


def assert_same(results: dict, base: dict) -> None:
    assert results.keys() == base.keys()
    for key, a in base.items():
        b = results[key]
        assert a.error is None and b.error is None, (key, a.error, b.error)
        assert b.speech_tokens == a.speech_tokens, key
        assert b.wav.shape == a.wav.shape and np.abs(b.wav - a.wav).max() <= 1e-4, key


@pytest.fixture(scope="module")
def batch1(demo):
    return run(demo, rows(40), batch_size=1)[0]


class EagerGraph:
    """A stand-in CUDA graph on the CPU: `replay()` reruns the captured step into its output buffer."""

    def __init__(self, step, output):
        self.step, self.output = step, output

    def replay(self) -> None:
        self.output.copy_(self.step())


def test_one_cache_per_run_and_graphs_captured_once_per_key_length(demo, batch1, monkeypatch):
    captured = []

    def capture(step):
        output = step()
        captured.append(output.shape)
        return EagerGraph(step, output), output

    monkeypatch.setattr(cuda, "graphs_enabled", lambda device: True)  # would-capture on the CPU
    monkeypatch.setattr(cuda, "capture_graph", capture)
    results, engine = run(demo, rows(40), batch_size=8, window_rows=12)  # LLM calls of 12, 12, 12 and 4 rows
    assert_same(results, batch1)  # graph replays step every slot; idle ones change nothing
    lengths = {len(r.speech_tokens) for r in results.values()}
    assert len(lengths) >= 8, f"rows should differ in length, got {sorted(lengths)}"
    decoder = engine.tokens.decoder
    assert engine.stats["kv_cache_allocations"] == 1
    assert engine.stats["decode_graph_captures"] == len(captured) == len(decoder.graphs) >= 2  # once per key length
    assert len(decoder.graphs) <= decoder.cache.max_seq // KV_BUCKET
    assert all(shape[0] == 8 for shape in captured)  # every graph steps all 8 slots


def test_a_longer_row_later_grows_the_cache_once(demo, batch1):
    long_text = " ".join(WORDS * 2).capitalize() + "."  # ~700 tokens allowed: a longer power of two than the rest
    long_row = resolve([Row("long", *PROMPTS[0], long_text, seed=9)], 0)
    later = rows(40)[1:13] + long_row + rows(40)[13:17]  # windows of 8: the long row comes in the second
    results, engine = run(demo, later, batch_size=8, window_rows=8)
    assert results["long"].error is None
    assert_same(
        {k: v for k, v in results.items() if k != "long"}, {r.id: batch1[r.id] for r in later[:12] + later[13:]}
    )
    assert engine.stats["kv_cache_allocations"] == 2


def test_out_of_memory_above_a_chosen_batch_size_splits_every_stage(demo, batch1, monkeypatch):
    limit = {"llm": 3, "flow": 3, "hift": 1}  # CPU vocoder batches are small already
    seen: dict[str, list[int]] = {stage: [] for stage in limit}

    def fits(stage: str, real):
        def call(batch, *args, **kwargs):
            seen[stage].append(len(batch))
            if len(batch) > limit[stage]:
                raise torch.OutOfMemoryError(f"CUDA out of memory at {len(batch)} rows (stand-in)")
            return real(batch, *args, **kwargs)

        return call

    engine = Engine(demo, EngineSettings(text_frontend=False, batch_size=8))
    monkeypatch.setattr(engine.tokens, "generate", fits("llm", engine.tokens.generate))
    monkeypatch.setattr(demo.flow, "inference", fits("flow", demo.flow.inference))
    monkeypatch.setattr(demo.hift, "inference", fits("hift", demo.hift.inference))
    subset = rows(40)[:12]
    results = {r.id: r for r in engine.run(subset)}
    assert_same(results, {r.id: batch1[r.id] for r in subset})
    assert max(seen["llm"]) > limit["llm"]
    for stage, sizes in seen.items():  # a stage that got more rows than fit was retried in smaller batches
        assert max(sizes) <= limit[stage] or any(0 < n <= limit[stage] for n in sizes), stage


def test_an_asynchronous_error_at_synchronize_lands_on_its_batch(demo, batch1, monkeypatch):
    calls = []

    def synchronize(device):
        calls.append(device)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (reported at synchronize, stand-in)")

    monkeypatch.setattr(cuda, "synchronize", synchronize)
    subset = rows(40)[:6]
    results, _ = run(demo, subset, batch_size=6)
    assert_same(results, {r.id: batch1[r.id] for r in subset})
    assert len(calls) > 3  # the first LLM batch failed there, was halved and retried
