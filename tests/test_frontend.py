"""Prompt front end against the reference's `frontend_zero_shot` outputs; content cache; refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from voiceclone.errors import ModelError
from voiceclone.files import sha256_file
from voiceclone.frontend.features import MelConfig
from voiceclone.frontend.prompt import PromptCache, PromptFrontend
from voiceclone.io.audio import AudioError

PARITY = Path(__file__).resolve().parents[2] / "shared" / "parity"
MEL_CONFIGS = {"cosyvoice3": MelConfig(), "cosyvoice2": MelConfig(fmax=8000.0)}
TOL = 1e-4


@pytest.fixture(scope="module")
def frontends() -> dict[str, PromptFrontend]:
    return {
        family: PromptFrontend.from_model_dir(PARITY / f"{family}-tiny" / "model", mel)
        for family, mel in MEL_CONFIGS.items()
    }


@pytest.mark.parametrize("family", ["cosyvoice3", "cosyvoice2"])
@pytest.mark.parametrize("prompt", ["en", "zh"])
def test_extract_matches_reference(frontends, family, prompt):
    cases = PARITY / f"{family}-tiny" / "cases"
    ref = load_file(cases / f"frontend_prompt_{prompt}.safetensors")
    features = frontends[family].extract(cases / f"prompt_{prompt}.wav")

    k = int(ref["llm_prompt_speech_token_len"][0])
    assert features.speech_tokens.dtype == torch.int64
    assert torch.equal(features.speech_tokens, ref["llm_prompt_speech_token"][0].long())
    assert features.mel.shape == (2 * k, 80) and features.mel.dtype == torch.float32
    assert (features.mel - ref["prompt_speech_feat"][0]).abs().max().item() <= TOL
    assert features.embedding.shape == (192,)
    assert (features.embedding - ref["llm_embedding"][0]).abs().max().item() <= TOL
    assert features.duration_s == pytest.approx(sf.info(cases / f"prompt_{prompt}.wav").duration)

    untrimmed = frontends[family].speech_tokens(ref["wav_16k"])
    assert torch.equal(untrimmed, ref["speech_token_untrimmed"][0].long())


def test_zh_prompt_is_trimmed_two_to_one(frontends, v3_cases):
    features = frontends["cosyvoice3"].extract(v3_cases / "prompt_zh.wav")
    assert features.speech_tokens.shape == (90,)  # K = 91 tokens, Tm = 181 frames -> k = 90
    assert features.mel.shape == (180, 80)


def test_cache_shares_identical_content(v3_model_dir, v3_cases, tmp_path):
    frontend = PromptFrontend.from_model_dir(v3_model_dir, MelConfig())
    cache = PromptCache(frontend)
    copy = tmp_path / "renamed.wav"
    shutil.copyfile(v3_cases / "prompt_en.wav", copy)
    calls = []
    original = frontend._compute
    frontend._compute = lambda path, duration: calls.append(path) or original(path, duration)
    first = cache.get(v3_cases / "prompt_en.wav", sha256_file(v3_cases / "prompt_en.wav"))
    assert cache.get(copy, sha256_file(copy)) is first
    assert cache.get(v3_cases / "prompt_zh.wav", sha256_file(v3_cases / "prompt_zh.wav")) is not first
    assert len(calls) == 2


def test_sessions_open_lazily_and_missing_files_are_model_errors(tmp_path, v3_cases):
    frontend = PromptFrontend.from_model_dir(tmp_path, MelConfig())
    with pytest.raises(ModelError, match="speech_tokenizer_v3.onnx"):
        frontend.extract(v3_cases / "prompt_en.wav")


def test_refuses_long_and_low_rate_prompts(frontends, tmp_path):
    long_prompt = tmp_path / "long.wav"
    sf.write(long_prompt, np.zeros(16000 * 31, dtype=np.int16), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="long.wav.*30 s"):
        frontends["cosyvoice3"].extract(long_prompt)
    low = tmp_path / "low.wav"
    sf.write(low, np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")
    with pytest.raises(AudioError, match="low.wav.*16000 Hz"):
        frontends["cosyvoice3"].extract(low)
