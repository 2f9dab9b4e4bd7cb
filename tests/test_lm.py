"""CosyVoice3 LM against the reference's own outputs: prefix, logits, sampled tokens, bounds, batch invariance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from voiceclone.engine.decoding import (
    LMRequest,
    SlotDecoder,
    TokenGenerator,
    multinomial_draw,
    nucleus_sizes,
    ras_sample,
)
from voiceclone.errors import ModelError
from voiceclone.models import linear
from voiceclone.models.lm import CosyVoice3LM, LMConfig
from voiceclone.models.qwen2 import Qwen2Config

LOGITS_TOL = 1e-4


@pytest.fixture(scope="module")
def official_sd(v3_model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(v3_model_dir / "llm.pt", weights_only=True, mmap=True)


@pytest.fixture(scope="module")
def lm(v3_config, official_sd) -> CosyVoice3LM:
    model = CosyVoice3LM(v3_config.lm).eval()
    model.load_official_state_dict(official_sd)
    return model


@pytest.fixture(scope="module")
def case(v3_cases: Path) -> dict:
    return json.loads((v3_cases / "llm.json").read_text())


@pytest.fixture(scope="module")
def tensors(v3_cases: Path) -> dict[str, torch.Tensor]:
    return load_file(v3_cases / "llm.safetensors")


@pytest.fixture(scope="module")
def prefix(lm, case) -> torch.Tensor:
    with torch.inference_mode():
        return lm.prefix_embeds(case["text_ids"], case["prompt_text_ids"], case["prompt_speech_token"])


def test_config_dims_match_checkpoint(lm, official_sd):
    q = lm.config.qwen
    assert official_sd["llm.model.model.embed_tokens.weight"].shape == (q.vocab_size, q.hidden_size)
    assert official_sd["llm.model.model.layers.0.self_attn.k_proj.weight"].shape == (
        q.num_key_value_heads * q.head_dim,
        q.hidden_size,
    )
    assert f"llm.model.model.layers.{q.num_hidden_layers - 1}.mlp.up_proj.weight" in official_sd
    assert lm.llm_decoder.bias is None
    assert not any("lm_head" in name for name in lm.state_dict())


def test_official_state_dict_round_trip(lm, official_sd):
    out = lm.official_state_dict()
    assert list(out) == list(official_sd)
    tied = out["llm.model.lm_head.weight"], out["llm.model.model.embed_tokens.weight"]
    assert tied[0].data_ptr() == tied[1].data_ptr()  # one shared storage, as in llm.pt
    for key, value in official_sd.items():
        assert torch.equal(out[key], value), key


def test_load_errors_name_the_key(lm, official_sd):
    model = CosyVoice3LM(lm.config)
    missing = {k: v for k, v in official_sd.items() if k != "llm.model.model.norm.weight"}
    with pytest.raises(ModelError, match="missing key 'llm.model.model.norm.weight'"):
        model.load_official_state_dict(missing)
    with pytest.raises(ModelError, match="unexpected key 'llm_decoder.bias'"):
        model.load_official_state_dict({**official_sd, "llm_decoder.bias": torch.zeros(lm.config.vocab_out)})
    bad = dict(official_sd)
    bad["speech_embedding.weight"] = bad["speech_embedding.weight"][:-1]
    with pytest.raises(ModelError, match="speech_embedding.weight has shape"):
        model.load_official_state_dict(bad)


def test_prefix_embeds_equal_reference(prefix, tensors, case):
    assert prefix.shape[0] == case["prefix_len"]
    assert torch.equal(prefix, tensors["prefix_embeds"][0])


def test_teacher_forced_logits(lm, prefix, tensors):
    with torch.inference_mode():
        logits = lm.teacher_forced_logits(prefix, tensors["tf_tokens"][0])
    err = (logits - tensors["tf_logits"]).abs().max().item()
    assert logits.shape == tensors["tf_logits"].shape
    assert err < LOGITS_TOL, err


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_incremental_step_logits(lm, prefix, tensors, case, seed):
    """Prefill + one-token KV-cache steps fed the reference tokens give the reference's per-step logits."""
    run = next(r for r in case["runs"] if r["seed"] == seed)
    decoder = SlotDecoder(lm, slots=1, max_seq=prefix.shape[0] + len(run["tokens"]))
    with torch.inference_mode():
        steps = [decoder.prefill([0], [prefix])]
        for i, token in enumerate(run["tokens"]):
            steps.append(decoder.decode([token], [prefix.shape[0] + i]).clone())
    logits = torch.cat(steps)
    expected = tensors[f"seed{seed}_step_logits"]
    assert logits.shape == expected.shape
    err = (logits - expected).abs().max().item()
    assert err < LOGITS_TOL, err


