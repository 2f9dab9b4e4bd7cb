"""HiFT vocoder against the reference's own outputs on the tiny CosyVoice3 model (cases/hift.*, cases/e2e_*)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from voiceclone.errors import ModelError
from voiceclone.models.flow import FlowConfig
from voiceclone.models.hift import HiFT, HiFTConfig, SineNoiseTable

E2E_CASES = ["e2e_prompt_en_seed1234", "e2e_prompt_en_seed4321", "e2e_prompt_zh_seed1234", "e2e_prompt_zh_seed4321"]


@pytest.fixture(scope="module")
def config(v3_config) -> HiFTConfig:
    return v3_config.hift


@pytest.fixture(scope="module")
def flow_config(v3_config) -> FlowConfig:
    return v3_config.flow


@pytest.fixture(scope="module")
def official_sd(v3_model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(v3_model_dir / "hift.pt", weights_only=True, mmap=True)


@pytest.fixture(scope="module")
def hift(config: HiFTConfig, flow_config: FlowConfig, official_sd: dict[str, torch.Tensor]) -> HiFT:
    model = HiFT(config, flow_config)
    model.load_official_state_dict(official_sd)
    return model.eval()


@pytest.fixture(scope="module")
def case(v3_cases: Path) -> dict[str, torch.Tensor]:
    return load_file(v3_cases / "hift.safetensors")


@pytest.fixture(scope="module")
def case_json(v3_cases: Path) -> dict:
    return json.loads((v3_cases / "hift.json").read_text())


def test_config_read_from_yaml(config: HiFTConfig):
    assert (config.base_channels, config.f0_cond_channels, config.sampling_rate) == (32, 32, 24000)
    assert config.resblock_dilation_sizes == ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    assert config.samples_per_frame == 480


def test_noise_table_matches_reference(config: HiFTConfig, flow_config: FlowConfig, case: dict, case_json: dict):
    """The whole table, drawn lazily to its limit, is the reference's `sine_waves`."""
    sine_waves = SineNoiseTable(config, flow_config).head(config.noise_samples)
    assert torch.equal(sine_waves[:4096], case["sine_waves_head"])
    assert list(sine_waves.shape) == case_json["sine_waves_shape"][1:]
    assert sine_waves.double().sum().item() == pytest.approx(case_json["sine_waves_sum_f64"], rel=1e-12)
    for row, values in case_json["sine_waves_at"].items():
        assert sine_waves[int(row)].tolist() == values


def test_lazy_noise_table_grows_in_draw_order(config: HiFTConfig, flow_config: FlowConfig, case: dict, case_json: dict):
    table = SineNoiseTable(config, flow_config)
    first = table.head(10).clone()
    assert torch.equal(table.head(4096), case["sine_waves_head"])
    assert torch.equal(table.head(10), first)
    assert table.head(1_000_001)[1_000_000].tolist() == case_json["sine_waves_at"]["1000000"]
    with pytest.raises(ModelError, match="noise table"):
        table.head(config.noise_samples + 1)


def test_construction_leaves_global_rng_alone(config: HiFTConfig, flow_config: FlowConfig):
    state = torch.random.get_rng_state()
    HiFT(config, flow_config)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_f0_matches_reference(hift: HiFT, case: dict):
    f0 = hift.predict_f0(case["mel"])
    assert f0.dtype == torch.float64
    assert (f0 - case["f0"]).abs().max().item() < 1e-6


def test_source_matches_reference(hift: HiFT, case: dict):
    source = hift.excitation(hift.predict_f0(case["mel"]))
    assert source.shape == (1, 48000)
    assert (source - case["source"][:, 0]).abs().max().item() < 1e-4


def test_speech_matches_reference(hift: HiFT, case: dict):
    (speech,) = hift.inference([case["mel"][0]])
    assert speech.shape == (48000,)
    assert (speech - case["speech"][0]).abs().max().item() < 1e-4


def test_nonfinal_chunk_matches_reference(hift: HiFT, case: dict):
    (speech,) = hift.inference([case["mel"][0]], finalize=False)
    assert speech.shape == (44160,)
    assert (speech - case["speech_nonfinal"][0]).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", E2E_CASES)
def test_e2e_flow_mel_to_speech(hift: HiFT, v3_cases: Path, name: str):
    e2e = load_file(v3_cases / f"{name}.safetensors")
    (speech,) = hift.inference([e2e["flow_mel"][0]])
    assert speech.shape == e2e["tts_speech"][0].shape
    assert (speech - e2e["tts_speech"][0]).abs().max().item() < 1e-4


@pytest.mark.parametrize("finalize", [True, False])
def test_batch_rows_equal_batch_one(hift: HiFT, v3_cases: Path, case: dict, finalize: bool):
    mels = [load_file(v3_cases / f"{name}.safetensors")["flow_mel"][0] for name in E2E_CASES] + [case["mel"][0]]
    assert len({m.shape[1] for m in mels}) > 2
    batch = hift.inference(mels, finalize=finalize)
    for mel, row in zip(mels, batch, strict=True):
        (alone,) = hift.inference([mel], finalize=finalize)
        assert row.shape == alone.shape == ((mel.shape[1] - (0 if finalize else 8)) * 480,)
        assert (row - alone).abs().max().item() < 1e-5


def test_bfloat16_stack_keeps_f0_in_float64(config: HiFTConfig, flow_config: FlowConfig, official_sd: dict, case: dict):
    model = HiFT(config, flow_config)
    model.load_official_state_dict(official_sd)
    model.to(torch.bfloat16)
    assert model.compute_dtype == torch.bfloat16
    assert model.f0_predictor.classifier.weight.dtype == torch.float64
    assert (model.predict_f0(case["mel"]) - case["f0"]).abs().max().item() < 1e-6
    (speech,) = model.inference([case["mel"][0]])
    assert speech.dtype == torch.float32
    # bf16 convs: coarse agreement only (the reference waveform's rms is 0.047)
    assert (speech - case["speech"][0]).abs().max().item() < 0.02


def test_official_state_dict_round_trip(config: HiFTConfig, flow_config: FlowConfig, official_sd: dict, hift: HiFT):
    exported = hift.official_state_dict()
    assert list(exported) == list(official_sd)
    for key, value in official_sd.items():
        assert exported[key].dtype == torch.float32
        assert exported[key].shape == value.shape, key
    model = HiFT(config, flow_config)
    model.load_official_state_dict(exported)
    for (name, a), b in zip(model.state_dict().items(), hift.state_dict().values(), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name


def test_load_rejects_bad_state_dicts(
    config: HiFTConfig, flow_config: FlowConfig, official_sd: dict, v3_model_dir: Path
):
    model = HiFT(config, flow_config)
    missing = dict(official_sd)
    del missing["ups.1.bias"]
    with pytest.raises(ModelError, match=r"missing key ups\.1\.bias"):
        model.load_official_state_dict(missing)
    with pytest.raises(ModelError, match=r"unexpected key m_source\.extra"):
        model.load_official_state_dict({**official_sd, "m_source.extra": torch.zeros(1)})
    v2_legacy = torch.load(v3_model_dir.parents[1] / "cosyvoice2-tiny/model/hift.pt", weights_only=True, mmap=True)
    with pytest.raises(ModelError, match=r"conv_pre\.weight_v has shape \[32, 80, 7\], expected \[32, 80, 5\]"):
        model.load_official_state_dict(v2_legacy)
