"""CosyVoice2 flow (conformer encoder + causal U-Net CFM) against the reference's own outputs on the tiny model."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from voiceclone.errors import ModelError
from voiceclone.models.conformer import RelPositionAttention, relative_positions
from voiceclone.models.flow2 import Flow2, Flow2Config

MEL_TOL = 1e-4


@pytest.fixture(scope="module")
def flow_sd(v2_model_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(v2_model_dir / "flow.pt", weights_only=True, mmap=True)


@pytest.fixture(scope="module")
def case(v2_cases: Path) -> dict[str, torch.Tensor]:
    return load_file(v2_cases / "flow.safetensors")


def run_case(flow: Flow2, case: dict[str, torch.Tensor], **kwargs) -> torch.Tensor:
    (mel,) = flow.inference(
        [case["in_token"][0]], [case["in_prompt_token"][0]], [case["in_prompt_feat"][0]], case["in_embedding"], **kwargs
    )
    return mel


def e2e_row(cases: Path, name: str) -> tuple[torch.Tensor, ...]:
    """(tokens, prompt tokens, prompt mel, embedding, expected mel) of one e2e case."""
    e2e = load_file(cases / f"e2e_{name}.safetensors")
    front = load_file(cases / f"frontend_{name.rsplit('_', 1)[0]}.safetensors")
    return (
        e2e["flow_tokens"][0],
        front["flow_prompt_speech_token"][0],
        front["prompt_speech_feat"][0],
        front["flow_embedding"][0],
        e2e["flow_mel"][0],
    )


def test_config_read_from_yaml(v2_configs):
    encoder, estimator = v2_configs.flow.encoder, v2_configs.flow.estimator
    assert (encoder.output_size, encoder.attention_heads, encoder.linear_units, encoder.num_blocks) == (512, 8, 32, 1)
    assert (estimator.channels, estimator.num_heads, estimator.attention_head_dim) == (64, 2, 16)
    assert (estimator.n_blocks, estimator.num_mid_blocks, estimator.static_chunk_size) == (1, 2, 50)


def test_noise_table_is_reference_rand_noise(v2_flow, case, v2_cases):
    info = json.loads((v2_cases / "flow.json").read_text())
    assert list(v2_flow.noise.table.shape) == info["rand_noise_shape"]
    assert torch.equal(v2_flow.noise.table[:, :, :256], case["rand_noise_head"])


def test_official_state_dict_round_trip(v2_flow, flow_sd):
    official = v2_flow.official_state_dict()
    assert list(official) == list(flow_sd)
    assert all(torch.equal(official[k], flow_sd[k]) for k in flow_sd)


def test_load_rejects_bad_keys(v2_configs, flow_sd, v3_model_dir):
    model = Flow2(v2_configs.flow)
    key = "encoder.up_encoders.3.self_attn.pos_bias_v"
    with pytest.raises(ModelError, match=f"missing key '{key}'"):
        model.load_official_state_dict({k: v for k, v in flow_sd.items() if k != key})
    with pytest.raises(ModelError, match="unexpected key 'decoder.rand_noise'"):
        model.load_official_state_dict({**flow_sd, "decoder.rand_noise": torch.zeros(1)})
    key = "decoder.estimator.mid_blocks.1.1.0.attn1.to_k.weight"
    with pytest.raises(ModelError, match=f"key '{key}' has shape"):
        model.load_official_state_dict({**flow_sd, key: torch.zeros(3)})
    with pytest.raises(ModelError, match="flow.pt: missing key 'encoder.embed.out.0.weight'"):
        model.load_official_state_dict(torch.load(v3_model_dir / "flow.pt", weights_only=True, mmap=True))


def test_relative_position_attention_is_the_reference_formula():
    """SDPA with the shifted position term as a float mask equals ((q+u)k^T + rel_shift((q+v)P^T)) / sqrt(d)."""
    g = torch.Generator().manual_seed(0)
    layer = RelPositionAttention(heads=2, channels=8)
    for p in layer.parameters():
        p.data = torch.randn(p.shape, generator=g)
    x, frames = torch.randn(2, 5, 8, generator=g), 5
    visible = (torch.arange(frames) < torch.tensor([[5], [3]]))[:, None, None, :]
    table = relative_positions(frames, 8, x.device)
    with torch.no_grad():
        out = layer(x, table, visible)
        q = layer.linear_q(x).view(2, frames, 2, 4)
        k = layer.linear_k(x).view(2, frames, 2, 4).transpose(1, 2)
        v = layer.linear_v(x).view(2, frames, 2, 4).transpose(1, 2)
        p = layer.linear_pos(table).view(-1, 2, 4).transpose(0, 1)
        content = (q + layer.pos_bias_u).transpose(1, 2) @ k.transpose(-1, -2)
        full = (q + layer.pos_bias_v).transpose(1, 2) @ p.transpose(-1, -2)  # (B, H, T, 2T-1): distance T-1-col
        i, j = torch.arange(frames)[:, None], torch.arange(frames)[None, :]
        position = full.gather(-1, (frames - 1 - i + j).expand(2, 2, -1, -1))  # distance i - j
        scores = ((content + position) / math.sqrt(4)).masked_fill(~visible, -float("inf"))
        expected = layer.linear_out((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, frames, 8))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(table[frames - 1], torch.tensor([0.0, 1.0] * 4))  # distance 0: sin 0, cos 0


@pytest.mark.parametrize(
    ("key", "options"),
    [
        ("mel", {}),
        ("mel_streaming_finalize", {"streaming": True}),
        ("mel_streaming_nonfinal", {"streaming": True, "finalize": False}),
    ],
)
def test_mel_matches_reference(v2_flow, case, key, options):
    mel = run_case(v2_flow, case, **options)
    expected = case[key][0]
    assert mel.dtype == torch.float32 and mel.shape == expected.shape
    err = (mel - expected).abs().max().item()
    print(f"v2 flow {key}: max |mel - reference| = {err:.3g}")
    assert err < MEL_TOL


@pytest.mark.parametrize(("streaming", "finalize"), [(False, True), (True, False)])
def test_batch_rows_equal_their_batch_one_result(v2_flow, v2_cases, streaming, finalize):
    """Three rows of different prompt and token lengths: each equals its batch-1 result (padding never leaks)."""
    rows = [e2e_row(v2_cases, name) for name in ("prompt_en_seed1234", "prompt_zh_seed1234")]
    rows = [(rows[0][0][:53],) + rows[0][1:4], rows[1][:4], (rows[1][0][:29],) + rows[0][1:4]]
    args = [list(column) for column in zip(*[row[:3] for row in rows], strict=True)]
    embeddings = torch.stack([row[3] for row in rows])
    batched = v2_flow.inference(*args, embeddings, streaming=streaming, finalize=finalize)
    assert len({mel.shape[1] for mel in batched}) == len(rows)
    for i, row in enumerate(rows):
        (alone,) = v2_flow.inference([row[0]], [row[1]], [row[2]], row[3][None], streaming=streaming, finalize=finalize)
        assert batched[i].shape == alone.shape == (80, 2 * (len(row[0]) - (0 if finalize else 3)))
        assert (batched[i] - alone).abs().max().item() < 1e-5


def test_bfloat16_weights_keep_float32_output(v2_flow, case):
    model = copy.deepcopy(v2_flow).to(torch.bfloat16)
    args = [case["in_token"][0][:12]], [case["in_prompt_token"][0][:10]], [case["in_prompt_feat"][0][:20]]
    (mel,) = model.inference(*args, case["in_embedding"])
    (expected,) = v2_flow.inference(*args, case["in_embedding"])
    assert mel.dtype == torch.float32 and mel.shape == expected.shape == (80, 24)
    error = (mel - expected).abs()
    assert error.mean().item() < 0.05 and error.max().item() < 0.5  # mel std is about 1.9


def test_default_config_matches_released_v2_key_shapes(v2_released_shapes):
    """The default (CosyVoice2-0.5B) dimensions build exactly the released flow.pt keys and shapes."""
    with torch.device("meta"):
        model = Flow2(Flow2Config())
    assert {k: tuple(v.shape) for k, v in model.official_state_dict().items()} == v2_released_shapes["flow.pt"]


def test_unet_flops_equal_counted_matmul_flops(v2_flow):
    """The estimator's FLOP formula (for the benchmarks) equals torch's count of one call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    unet, frames, rows = v2_flow.estimator, 70, 3
    x = torch.randn(rows, 80, frames, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(rows, frames, dtype=torch.bool)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        unet(x, mask, x, torch.tensor(0.3), x[:, :, 0], x)  # the math backend shows attention as matmuls
    assert unet.flops(frames, rows) == counter.get_total_flops()
