"""The batch engine on the tiny fixture model: byte-exact batch invariance on the CPU, failure isolation, segments,
bounds, OOM retry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voiceclone.engine import batching
from voiceclone.engine.engine import Engine, EngineSettings
from voiceclone.frontend.text import split_segments
from voiceclone.io.manifest import Row, resolve
from voiceclone.loading.load import load_model
from voiceclone.models.lm import CosyVoice3LM
from voiceclone.seeds import segment_seed

LONG_TEXT = " ".join(
    f"Sentence number {word} tells a slightly longer story about the weather, the trains and the river."
    for word in ("one", "two", "three", "four", "five", "six", "seven", "eight")
)
TARGETS = [
    "Yes.",
    "Good day.",
    "The quick brown fox.",
    "天气很好。",
    "It will rain later today.",
    "No.",
    "Call me at five.",
    "我们去散步吧。",
    "Fine, thanks.",
]


@pytest.fixture(scope="module")
def model(v3_model_dir: Path):
    return load_model(v3_model_dir, "cpu", torch.float32)


@pytest.fixture(scope="module")
def model_v2(v2_model_dir: Path):
    return load_model(v2_model_dir, "cpu", torch.float32)


@pytest.fixture(scope="module")
def prompts(v3_cases: Path) -> list[tuple[Path, str]]:
    return [
        (v3_cases / "prompt_en.wav", "The quick brown fox jumps over the lazy dog."),
        (v3_cases / "prompt_zh.wav", "今天天气很好，我们去散步。"),
    ]


def make_rows(prompts, targets: list[str]) -> list[Row]:
    return [Row(f"r{i}", *prompts[i % len(prompts)], target, seed=100 + 7 * i) for i, target in enumerate(targets)]


def run(model, rows, **settings) -> dict:
    return {r.id: r for r in Engine(model, EngineSettings(text_frontend=False, **settings)).run(resolve(rows, 0))}


@pytest.mark.parametrize("family", ["model", "model_v2"], ids=["cosyvoice3", "cosyvoice2"])
def test_batch_size_does_not_change_any_byte_on_the_cpu(family, prompts, request):
    """CosyVoice2 too: its vocoder's noise follows each row's generator, and padding never leaks through its
    non-causal convolutions."""
    model = request.getfixturevalue(family)
    rows = make_rows(prompts, TARGETS + TARGETS[:7])  # 16 rows
    runs = {bs: run(model, rows, batch_size=bs) for bs in (1, 8, 16)}
    runs[3] = run(model, rows, batch_size=3, window_rows=4)  # also: rows read in windows of 4
    base = runs[1]
    lengths = {len(r.speech_tokens) for r in base.values()}
    assert len(lengths) >= 4, f"rows should differ in length, got {sorted(lengths)}"
    for bs, results in runs.items():
        for row in rows:
            a, b = base[row.id], results[row.id]
            assert a.error is None and b.error is None
            assert b.speech_tokens == a.speech_tokens, f"batch {bs}, row {row.id}"
            assert b.wav.dtype == a.wav.dtype and b.wav.tobytes() == a.wav.tobytes(), f"batch {bs}, row {row.id}"


def test_token_budget_and_oom_split_keep_results(model, prompts, monkeypatch):
    rows = make_rows(prompts, TARGETS[:5])
    base = run(model, rows, batch_size=5)
    real_flow = model.flow.inference
    # the CPU runs the flow one segment per call; bucket it as on a GPU to exercise the split
    monkeypatch.setattr(
        batching, "flow_batches", lambda items, length, device, *rest: batching.buckets(items, length, *rest)
    )
    calls = []

    def flow_that_fits_one_row(tokens, *args):
        calls.append(len(tokens))
        if len(tokens) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_flow(tokens, *args)

    monkeypatch.setattr(model.flow, "inference", flow_that_fits_one_row)
    split = run(model, rows, batch_size=5, max_batch_tokens=400)
    assert max(calls) > 1 and calls.count(1) == len(rows)
    for row in rows:
        assert split[row.id].error is None
        assert split[row.id].speech_tokens == base[row.id].speech_tokens
        assert np.abs(split[row.id].wav - base[row.id].wav).max() <= 1e-4


def test_broken_prompt_fails_alone(model, prompts, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    rows = make_rows(prompts, TARGETS[:3])
    rows.insert(1, Row("bad", broken, "Hello there.", "Good day.", seed=5))
    results = run(model, rows, batch_size=4)
    assert set(results) == {"bad", "r0", "r1", "r2"}
    assert results["bad"].error and "broken.wav" in results["bad"].error and results["bad"].wav is None
    alone = run(model, [r for r in rows if r.id != "bad"], batch_size=4)
    for key in ("r0", "r1", "r2"):
        assert results[key].error is None
        assert results[key].speech_tokens == alone[key].speech_tokens


def test_long_text_is_split_into_segments(model, prompts, monkeypatch):
    tokenizer = model.tokenizer
    real_bounds = model.lm.generation_bounds
    monkeypatch.setattr(model.lm, "generation_bounds", lambda n: tuple(min(b, 24) for b in real_bounds(n)))
    pieces = split_segments(LONG_TEXT, tokenizer)
    assert len(pieces) >= 2
    (long_row,) = make_rows(prompts, [LONG_TEXT])
    first_only = Row("first", long_row.prompt_audio, long_row.prompt_text, pieces[0], long_row.seed)
    results = run(model, [long_row, first_only], batch_size=2)
    result, first = results["r0"], results["first"]
    assert result.error is None and result.segments == len(pieces)
    assert result.text_tokens == sum(len(tokenizer.encode(p)) for p in pieces)
    assert result.speech_tokens[: len(first.speech_tokens)] == first.speech_tokens
    assert np.abs(result.wav[: len(first.wav)] - first.wav).max() <= 1e-4
    assert len(result.wav) % 960 == 0 and len(result.wav) > len(first.wav)


def test_long_prompt_text_short_target_gives_short_clip(model, prompts):
    prompt_path, _ = prompts[0]
    long_prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 12)
    request = Row("short", prompt_path, long_prompt, "Yes.", seed=11)
    (result,) = run(model, [request], batch_size=1).values()
    n_target = len(model.tokenizer.encode("Yes."))
    assert result.prompt_text_tokens > 10 * n_target
    assert (result.min_tokens, result.max_tokens) == (2 * n_target, 20 * n_target)
    assert result.min_tokens <= len(result.speech_tokens) <= result.max_tokens
    assert result.duration <= result.max_tokens * 2 * 480 / 24000


def test_silent_token_rule_and_segment_seeds():
    silent, speech = 2241, 700
    tokens = [speech] + [silent] * 8 + [speech] + [1, 2, 28] + [speech]
    assert CosyVoice3LM.flow_tokens(tokens) == [speech] + [silent] * 5 + [speech, 1, 2, 28, speech]
    assert segment_seed(1234, 0) == 1234
    seeds = {segment_seed(1234, j) for j in range(5)}
    assert len(seeds) == 5 and all(0 <= s < 2**63 for s in seeds)


def test_text_frontend_and_unspeakable_rows(model, prompts):
    prompt_path, prompt_text = prompts[0]
    rows = [
        Row("digits", prompt_path, prompt_text, "I have 2 cats.", seed=3),
        Row("dots", prompt_path, prompt_text, "...", seed=4),
    ]
    results = {r.id: r for r in Engine(model, EngineSettings(batch_size=2, text_frontend=True)).run(resolve(rows, 0))}
    assert results["digits"].error is None
    assert results["digits"].text_tokens == len(model.tokenizer.encode("I have two cats."))
    assert results["dots"].error and "no tokens to speak" in results["dots"].error and results["dots"].wav is None