@pytest.mark.parametrize("seed", [11, 22, 33])
def test_sampler_replays_reference_logits(lm, tensors, case, seed):
    """ras_sample on the saved step logits with torch.Generator().manual_seed(seed) reproduces the reference ids."""
    run = next(r for r in case["runs"] if r["seed"] == seed)
    generator = torch.Generator().manual_seed(seed)
    history: list[int] = []
    for i, logits in enumerate(tensors[f"seed{seed}_step_logits"]):
        logp = logits.log_softmax(dim=-1)
        if i < run["min_len"]:
            logp[lm.config.first_stop_id :] = -float("inf")
        probs, ids = logp.softmax(dim=0).sort(descending=True, stable=True)
        probs, ids = probs[: lm.config.top_k].numpy(), ids[: lm.config.top_k].numpy()
        keep = nucleus_sizes(probs[None], lm.config.top_p, lm.config.top_k)[0]
        history.append(ras_sample(probs[:keep], ids[:keep], lambda logp=logp: logp, history, generator, lm.config))
    assert history[:-1] == run["tokens"]
    assert history[-1] == run["stop_id"]


def test_nucleus_and_draw_follow_the_reference_rules():
    """Nucleus: while the float32 running sum < top_p (crossing token kept), at most top_k; draws equal multinomial."""
    probs = np.array([[0.5, 0.3, 0.1, 0.1], [0.9, 0.05, 0.03, 0.02], [0.3, 0.2, 0.2, 0.3]], dtype=np.float32)
    assert nucleus_sizes(probs, 0.8, 25).tolist() == [2, 1, 4]
    assert nucleus_sizes(probs, 0.8, 3).tolist() == [2, 1, 3]
    p = torch.tensor([0.05, 0.5, 0.0, 0.25, 0.2])
    a, b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(50):
        assert multinomial_draw(p.numpy(), a) == int(torch.multinomial(p, 1, replacement=True, generator=b))


def test_generate_matches_reference(lm, case):
    requests = [
        LMRequest(case["text_ids"], case["prompt_text_ids"], case["prompt_speech_token"], r["seed"], *bounds)
        for r in case["runs"]
        for bounds in [lm.generation_bounds(len(case["text_ids"]))]
    ]
    assert lm.generation_bounds(len(case["text_ids"])) == (case["min_len"], case["max_len"])
    for result, run in zip(TokenGenerator(lm).generate(requests, batch_size=2), case["runs"], strict=True):
        assert result.tokens == run["tokens"]
        assert result.stop_reason == ("eos" if run["stopped_by_stop_id"] else "max_len")
        assert result.steps == run["steps"]


def test_output_independent_of_batch_size(lm, v3_cases):
    """Ten requests of very different prefix lengths, seeds and bounds give the same tokens at batch 1, 3 and 8."""
    en = json.loads((v3_cases / "frontend_prompt_en.json").read_text())
    zh = json.loads((v3_cases / "frontend_prompt_zh.json").read_text())
    shapes = [
        (en["text_ids"], en["prompt_text_ids"], en["speech_token"]),
        (zh["text_ids"], zh["prompt_text_ids"], zh["speech_token"]),
        (en["text_ids"][:2], en["prompt_text_ids"][:7], en["speech_token"][:3]),
        (zh["text_ids"], [], []),
        (en["text_ids"] + zh["text_ids"], zh["prompt_text_ids"] * 3, zh["speech_token"]),
        (en["text_ids"][:1], en["prompt_text_ids"], en["speech_token"][:40]),
        (zh["text_ids"][:3], en["prompt_text_ids"], zh["speech_token"][:10]),
        (en["text_ids"], zh["prompt_text_ids"], en["speech_token"] + zh["speech_token"]),
        (zh["text_ids"][:2], en["prompt_text_ids"][:3], []),
        (en["text_ids"], en["prompt_text_ids"], en["speech_token"]),
    ]
    requests = [
        LMRequest(text, ptext, speech, seed=1000 + 37 * i, min_len=lo, max_len=hi)
        for i, (text, ptext, speech) in enumerate(shapes)
        for lo, hi in [lm.generation_bounds(len(text))]
    ]
    requests[-1].min_len = requests[-1].max_len = 3  # one row must end by max_len
    prefix_lens = {len(r.prompt_text_ids) + len(r.text_ids) + len(r.prompt_speech_tokens) for r in requests}
    assert max(prefix_lens) - min(prefix_lens) > 100
    generator = TokenGenerator(lm)
    baseline = generator.generate(requests, batch_size=1)
    assert baseline[-1].tokens and baseline[-1].stop_reason == "max_len" and len(baseline[-1].tokens) == 3
    for result, request in zip(baseline, requests, strict=True):
        assert request.min_len <= len(result.tokens) <= request.max_len
    for batch_size in (3, 8):
        assert generator.generate(requests, batch_size=batch_size) == baseline, batch_size
    # the same slots again (the cache of the last call is reused), and other neighbours in other slots
    assert generator.generate(requests[::-1], batch_size=8) == baseline[::-1]


