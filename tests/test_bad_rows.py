"""Bad rows that used to pass or fail late (issue 9): non-finite stage outputs, broken ONNX files, odd weight dtypes,
segments too long for the flow's noise table."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.engine.engine import Engine, EngineSettings, segment_token_limit
from voiceclone.frontend.text import Tokenizer, max_segment_tokens, split_segments
from voiceclone.io.manifest import Row, resolve
from voiceclone.loading.config import read_config
from voiceclone.loading.load import load_model

REPO = Path(__file__).resolve().parents[1]
PROMPT = REPO / "examples" / "prompts" / "stella_16k.wav"


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


# ---- NaN / inf in any stage fails the row, naming the stage; reports stay strict JSON --------------------------------


def strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny_model(v3_model_dir: Path):
    return load_model(v3_model_dir, "cpu", torch.float32)


@pytest.mark.parametrize(
    ("network", "parameter", "value", "message"),
    [
        ("lm", "llm_decoder.weight", float("nan"), "the LLM's logits hold NaN or infinite values"),
        ("lm", "llm.norm.weight", float("inf"), "the LLM's logits hold NaN or infinite values"),
        ("flow", "estimator.proj_out.weight", float("nan"), "the flow's mel holds NaN or infinite values"),
        ("hift", "conv_pre.weight", float("nan"), "the vocoder's waveform holds NaN or infinite values"),
    ],
)
def test_a_nonfinite_stage_output_fails_the_row_naming_the_stage(
    tiny_model, v3_cases: Path, network: str, parameter: str, value: float, message: str
):
    rows = [
        Row(f"r{i}", v3_cases / "prompt_en.wav", "Hello there.", text, seed=i) for i, text in enumerate(["Yes.", "No."])
    ]
    weight = dict(getattr(tiny_model, network).named_parameters())[parameter]
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.fill_(value)
        results = list(Engine(tiny_model, EngineSettings(text_frontend=False)).run(resolve(rows, 0)))
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert [(r.id, r.error, r.wav) for r in sorted(results, key=lambda r: r.id)] == [
        ("r0", message, None),
        ("r1", message, None),
    ]


def test_nan_weights_fail_every_row_and_the_reports_stay_strict_json(tmp_path: Path, v3_model_dir: Path):
    model = tmp_path / "model"
    shutil.copytree(v3_model_dir, model)
    (model / "flow.pt").chmod(0o644)
    state = torch.load(model / "flow.pt", weights_only=True)
    state["spk_embed_affine_layer.bias"] = torch.full_like(state["spk_embed_affine_layer.bias"], float("nan"))
    torch.save(state, model / "flow.pt")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,prompt_audio,prompt_text,target_text\nr1,{PROMPT},Hi.,Good day.\n")
    out = tmp_path / "o"
    result = invoke("synth", manifest, "--model", model, "--out", out, "--quiet")
    assert result.exit_code == 1, result.output
    rows = [strict_json(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert [(r["status"], r["error"], r["peak"]) for r in rows] == [
        ("failed", "the flow's mel holds NaN or infinite values", None)
    ]
    assert strict_json((out / "summary.json").read_text())["failed"] == 1
    assert not (out / "r1.wav").exists()


# ---- a corrupt or swapped ONNX file is a model problem found at load: exit 3, one line ------------------------------


def _break_onnx(model: Path, how: str) -> Path:
    tokenizer, campplus = model / "speech_tokenizer_v3.onnx", model / "campplus.onnx"
    for path in (tokenizer, campplus):
        path.chmod(0o644)
    if how == "swapped":
        data = tokenizer.read_bytes()
        tokenizer.write_bytes(campplus.read_bytes())
        campplus.write_bytes(data)
        return tokenizer
    if how == "truncated":
        campplus.write_bytes(campplus.read_bytes()[:5000])
        return campplus
    tokenizer.write_bytes(b"\x00garbage" * 100)
    return tokenizer


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("swapped", "not a speech tokenizer ONNX model (expected inputs float [1, 128, T] and int32 [1]"),
        ("truncated", "cannot load ONNX model"),
        ("garbage", "cannot load ONNX model"),
    ],
)
def test_a_broken_onnx_file_exits_3_at_load(tmp_path: Path, v3_model_dir: Path, how: str, message: str):
    model = tmp_path / "model"
    shutil.copytree(v3_model_dir, model)
    broken = _break_onnx(model, how)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,prompt_audio,prompt_text,target_text\nr1,{PROMPT},Hi.,Good day.\nr2,{PROMPT},Hi.,Bye.\n")
    result = invoke("synth", manifest, "--model", model, "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 3, result.output
    assert len(lines(result)) == 1 and lines(result)[0].startswith(f"error: {broken}: {message}")
    assert not (tmp_path / "o").exists()


# ---- weights stored as int64 are refused, other floating precisions warn once per file ------------------------------


def _retyped_flow(tmp_path: Path, v3_model_dir: Path, dtype) -> Path:
    model = tmp_path / "model"
    shutil.copytree(v3_model_dir, model)
    (model / "flow.pt").chmod(0o644)
    state = torch.load(model / "flow.pt", weights_only=True)
    for key in ("spk_embed_affine_layer.weight", "spk_embed_affine_layer.bias", "input_embedding.weight"):
        state[key] = state[key].to(dtype)
    torch.save(state, model / "flow.pt")
    return model


def test_int64_weights_are_refused_with_exit_3(tmp_path: Path, v3_model_dir: Path):
    model = _retyped_flow(tmp_path, v3_model_dir, torch.int64)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,prompt_audio,prompt_text,target_text\nr1,{PROMPT},Hi.,Good day.\n")
    result = invoke("synth", manifest, "--model", model, "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 3, result.output
    total = len(torch.load(model / "flow.pt", weights_only=True))
    assert lines(result) == [
        f"error: {model / 'flow.pt'}: 3 as int64 of {total} tensors, where weights are floating point "
        "(e.g. 'input_embedding.weight')"
    ]


def test_float16_weights_warn_once_per_file_and_run(tmp_path: Path, v3_model_dir: Path):
    model = _retyped_flow(tmp_path, v3_model_dir, torch.float16)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,prompt_audio,prompt_text,target_text\nr1,{PROMPT},Hi.,Good day.\nr2,{PROMPT},Hi.,Bye.\n")
    result = invoke("synth", manifest, "--model", model, "--out", tmp_path / "o", "--quiet")
    assert result.exit_code == 0, result.output
    total = len(torch.load(model / "flow.pt", weights_only=True))
    assert lines(result) == [
        f"warning: {model / 'flow.pt'}: 3 as float16 of {total} tensors, not float32, as the release stores them; "
        "cast on load"
    ]


# ---- a segment that cannot fit the flow's noise table is split further, or refused before decoding -------------------

WORDS = [
    "river",
    "market",
    "garden",
    "mountain",
    "library",
    "harbor",
    "festival",
    "forest",
    "bridge",
    "station",
    "museum",
    "weather",
]


@pytest.fixture(scope="module")
def tokenizer(v3_model_dir: Path):
    return Tokenizer.from_dir(v3_model_dir / "CosyVoice-BlankEN")


def test_the_segment_bound_comes_from_the_noise_table_and_the_length_rule(v3_model_dir: Path):
    # 30 s prompt = 750 tokens; the longest generation of n text tokens is int(20 n); 2 mel frames per token
    assert segment_token_limit(read_config(v3_model_dir)) == max_segment_tokens(15000, 2, 750, 20.0) == 337
    assert 2 * (750 + int(337 * 20.0)) <= 15000 < 2 * (750 + int(338 * 20.0))


def test_a_20000_character_text_without_punctuation_is_split_by_length(tokenizer):
    text = " ".join(WORDS[i % len(WORDS)] for i in range(2500))[:20000]
    start = time.monotonic()
    segments = split_segments(text, tokenizer, 337)
    assert time.monotonic() - start < 20
    lengths = [len(tokenizer.encode(s)) for s in segments]
    assert max(lengths) <= 80 + 60 and len(segments) >= 20, lengths
    assert "".join(segments) == text + "."  # lossless; cut only between words
    assert all(s.endswith(" ") or s == segments[-1] for s in segments)
    assert split_segments(text, tokenizer) == [text + "."]  # without the bound: one segment, as the reference


def test_a_long_sentence_is_cut_by_clause_first(tokenizer):
    clause = " ".join(WORDS[:8])
    text = ", ".join(f"{clause} {i}" for i in range(60)) + "."
    segments = split_segments(text, tokenizer, 337)
    assert "".join(segments) == text and len(segments) > 1
    assert all(s.endswith(", ") or s.endswith(",") or s == segments[-1] for s in segments), segments
    assert all(len(tokenizer.encode(s)) <= 337 for s in segments)


def test_texts_that_fit_split_as_without_the_bound(tokenizer):
    text = " ".join(f"Sentence {w} talks about the {w} and what it means for everyone involved!" for w in WORDS)
    zh = "今天天气很好，我们去公园散步。" * 20
    for t in (text, zh, "Short.", "[laughter] Hello.<|endofprompt|> world"):
        assert split_segments(t, tokenizer, 337) == split_segments(t, tokenizer)


def test_chinese_without_punctuation_is_cut_by_characters(tokenizer):
    text = "今天天气很好我们去公园散步" * 100
    segments = split_segments(text, tokenizer, 337)
    assert "".join(segments) == text + "。"
    assert all(len(tokenizer.encode(s)) <= 337 for s in segments) and max(len(s) for s in segments) <= 140


def test_a_word_that_cannot_fit_fails_its_row_before_decoding(tiny_model, v3_cases: Path):
    rng = np.random.default_rng(0)
    blob = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 3000))
    rows = [
        Row("long", v3_cases / "prompt_en.wav", "Hello there.", f"Read this: {blob} please.", seed=1),
        Row("ok", v3_cases / "prompt_en.wav", "Hello there.", "Good day.", seed=2),
    ]
    engine = Engine(tiny_model, EngineSettings(text_frontend=False))
    requests = []
    real = engine.tokens.generate
    engine.tokens.generate = lambda reqs, slots: requests.extend(reqs) or real(reqs, slots)
    results = {r.id: r for r in engine.run(resolve(rows, 0))}
    assert results["ok"].error is None and len(requests) == 1
    error = results["long"].error
    assert error.startswith("row long: the target text has a run of ") and error.endswith(
        "tokens with no space or punctuation to split at; one segment fits at most 337 (the flow's fixed noise table)"
    )


def test_every_segment_of_a_long_row_fits_the_noise_table(tiny_model, v3_cases: Path):
    text = " ".join(WORDS[i % len(WORDS)] for i in range(2500))[:20000]
    row = resolve([Row("r", v3_cases / "prompt_en.wav", "Hello there.", text, seed=1)], 0)[0]
    state = Engine(tiny_model, EngineSettings(text_frontend=False))._prepare(row)
    assert state.error is None and len(state.segments) >= 20
    frames = [2 * (len(state.prompt.speech_tokens) + seg.request.max_len) for seg in state.segments]
    assert max(frames) <= 15000, max(frames)
