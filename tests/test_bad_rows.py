"""Bad rows that used to pass or fail late: bad prompt audio, endless manifest lines, unsafe report ids."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.io.manifest import MAX_LINE_BYTES, ManifestErrors, load_manifest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PROMPT = EXAMPLES / "prompts" / "stella_16k.wav"


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def noise(path: Path, seconds: float, sr: int, subtype: str = "PCM_16", poison: float | None = None) -> Path:
    """Quiet noise; `poison` (NaN or inf) replaces one sample in the middle."""
    data = np.random.default_rng(0).uniform(-0.3, 0.3, max(1, int(seconds * sr))).astype(np.float32)
    if poison is not None:
        data[len(data) // 2] = poison
    sf.write(path, data, sr, subtype=subtype)
    return path


def with_header_rate(path: Path, rate: int) -> Path:
    """A PCM wav whose header claims `rate` (and the matching byte rate), its samples unchanged."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"RIFF" and data[12:16] == b"fmt "
    channels, bits = struct.unpack("<H", data[22:24])[0], struct.unpack("<H", data[34:36])[0]
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", min(rate * channels * bits // 8, 2**32 - 1))
    path.write_bytes(bytes(data))
    return path


# ---- prompt audio: refused at validation, naming file, line and field ------------------------------------------------


def bad_prompts(folder: Path) -> dict[str, tuple[Path, str]]:
    """Hostile prompts by name: (file, what the one-line refusal says)."""
    return {
        "nan": (noise(folder / "nan.wav", 1.0, 16000, "FLOAT", float("nan")), "NaN or infinite samples"),
        "inf": (noise(folder / "inf.wav", 1.0, 24000, "DOUBLE", float("inf")), "NaN or infinite samples"),
        "short": (noise(folder / "short.wav", 0.02, 16000), "20.0 ms is under the 40 ms prompt minimum"),
        "rate": (with_header_rate(noise(folder / "rate.wav", 0.5, 16000), 2**31 - 1), "over 384000 Hz"),
        "odd rate": (noise(folder / "odd.wav", 1.0, 44101), "cannot be resampled to 16000 Hz"),
    }


@pytest.mark.parametrize("name", ["nan", "inf", "short", "rate", "odd rate"])
def test_bad_prompt_audio_is_refused_at_validation(tmp_path: Path, name: str):
    path, message = bad_prompts(tmp_path)[name]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,prompt_audio,prompt_text,target_text\nr1,{PROMPT},Hi.,Good day.\nr2,{path},Hi.,Bye.\n")
    result = invoke("synth", manifest, "--model", "demo", "--out", tmp_path / "o", "--dry-run")
    assert result.exit_code == 2, result.output
    assert lines(result) == [f"error: {manifest}:3: prompt_audio: {lines(result)[0].split(': ', 3)[-1]}"]
    assert message in result.output and str(path) in result.output


def test_good_float_prompts_and_rates_still_pass(tmp_path: Path):
    fine = [
        noise(tmp_path / "f.wav", 1.0, 48000, "FLOAT"),
        noise(tmp_path / "d.wav", 0.04, 22050, "DOUBLE"),
        noise(tmp_path / "p.wav", 2.0, 44100),
        noise(tmp_path / "q.wav", 1.0, 384000),
    ]
    manifest = tmp_path / "m.csv"
    body = "".join(f"r{i},{p},Hi.,Good day.\n" for i, p in enumerate(fine))
    manifest.write_text("id,prompt_audio,prompt_text,target_text\n" + body)
    rows = load_manifest(manifest)
    assert [r.prompt_audio for r in rows] == fine


def test_the_prompt_front_end_refuses_what_validation_refuses(tmp_path: Path):
    from voiceclone.frontend.prompt import PromptFrontend
    from voiceclone.io.audio import AudioError

    frontend = PromptFrontend(tmp_path / "none.onnx", tmp_path / "none.onnx", mel=None)
    for path, message in bad_prompts(tmp_path).values():
        with pytest.raises(AudioError, match=message):
            frontend.extract(path)


# ---- manifest lines: at most 1 MB, read in bounded chunks ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "lst"])
def test_a_line_over_1_mb_is_refused_with_its_line(tmp_path: Path, fmt: str):
    header = {"csv": "id,prompt_audio,prompt_text,target_text\n", "tsv": "id\tprompt_audio\tprompt_text\ttarget_text\n"}
    path = tmp_path / f"m.{fmt}"
    path.write_bytes(header.get(fmt, "").encode() + b"x" * (MAX_LINE_BYTES + 10))
    with pytest.raises(ManifestErrors) as info:
        load_manifest(path)
    line = 2 if fmt in header else 1
    assert [str(e) for e in info.value.errors] == [f"{path}:{line}: line longer than {MAX_LINE_BYTES} bytes (1 MB)"]


def test_a_csv_record_spanning_lines_is_capped_too(tmp_path: Path):
    path = tmp_path / "m.csv"
    cells = ",".join(['"' + "y" * 1000 + '\n"'] * 2000)  # 2 MB in one record, no line over 1 KB
    path.write_text(f"id,prompt_audio,prompt_text,target_text\n{cells}\n")
    with pytest.raises(ManifestErrors, match="record longer than"):
        load_manifest(path)


