"""CosyVoice3 flow (pre-lookahead + DiT CFM) against the reference's own outputs on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from voiceclone.errors import ModelError
from voiceclone.models.flow import Flow

E2E_CASES = ["prompt_en_seed1234", "prompt_en_seed4321", "prompt_zh_seed1234", "prompt_zh_seed4321"]


@pytest.fixture(scope="module")
def flow_sd(v3_model_dir) -> dict[str, torch.Tensor]:
    return torch.load(v3_model_dir / "flow.pt", weights_only=True, mmap=True)


@pytest.fixture(scope="module")
def flow(v3_config, flow_sd) -> Flow:
    model = Flow(v3_config.flow).eval()
    model.load_official_state_dict(flow_sd)
    return model


@pytest.fixture(scope="module")
def case(v3_cases) -> dict[str, torch.Tensor]:
    return load_file(v3_cases / "flow.safetensors")


def run_case(flow: Flow, case: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
    (mel,) = flow.inference(
        [case["in_token"][0]], [case["in_prompt_token"][0]], [case["in_prompt_feat"][0]], case["in_embedding"], **kwargs
    )
    return mel


def e2e_row(v3_cases: Path, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens, prompt tokens, prompt mel, embedding, expected mel) of one e2e case."""
    e2e = load_file(v3_cases / f"e2e_{name}.safetensors")
    front = load_file(v3_cases / f"frontend_{name.rsplit('_', 1)[0]}.safetensors")
    return (
        e2e["flow_tokens"][0],
        front["flow_prompt_speech_token"][0],
        front["prompt_speech_feat"][0],
        front["flow_embedding"][0],
        e2e["flow_mel"][0],
    )


def test_every_e2e_case_is_covered(v3_cases):
    assert sorted(p.stem.removeprefix("e2e_") for p in v3_cases.glob("e2e_*.safetensors")) == E2E_CASES


def test_config_read_from_yaml(v3_config):
    config = v3_config.flow
    assert (config.dit.dim, config.dit.depth, config.dit.heads, config.dit.dim_head) == (64, 2, 4, 16)
    assert config.pre_lookahead_channels == 64 and config.dit.static_chunk_size == 50


def test_noise_table_is_reference_rand_noise(flow, case, v3_cases):
    info = json.loads((v3_cases / "flow.json").read_text())
    assert list(flow.noise.table.shape) == info["rand_noise_shape"]
    assert torch.equal(flow.noise.table[:, :, :256], case["rand_noise_head"])
    assert abs(flow.noise.table.double().sum().item() - info["rand_noise_sum_f64"]) < 1e-6


def test_official_state_dict_round_trip(flow, flow_sd):
    official = flow.official_state_dict()
    assert list(official) == list(flow_sd)
    assert all(torch.equal(official[k], flow_sd[k]) for k in flow_sd)


def test_load_rejects_bad_keys(v3_config, flow_sd):
    model = Flow(v3_config.flow)
    missing = dict(flow_sd)
    del missing["decoder.estimator.rotary_embed.inv_freq"]
    with pytest.raises(ModelError, match="missing key 'decoder.estimator.rotary_embed.inv_freq'"):
        model.load_official_state_dict(missing)
    with pytest.raises(ModelError, match="unexpected key 'decoder.rand_noise'"):
        model.load_official_state_dict({**flow_sd, "decoder.rand_noise": torch.zeros(1)})
    key = "decoder.estimator.transformer_blocks.1.attn.to_k.bias"
    with pytest.raises(ModelError, match=f"key '{key}' has shape"):
        model.load_official_state_dict({**flow_sd, key: torch.zeros(3)})


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("mel", {}),
        ("mel_streaming_finalize", {"streaming": True}),
        ("mel_streaming_nonfinal", {"streaming": True, "finalize": False}),
    ],
)
def test_mel_matches_reference(flow, case, key, options):
    mel = run_case(flow, case, **options)
    expected = case[key][0]
    assert mel.dtype == torch.float32 and mel.shape == expected.shape
    assert (mel - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", E2E_CASES)
def test_e2e_flow_mel(flow, v3_cases, name):
    tokens, prompt_tokens, prompt_feat, embedding, expected = e2e_row(v3_cases, name)
    (mel,) = flow.inference([tokens], [prompt_tokens], [prompt_feat], embedding[None])
    assert mel.shape == expected.shape == (80, 2 * len(tokens))
    assert (mel - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("streaming", [False, True])
def test_batch_rows_equal_their_batch_one_result(flow, v3_cases, streaming):
    rows = [e2e_row(v3_cases, name) for name in E2E_CASES[:3]]
    rows.append((rows[2][0][:45],) + e2e_row(v3_cases, "prompt_en_seed1234")[1:])  # zh tokens, en prompt
    rows[0] = (rows[0][0][:53],) + rows[0][1:]
    args = [list(column) for column in zip(*[row[:3] for row in rows], strict=True)]
    embeddings = torch.stack([row[3] for row in rows])
    batched = flow.inference(*args, embeddings, streaming=streaming)
    assert len({mel.shape[1] for mel in batched}) == len(rows)
    for i, row in enumerate(rows):
        (alone,) = flow.inference([row[0]], [row[1]], [row[2]], row[3][None], streaming=streaming)
        assert batched[i].shape == alone.shape
        assert (batched[i] - alone).abs().max().item() < 1e-5


def test_bfloat16_weights_keep_float32_positions_and_output(v3_config, flow_sd, case):
    model = Flow(v3_config.flow).eval()
    model.load_official_state_dict(flow_sd)
    model.to(torch.bfloat16)
    assert model.estimator.rotary_embed.inv_freq.dtype == torch.float32
    mel = run_case(model, case)
    assert mel.dtype == torch.float32
    error = (mel - case["mel"][0]).abs()
    assert error.mean().item() < 0.01 and error.max().item() < 0.1  # mel std is about 1.3


def test_flops_equal_counted_matmul_flops(flow):
    dit, frames, rows = flow.estimator, 120, 4
    x = torch.randn(rows, frames, 80, generator=torch.Generator().manual_seed(0))
    modulation = [m[0] for m in dit.modulations(torch.tensor([0.3]))]
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        dit(x, None, x, modulation, x[:, 0], x)  # the math backend shows attention as matmuls to the counter
    assert dit.flops(frames, rows) == counter.get_total_flops()
