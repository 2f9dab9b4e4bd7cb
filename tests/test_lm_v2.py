"""CosyVoice2 LM (the same LM with llm_embedding rows, a biased 6,564-row decoder) against the reference's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from voiceclone.engine.decoding import LMRequest, SlotDecoder, TokenGenerator, nucleus_sizes, ras_sample
from voiceclone.errors import ModelError
from voiceclone.models.lm import CosyVoice3LM, LMConfig
from voiceclone.models.qwen2 import Qwen2Config

LOGITS_TOL = 1e-4


@pytest.fixture(scope="module")
def official_sd(v2_model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(v2_model_dir / "llm.pt", weights_only=True, mmap=True)


@pytest.fixture(scope="module")
def case(v2_cases: Path) -> dict:
    return json.loads((v2_cases / "llm.json").read_text())


@pytest.fixture(scope="module")
def tensors(v2_cases: Path) -> dict[str, torch.Tensor]:
    return load_file(v2_cases / "llm.safetensors")


@pytest.fixture(scope="module")
def prefix(v2_lm, case) -> torch.Tensor:
    with torch.inference_mode():
        return v2_lm.prefix_embeds(case["text_ids"], case["prompt_text_ids"], case["prompt_speech_token"])


def test_v2_vocabulary_and_stop_ids(v2_lm):
    config = v2_lm.config
    assert (config.vocab_out, config.first_stop_id) == (6564, 6561)  # 6561, 6562, 6563 stop
    assert v2_lm.llm_decoder.bias is not None and v2_lm.llm_embedding.weight.shape == (2, config.qwen.hidden_size)


def test_official_state_dict_round_trip(v2_lm, official_sd):
    out = v2_lm.official_state_dict()
    assert list(out) == list(official_sd)
    tied = out["llm.model.lm_head.weight"], out["llm.model.model.embed_tokens.weight"]
    assert tied[0].data_ptr() == tied[1].data_ptr()
    for key, value in official_sd.items():
        assert torch.equal(out[key], value), key


def test_load_errors_name_the_key(v2_configs, official_sd, v3_model_dir):
    model = CosyVoice3LM(v2_configs.lm)
    with pytest.raises(ModelError, match="missing key 'llm_embedding.weight'"):
        model.load_official_state_dict({k: v for k, v in official_sd.items() if k != "llm_embedding.weight"})
    with pytest.raises(ModelError, match="missing key 'llm_decoder.bias'"):
        model.load_official_state_dict({k: v for k, v in official_sd.items() if k != "llm_decoder.bias"})
    v3 = torch.load(v3_model_dir / "llm.pt", weights_only=True, mmap=True)
    with pytest.raises(ModelError, match=r"llm.pt: \S+ has shape"):
        model.load_official_state_dict(v3)


def test_prefix_embeds_equal_reference(prefix, tensors, case):
    assert prefix.shape[0] == case["prefix_len"]
    assert torch.equal(prefix, tensors["prefix_embeds"][0])


def test_teacher_forced_logits(v2_lm, prefix, tensors):
    with torch.inference_mode():
        logits = v2_lm.teacher_forced_logits(prefix, tensors["tf_tokens"][0])
    assert logits.shape == tensors["tf_logits"].shape == (25, 6564)
    err = (logits - tensors["tf_logits"]).abs().max().item()
    assert err < LOGITS_TOL, err


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_incremental_step_logits(v2_lm, prefix, tensors, case, seed):
    run = next(r for r in case["runs"] if r["seed"] == seed)
    decoder = SlotDecoder(v2_lm, slots=1, max_seq=prefix.shape[0] + len(run["tokens"]))
    with torch.inference_mode():
        steps = [decoder.prefill([0], [prefix])]
        for i, token in enumerate(run["tokens"][:-1]):
            steps.append(decoder.decode([token], [prefix.shape[0] + i]).clone())
    logits = torch.cat(steps)
    expected = tensors[f"seed{seed}_step_logits"]
    assert logits.shape == expected.shape
    err = (logits - expected).abs().max().item()
    assert err < LOGITS_TOL, err


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_sampler_replays_reference_logits(v2_lm, tensors, case, seed):
    """RAS sampling of the saved step logits, stop ids 6561-6563 masked before min_len, gives the reference ids."""
    run = next(r for r in case["runs"] if r["seed"] == seed)
    config = v2_lm.config
    generator = torch.Generator().manual_seed(seed)
    history: list[int] = []
    for i, logits in enumerate(tensors[f"seed{seed}_step_logits"]):
        logp = logits.log_softmax(dim=-1)
        if i < run["min_len"]:
            logp[config.first_stop_id :] = -float("inf")
        probs, ids = logp.softmax(dim=0).sort(descending=True, stable=True)
        probs, ids = probs[: config.top_k].numpy(), ids[: config.top_k].numpy()
        keep = nucleus_sizes(probs[None], config.top_p, config.top_k)[0]
        history.append(ras_sample(probs[:keep], ids[:keep], lambda logp=logp: logp, history, generator, config))
    assert history == run["tokens"]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_generate_matches_reference(v2_lm, case, batch_size):
    """The three seeded runs, alone and as one batch (the decoding loop is CosyVoice3's, batch-tested in test_lm)."""
    bounds = v2_lm.generation_bounds(len(case["text_ids"]))
    assert bounds == (case["min_len"], case["max_len"]) == (4, 40)  # the target text alone
    requests = [
        LMRequest(case["text_ids"], case["prompt_text_ids"], case["prompt_speech_token"], run["seed"], *bounds)
        for run in case["runs"]
    ]
    for result, run in zip(TokenGenerator(v2_lm).generate(requests, batch_size=batch_size), case["runs"], strict=True):
        assert result.tokens == run["tokens"]
        assert result.stop_reason == ("eos" if run["stopped_by_stop_id"] else "max_len")
        assert result.steps == run["steps"]


def test_qwen2_05b_preset_matches_released_v2_key_shapes(v2_released_shapes):
    """With the 0.5B preset, the v2 options build exactly the released CosyVoice2 llm.pt keys and shapes."""
    config = LMConfig(qwen=Qwen2Config(), extra_tokens=3, decoder_bias=True, sos_task_embedding=True)
    with torch.device("meta"):
        model = CosyVoice3LM(config)
    assert {k: tuple(v.shape) for k, v in model.official_state_dict().items()} == v2_released_shapes["llm.pt"]
