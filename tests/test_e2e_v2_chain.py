"""CosyVoice2 end to end without the engine: text and prompt -> front end -> LM -> flow -> HiFT, against e2e_*.

The reference draws the LM's samples and then the vocoder's noise from one generator; here each row's LM
generator is handed on to the vocoder (`LMResult.generator`), which makes every waveform match.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from voiceclone.engine.decoding import LMRequest, TokenGenerator
from voiceclone.frontend.prompt import PromptFrontend
from voiceclone.frontend.text import Tokenizer

MEL_TOL = 1e-4
WAVE_TOL = 1e-3  # the README's suggestion for the v2 chain: flow + HiFT amplify 2e-6 mel differences


@pytest.fixture(scope="module")
def cases(v2_cases: Path) -> list[dict]:
    items = json.loads((v2_cases / "e2e.json").read_text())
    for case in items:
        case.update(load_file(v2_cases / f"{case['file']}.safetensors"))
    assert len(items) == 4
    return items


def test_chain_matches_reference(v2_model_dir, v2_cases, v2_configs, v2_lm, v2_flow, v2_hift, cases):
    """All four cases as one batch in every stage."""
    tokenizer = Tokenizer.from_dir(v2_model_dir / "CosyVoice-BlankEN", family="cosyvoice2")
    frontend = PromptFrontend.from_model_dir(v2_model_dir, v2_configs.mel)
    prompts = [frontend.extract(v2_cases / case["prompt_wav"]) for case in cases]
    requests = []
    for case, prompt in zip(cases, prompts, strict=True):
        text = tokenizer.encode(case["tts_text"])
        bounds = v2_lm.generation_bounds(len(text))
        assert bounds == (case["min_len"], case["max_len"])
        prompt_text = tokenizer.encode(case["prompt_text"])  # CosyVoice2 needs no <|endofprompt|>
        requests.append(LMRequest(text, prompt_text, prompt.speech_tokens.tolist(), case["seed"], *bounds))
    results = TokenGenerator(v2_lm).generate(requests, batch_size=len(requests))
    for result, case in zip(results, cases, strict=True):
        assert result.tokens == case["llm_tokens"][0].tolist() == case["flow_tokens"][0].tolist(), case["file"]

    mels = v2_flow.inference(
        [torch.tensor(r.tokens) for r in results],
        [p.speech_tokens for p in prompts],
        [p.mel for p in prompts],
        torch.stack([p.embedding for p in prompts]),
    )
    speech = v2_hift.inference(mels, [r.generator for r in results])
    worst_mel = worst_wave = 0.0
    for mel, wave, case in zip(mels, speech, cases, strict=True):
        assert mel.shape == case["flow_mel"][0].shape and wave.shape == case["tts_speech"][0].shape
        worst_mel = max(worst_mel, (mel - case["flow_mel"][0]).abs().max().item())
        worst_wave = max(worst_wave, (wave - case["tts_speech"][0]).abs().max().item())
    print(f"v2 chain: max |mel - reference| = {worst_mel:.3g}, max |wav - reference| = {worst_wave:.3g}")
    assert worst_mel < MEL_TOL and worst_wave < WAVE_TOL
