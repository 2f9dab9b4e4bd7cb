"""CosyVoice2 HiFT vocoder against the reference's own outputs on the tiny model (cases/hift.*)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from voiceclone.errors import ModelError
from voiceclone.models.hift import HiFTConfig
from voiceclone.models.hift2 import HiFT2

SEED = 5678  # the reference ran torch.manual_seed(5678) before hift.inference
WAVE_TOL = 1e-4


@pytest.fixture(scope="module")
def official_sd(v2_model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(v2_model_dir / "hift.pt", weights_only=True, mmap=True)


@pytest.fixture(scope="module")
def case(v2_cases: Path) -> dict[str, torch.Tensor]:
    return load_file(v2_cases / "hift.safetensors")


def seeded(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_released_form_is_legacy_and_both_forms_load_the_same(v2_configs, official_sd, v2_cases, v2_hift):
    assert any(k.endswith(".weight_g") for k in official_sd) and not any("parametrizations" in k for k in official_sd)
    other_form = torch.load(v2_cases / "hift_parametrizations_form.pt", weights_only=True, mmap=True)
    model = HiFT2(v2_configs.hift)
    model.load_official_state_dict(other_form)
    for (name, a), b in zip(model.state_dict().items(), v2_hift.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert v2_hift.ups[0].weight.shape == (32, 16, 16)  # ConvTranspose1d: weight norm over the input channels


def test_official_state_dict_round_trip(v2_configs, v2_cases, v2_hift):
    exported = v2_hift.official_state_dict()
    other_form = torch.load(v2_cases / "hift_parametrizations_form.pt", weights_only=True, mmap=True)
    assert list(exported) == list(other_form)
    model = HiFT2(v2_configs.hift)
    model.load_official_state_dict(exported)
    for (name, a), b in zip(model.state_dict().items(), v2_hift.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name


def test_load_rejects_bad_state_dicts(v2_configs, official_sd, v3_model_dir):
    model = HiFT2(v2_configs.hift)
    with pytest.raises(ModelError, match=r"missing key ups\.2\.bias"):
        model.load_official_state_dict({k: v for k, v in official_sd.items() if k != "ups.2.bias"})
    v3 = torch.load(v3_model_dir / "hift.pt", weights_only=True, mmap=True)
    with pytest.raises(ModelError, match=r"conv_pre\.parametrizations\.weight\.original1 has shape \[32, 80, 5\]"):
        model.load_official_state_dict(v3)


def test_f0_matches_reference(v2_hift, case):
    f0 = v2_hift.predict_f0(case["mel"])
    assert f0.dtype == torch.float32
    err = (f0 - case["f0"]).abs().max().item()
    print(f"v2 hift f0: max |f0 - reference| = {err:.3g} Hz")
    assert err < 1e-3


def test_source_matches_reference(v2_hift, case):
    source = v2_hift.m_source(v2_hift.predict_f0(case["mel"])[0], seeded())
    assert source.shape == (48000,)
    assert (source - case["source"][0, 0]).abs().max().item() < 1e-5


@pytest.mark.parametrize(("key", "generator"), [("speech", seeded), ("speech_zero_noise", lambda: None)])
def test_speech_matches_reference(v2_hift, case, key, generator):
    (speech,) = v2_hift.inference([case["mel"][0]], [generator()])
    assert speech.shape == (48000,) and speech.dtype == torch.float32
    err = (speech - case[key][0]).abs().max().item()
    print(f"v2 hift {key}: max |wave - reference| = {err:.3g}")
    assert err < WAVE_TOL


def test_noise_draws_follow_the_reference_order(v2_hift, case, v2_cases):
    """After a row, its generator is where the reference's is: rand(1,9), the strided (1,L,9) noise, (1,L,1)."""
    draws = json.loads((v2_cases / "hift.json").read_text())["rng_draws"]
    assert [d[0] for d in draws] == ["rand", "randn_like", "randn_like"]
    used = seeded()
    v2_hift.inference([case["mel"][0]], [used])
    replay = seeded()
    torch.rand(draws[0][1], generator=replay)
    (_, samples, harmonics) = draws[1][1]
    torch.empty_strided((1, samples, harmonics), (harmonics * samples, 1, samples)).normal_(generator=replay)
    torch.empty(draws[2][1]).normal_(generator=replay)
    assert torch.equal(used.get_state(), replay.get_state())


def test_batch_rows_equal_batch_one(v2_hift, v2_cases, case):
    """Rows of 100, 37 and 160 frames with their own generators: each equals its batch-1 result."""
    e2e = load_file(v2_cases / "e2e_prompt_en_seed1234.safetensors")["flow_mel"][0]
    mels = [case["mel"][0], case["mel"][0, :, 20:57], e2e]
    batch = v2_hift.inference(mels, [seeded(1), None, seeded(3)])
    for mel, row, generator in zip(mels, batch, [seeded(1), None, seeded(3)], strict=True):
        (alone,) = v2_hift.inference([mel], [generator])
        assert row.shape == alone.shape == (mel.shape[1] * 480,)
        assert (row - alone).abs().max().item() < 1e-5


def test_bfloat16_stack_keeps_f0_and_source_in_float32(v2_configs, official_sd, case):
    model = HiFT2(v2_configs.hift)
    model.load_official_state_dict(official_sd)
    model.to(torch.bfloat16)
    assert model.compute_dtype == torch.bfloat16 and model.f0_predictor.classifier.weight.dtype == torch.float32
    assert torch.equal(model.predict_f0(case["mel"]), case["f0"])
    (speech,) = model.inference([case["mel"][0]], [seeded()])
    assert speech.dtype == torch.float32
    assert (speech - case["speech"][0]).abs().max().item() < 0.03  # bf16 convs; the waveform's rms is 0.056


def test_default_config_matches_released_v2_key_shapes(v2_released_shapes):
    """The default (24 kHz, base 512) dimensions give exactly the released hift.pt keys and shapes."""
    exported = HiFT2(HiFTConfig()).official_state_dict()
    assert {k: tuple(v.shape) for k, v in exported.items()} == v2_released_shapes["hift.pt"]