def test_dev_zero_is_refused_in_bounded_memory(tmp_path: Path):
    """A manifest without newlines (/dev/zero) ends with one line and exit 2, under a 1 GB address-space limit."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    command = [sys.executable, "-m", "voiceclone", "synth", "/dev/zero", "--format", "lst", "--model", "demo"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "o"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_memory,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"error: /dev/zero:1: line longer than {MAX_LINE_BYTES} bytes (1 MB)"]
    assert not (tmp_path / "o").exists()


# ---- check-durations: report ids are validated as manifest ids are ---------------------------------------------------


@pytest.mark.parametrize(
    ("row_id", "why"),
    [
        ("a\u0001b", "contains control or invisible characters"),
        ("/tmp/victim", "contains '/'"),
        ("../outside", "contains '/'"),
        ("..", "starts with '.'"),
        ("x..y", "contains '..'"),
    ],
)
def test_check_durations_refuses_unsafe_report_ids(tmp_path: Path, row_id: str, why: str):
    out = tmp_path / "o"
    out.mkdir()
    noise(out / "ok.wav", 1.0, 24000)
    victim = tmp_path / "victim.wav"
    noise(victim, 1.0, 24000)
    report = out / "report.jsonl"
    rows = [
        {"id": "ok", "status": "ok"},
        {"id": row_id if row_id != "/tmp/victim" else str(victim)[:-4], "status": "ok"},
    ]
    report.write_text("".join(json.dumps(row) + "\n" for row in rows))
    junit = tmp_path / "d.xml"
    result = invoke("check-durations", out, "--junit", junit)
    assert result.exit_code == 2, result.output
    assert len(lines(result)) == 1 and lines(result)[0].startswith(f"error: {report}: id ")
    assert why in result.output and not junit.exists()


# ---- NaN / inf in any stage fails the row, naming the stage; reports stay strict JSON --------------------------------


def strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def tiny_model(v3_model_dir: Path):
    import torch

    from voiceclone.loading.load import load_model

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
    import torch

    from voiceclone.engine.engine import Engine, EngineSettings
    from voiceclone.io.manifest import Row, resolve

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
    import shutil

    import torch

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
    import shutil

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
    import shutil

    import torch

    model = tmp_path / "model"
    shutil.copytree(v3_model_dir, model)
    (model / "flow.pt").chmod(0o644)
    state = torch.load(model / "flow.pt", weights_only=True)
    for key in ("spk_embed_affine_layer.weight", "spk_embed_affine_layer.bias", "input_embedding.weight"):
        state[key] = state[key].to(dtype)
    torch.save(state, model / "flow.pt")
    return model


def test_int64_weights_are_refused_with_exit_3(tmp_path: Path, v3_model_dir: Path):
    import torch

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
    import torch

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
    from voiceclone.frontend.text import Tokenizer

    return Tokenizer.from_dir(v3_model_dir / "CosyVoice-BlankEN")


def test_the_segment_bound_comes_from_the_noise_table_and_the_length_rule(v3_model_dir: Path):
    from voiceclone.engine.engine import segment_token_limit
    from voiceclone.frontend.text import max_segment_tokens
    from voiceclone.loading.config import read_config

    # 30 s prompt = 750 tokens; the longest generation of n text tokens is int(20 n); 2 mel frames per token
    assert segment_token_limit(read_config(v3_model_dir)) == max_segment_tokens(15000, 2, 750, 20.0) == 337
    assert 2 * (750 + int(337 * 20.0)) <= 15000 < 2 * (750 + int(338 * 20.0))


def test_a_20000_character_text_without_punctuation_is_split_by_length(tokenizer):
    import time

    from voiceclone.frontend.text import split_segments

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
    from voiceclone.frontend.text import split_segments

    clause = " ".join(WORDS[:8])
    text = ", ".join(f"{clause} {i}" for i in range(60)) + "."
    segments = split_segments(text, tokenizer, 337)
    assert "".join(segments) == text and len(segments) > 1
    assert all(s.endswith(", ") or s.endswith(",") or s == segments[-1] for s in segments), segments
    assert all(len(tokenizer.encode(s)) <= 337 for s in segments)


def test_texts_that_fit_split_as_without_the_bound(tokenizer):
    from voiceclone.frontend.text import split_segments

    text = " ".join(f"Sentence {w} talks about the {w} and what it means for everyone involved!" for w in WORDS)
    zh = "今天天气很好，我们去公园散步。" * 20
    for t in (text, zh, "Short.", "[laughter] Hello.<|endofprompt|> world"):
        assert split_segments(t, tokenizer, 337) == split_segments(t, tokenizer)


def test_chinese_without_punctuation_is_cut_by_characters(tokenizer):
    from voiceclone.frontend.text import split_segments

    text = "今天天气很好我们去公园散步" * 100
    segments = split_segments(text, tokenizer, 337)
    assert "".join(segments) == text + "。"
    assert all(len(tokenizer.encode(s)) <= 337 for s in segments) and max(len(s) for s in segments) <= 140


def test_a_word_that_cannot_fit_fails_its_row_before_decoding(tiny_model, v3_cases: Path):
    from voiceclone.engine.engine import Engine, EngineSettings
    from voiceclone.io.manifest import Row, resolve

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
    from voiceclone.engine.engine import Engine, EngineSettings
    from voiceclone.io.manifest import Row, resolve

    text = " ".join(WORDS[i % len(WORDS)] for i in range(2500))[:20000]
    row = resolve([Row("r", v3_cases / "prompt_en.wav", "Hello there.", text, seed=1)], 0)[0]
    state = Engine(tiny_model, EngineSettings(text_frontend=False))._prepare(row)
    assert state.error is None and len(state.segments) >= 20
    frames = [2 * (len(state.prompt.speech_tokens) + seg.request.max_len) for seg in state.segments]
    assert max(frames) <= 15000, max(frames)