def test_bfloat16_weights_keep_float32_sampling(lm, case):
    model = CosyVoice3LM(lm.config).eval()
    model.load_official_state_dict(lm.official_state_dict())
    model.to(torch.bfloat16)
    assert model.llm.rotary_emb.inv_freq.dtype == torch.float32
    request = LMRequest(case["text_ids"], case["prompt_text_ids"], case["prompt_speech_token"], 11, 4, 40)
    (result,) = TokenGenerator(model).generate([request], batch_size=1)
    assert 4 <= len(result.tokens) <= 40
    assert all(0 <= t < lm.config.speech_token_size for t in result.tokens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_cpu_linear_equals_plain_linear_and_skips_bf16_without_native_support(monkeypatch, dtype):
    monkeypatch.setattr(linear, "cpu_has_native_bf16", lambda: False)
    layer = linear.Linear(64, 48).to(dtype).eval()
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    with torch.inference_mode():
        out = layer(x)
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert (layer._packed is None) is (dtype == torch.bfloat16)  # fp32 packs; bf16 without native support does not


def test_packed_linear_fuses_tanh_gelu_and_packs_only_its_dtypes(monkeypatch):
    x = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(1))
    fused = linear.Linear(64, 96, tanh_gelu=True).eval()
    bf16_only = linear.Linear(64, 96, tanh_gelu=True, pack_dtypes=(torch.bfloat16,)).eval()
    bf16_only.load_state_dict(fused.state_dict())
    with torch.inference_mode():
        packed, plain = fused(x), bf16_only(x)
    expected = torch.nn.functional.gelu(torch.nn.functional.linear(x, fused.weight, fused.bias), approximate="tanh")
    assert torch.equal(plain, expected) and bf16_only._packed is None  # float32 left to ATen: bit for bit
    torch.testing.assert_close(packed, expected, rtol=1e-5, atol=1e-5)
    assert fused._packed is not None
    monkeypatch.setattr(linear, "cpu_has_native_bf16", lambda: True)
    with torch.inference_mode():
        assert bf16_only.to(torch.bfloat16)._use_onednn(x.to(torch.bfloat16))
        assert not bf16_only.float()._use_onednn(x)


def test_packed_linear_under_torch_compile_checks_nothing_else(monkeypatch):
    """A compiled graph takes the plain path without tracing the CPU checks (tracing them broke the bf16 DiT graph)."""

    def untraceable() -> bool:
        raise AssertionError("the CPU check ran while compiling")

    monkeypatch.setattr(linear, "cpu_has_native_bf16", untraceable)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    layer = linear.Linear(8, 4, pack_dtypes=(torch.bfloat16,)).to(torch.bfloat16).eval()
    x = torch.randn(3, 8).to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_qwen2_defaults_match_released_key_shapes():
    """The defaults (Qwen2-0.5B) build (on the meta device) exactly the llm.pt keys and shapes of the released
    CosyVoice3."""
    tsv = Path(__file__).resolve().parents[2] / "shared" / "reference" / "cosyvoice_keys_v3.tsv"
    released = {}
    for line in tsv.read_text().splitlines():
        file, key, shape = (line.split("\t") + ["", "", ""])[:3]
        if file == "llm.pt":
            released[key] = tuple(json.loads(shape))
    config = Qwen2Config()
    dims = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads)
    assert dims == (896, 24, 14, 2) and (config.head_dim, config.intermediate_size) == (64, 4864)
    with torch.device("meta"):
        model = CosyVoice3LM(LMConfig(qwen=config))
    assert {k: tuple(v.shape) for k, v in model.official_state_dict().items()} == released


def test_qwen2_config_refuses_unsupported_files(v3_model_dir):
    config = json.loads((v3_model_dir / "CosyVoice-BlankEN" / "config.json").read_text())
    with pytest.raises(ModelError, match="rope_scaling"):
        Qwen2Config.from_hf({**config, "rope_scaling": {"type": "yarn", "factor": 4.0}})
    with pytest.raises(ModelError, match="'num_key_value_heads'"):
        Qwen2Config.from_hf({k: v for k, v in config.items() if k != "num_key_value_heads"})
