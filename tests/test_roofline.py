"""benchmarks/roofline.py: the projection runs, labels itself as on paper, and its numbers add up."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch

from voiceclone.loading.demo import model_config
from voiceclone.models.dit import DiT

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def projection(tmp_path_factory) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "benchmarks"))
        roofline = importlib.import_module("roofline")
        out = tmp_path_factory.mktemp("roofline") / "projection.json"
        roofline.main(["--out", str(out), "--batch-sizes", "1", "16"])
    return json.loads(out.read_text())


def test_every_stage_is_the_slower_of_its_compute_and_memory_time(projection: dict):
    assert "projection on paper" in projection["label"].lower()
    gpus = {g["name"]: g for g in projection["gpus"]}
    rows = {r["name"]: r for r in projection["rows"]}
    assert len(projection["projections"]) == len(rows) * len(gpus) * 2
    for p in projection["projections"]:
        gpu, row = gpus[p["gpu"]], rows[p["row"]]
        for stage in p["stages"].values():
            peak = gpu["bf16_flops"] if stage["peak"] == "bf16" else gpu["tf32_flops"]
            compute, memory = stage["flops"] / peak, stage["bytes"] / gpu["bandwidth"]
            assert stage["seconds"] == pytest.approx(max(compute, memory))
            assert stage["bound"] == ("compute" if compute >= memory else "memory")
        assert p["seconds"] == pytest.approx(sum(s["seconds"] for s in p["stages"].values()))
        assert p["audio_seconds"] == pytest.approx(p["batch"] * row["speech_tokens"] / 25)
        assert p["rtf"] == pytest.approx(p["seconds"] / p["audio_seconds"])
        slowest = max(p["stages"], key=lambda name: p["stages"][name]["seconds"])
        assert p["bounded_by"] == f"{slowest} ({p['stages'][slowest]['bound']})" and p["lever"]


def test_work_follows_the_model_and_the_row(projection: dict):
    config = model_config("full")
    qwen, hidden = config.lm.qwen, config.lm.qwen.hidden_size
    kv = qwen.num_key_value_heads * qwen.head_dim
    per_layer = (hidden + 1) * hidden + 2 * (hidden + 1) * kv + hidden * hidden  # q, k, v (with biases), o
    per_layer += 3 * hidden * qwen.intermediate_size + 2 * hidden  # MLP, two RMSNorms
    weights = qwen.num_hidden_layers * per_layer + hidden + hidden * config.lm.vocab_out  # final norm, decoder
    assert projection["costs"]["lm_weight_bytes"] == 2 * weights  # bfloat16
    with torch.device("meta"):
        dit = DiT(config.flow.dit)
    rows = {r["name"]: r for r in projection["rows"]}
    e2e = json.loads((REPO / "benchmarks" / "results" / "e2e-cosyvoice3-full-cpu-avx512.json").read_text())
    run = next(r for r in e2e["runs"] if r["dtype"] == "float32" and r["batch_size"] == 1)
    typical = projection["rows"][0]
    assert typical["speech_tokens"] == pytest.approx(run["audio_seconds"] * 25 / run["rows"])
    by_key = {(p["gpu"], p["row"], p["batch"]): p for p in projection["projections"]}
    for (gpu, row_name, batch), p in by_key.items():
        row = rows[row_name]
        frames = 2 * (row["prompt_speech_tokens"] + row["speech_tokens"])
        assert p["stages"]["flow"]["flops"] == pytest.approx(10 * dit.flops(frames, 2 * batch))
        decode = p["stages"]["llm_decode"]
        assert decode["bytes"] > row["speech_tokens"] * 2 * weights  # the weights, once per step
        if batch == 16:
            single = by_key[(gpu, row_name, 1)]
            assert p["stages"]["flow"]["flops"] == pytest.approx(16 * single["stages"]["flow"]["flops"])
            assert decode["bytes"] < 1.2 * single["stages"]["llm_decode"]["bytes"]  # the weights dominate
            assert p["rtf"] < single["rtf"]


def test_cosyvoice2_projection_counts_the_unet(tmp_path):
    """`--family cosyvoice2`: the flow stage is 10 steps x CFG 2 of the U-Net's own FLOP formula."""
    from voiceclone.models.unet import CausalUNet

    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO / "benchmarks"))
        roofline = importlib.import_module("roofline")
        out = tmp_path / "projection.json"
        roofline.main(["--family", "cosyvoice2", "--out", str(out), "--batch-sizes", "1"])
    projection = json.loads(out.read_text())
    assert projection["model"].startswith("cosyvoice2 full size")
    with torch.device("meta"):
        unet = CausalUNet(model_config("full", "cosyvoice2").flow.estimator)
    for p in projection["projections"]:
        row = next(r for r in projection["rows"] if r["name"] == p["row"])
        frames = 2 * (row["prompt_speech_tokens"] + row["speech_tokens"])
        assert p["stages"]["flow"]["flops"] == pytest.approx(10 * unet.flops(frames, 2))
