"""Random-weight model directories in the official layout: determinism, tokenizer layout, ONNX stand-ins, loading."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from voiceclone.errors import UsageError
from voiceclone.frontend.text import Tokenizer
from voiceclone.loading import demo
from voiceclone.loading.config import read_config
from voiceclone.loading.convert import inspect
from voiceclone.loading.layout import load_pt
from voiceclone.loading.load import load_model, resolve_model
from voiceclone.loading.recipes import yaml_text


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return demo.build_model_dir(tmp_path_factory.mktemp("demo") / "tiny", size="tiny", seed=7)


def test_build_is_deterministic(tiny_dir, tmp_path):
    again = demo.build_model_dir(tmp_path / "again", size="tiny", seed=7)
    assert file_hashes(again) == file_hashes(tiny_dir)
    other = demo.build_model_dir(tmp_path / "other", size="tiny", seed=8)
    differ = {k for k, v in file_hashes(other).items() if file_hashes(tiny_dir)[k] != v}
    assert {"llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v3.onnx"} <= differ
    assert "cosyvoice3.yaml" not in differ


def test_layout_and_config_round_trip(tiny_dir, v3_model_dir):
    names = {"cosyvoice3.yaml", "llm.pt", "flow.pt", "hift.pt", "campplus.onnx", "speech_tokenizer_v3.onnx"}
    assert names <= {p.name for p in tiny_dir.iterdir()}
    blank = {"config.json", "generation_config.json", "tokenizer_config.json", "vocab.json", "merges.txt"}
    assert blank == {p.name for p in (tiny_dir / "CosyVoice-BlankEN").iterdir()}
    config = read_config(tiny_dir)
    assert config == demo.model_config("tiny")
    # same dimensions as the reference fixture
    assert config == read_config(v3_model_dir)
    # same key set and shapes as the fixture's official files
    for name in ("llm", "flow", "hift"):
        ours, theirs = load_pt(tiny_dir / f"{name}.pt"), load_pt(v3_model_dir / f"{name}.pt")
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}, name


def test_tied_embedding_written_once(tiny_dir):
    state = load_pt(tiny_dir / "llm.pt")
    embed, head = state["llm.model.model.embed_tokens.weight"], state["llm.model.lm_head.weight"]
    assert embed.untyped_storage().data_ptr() == head.untyped_storage().data_ptr()
    assert (tiny_dir / "llm.pt").stat().st_size < 1.2 * embed.numel() * 4


def test_weights_are_sane(tiny_dir):
    flow, hift = load_pt(tiny_dir / "flow.pt"), load_pt(tiny_dir / "hift.pt")
    for w in (flow["decoder.estimator.transformer_blocks.0.attn.to_q.weight"], hift["source_downs.0.weight"]):
        fan_in = w[0].numel()
        assert abs(w.std().item() * (3 * fan_in) ** 0.5 - 1) < 0.1
    alpha = hift["resblocks.0.activations1.0.alpha"]
    assert alpha.min() > 0.7 and alpha.max() < 1.3 and alpha.std() > 0.01
    assert torch.isfinite(torch.cat([t.flatten().float() for t in [*flow.values(), *hift.values()]])).all()


def test_tokenizer_specials_land_on_qwen_ids(tiny_dir):
    vocab = json.loads((tiny_dir / "CosyVoice-BlankEN" / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 151643 and sorted(vocab.values()) == list(range(151643))
    tokenizer = Tokenizer.from_dir(tiny_dir / "CosyVoice-BlankEN")
    assert tokenizer.encode("<|endoftext|><|im_start|><|im_end|><|endofprompt|>") == [151643, 151644, 151645, 151646]
    assert tokenizer.endofprompt_id == 151646
    assert len(tokenizer) == 151924
    for text in ("The quick brown fox.", "今天天气很好。", "Zebra ξ 🙂"):
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert max(ids) < 640  # trained entries only: fillers are unreachable
    assert len(tokenizer.encode("the weather")) < len("the weather")  # merges were learned


def test_onnx_standins_shapes(tiny_dir):
    options = ["CPUExecutionProvider"]
    campplus = ort.InferenceSession(str(tiny_dir / "campplus.onnx"), providers=options)
    assert [i.name for i in campplus.get_inputs()] == ["input"]
    emb = campplus.run(None, {"input": np.random.default_rng(0).standard_normal((2, 57, 80), dtype=np.float32)})[0]
    assert emb.shape == (2, 192) and emb.dtype == np.float32 and np.isfinite(emb).all()

    tokenizer = ort.InferenceSession(str(tiny_dir / "speech_tokenizer_v3.onnx"), providers=options)
    assert [i.name for i in tokenizer.get_inputs()] == ["feats", "feats_length"]
    rng = np.random.default_rng(1)
    for frames in (1, 2, 3, 5, 8, 101, 300):
        feats = rng.standard_normal((1, 128, frames), dtype=np.float32)
        ids = tokenizer.run(None, {"feats": feats, "feats_length": np.array([frames], dtype=np.int32)})[0]
        assert ids.dtype == np.int64 and ids.shape == (1, math.ceil(math.ceil(frames / 2) / 2))
        assert ((ids >= 0) & (ids < 6561)).all()
    assert len(np.unique(ids)) > 10


def test_speech_tokenizer_masks_frames_past_length(tiny_dir):
    session = ort.InferenceSession(str(tiny_dir / "speech_tokenizer_v3.onnx"), providers=["CPUExecutionProvider"])
    feats = np.random.default_rng(2).standard_normal((1, 128, 40), dtype=np.float32)
    cut = feats.copy()
    cut[:, :, 20:] = 0
    full = session.run(None, {"feats": feats, "feats_length": np.array([20], dtype=np.int32)})[0]
    zeroed = session.run(None, {"feats": cut, "feats_length": np.array([40], dtype=np.int32)})[0]
    np.testing.assert_array_equal(full, zeroed)


def test_loads_and_runs(tiny_dir):
    model = load_model(tiny_dir)
    assert model.model_id.startswith("cosyvoice3-")
    tokens = [torch.arange(10) * 37 % 6561]
    mel = model.flow.inference(tokens, [torch.arange(4)], [torch.zeros(8, 80)], torch.zeros(1, 192))[0]
    assert mel.shape == (80, 20) and torch.isfinite(mel).all()
    wav = model.hift.inference([mel])[0]
    assert wav.shape == (20 * 480,) and torch.isfinite(wav).all()
    report = inspect(tiny_dir)
    assert report["problems"] == [] and report["model_id"] == model.model_id  # a fresh demo model has no problem
    assert report["notes"] == ["CosyVoice-BlankEN/model.safetensors absent: only the reference's loader needs it"]


def test_demo_model_dir_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = demo.demo_model_dir()
    assert first == tmp_path / "voiceclone" / f"demo-{demo.DEMO_FORMAT}"
    stamp = (first / "llm.pt").stat().st_mtime_ns
    assert demo.demo_model_dir() == first and (first / "llm.pt").stat().st_mtime_ns == stamp
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no temporary folders left
    assert load_model(resolve_model("demo")).model_dir == first


def test_demo_model_dir_race_keeps_the_winner(tmp_path, monkeypatch):
    """A builder that finishes second drops its copy and uses the directory that was renamed into place first."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    target = tmp_path / "voiceclone" / f"demo-{demo.DEMO_FORMAT}"
    real_build = demo.build_model_dir

    def build_while_a_rival_finishes(out, **kwargs):
        real_build(out, **kwargs)
        real_build(target, **kwargs)
        (target / "rival").write_text("first")

    monkeypatch.setattr(demo, "build_model_dir", build_while_a_rival_finishes)
    assert demo.demo_model_dir() == target
    assert (target / "rival").read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_unknown_size_or_family():
    with pytest.raises(UsageError, match="size"):
        demo.model_config("huge")
    with pytest.raises(UsageError, match="family"):
        demo.build_model_dir("/nonexistent/x", family="cosyvoice1")


def test_full_config_is_the_release_shape():
    config = demo.model_config("full")
    qwen = config.lm.qwen
    assert (qwen.hidden_size, qwen.num_hidden_layers, qwen.num_attention_heads, qwen.num_key_value_heads) == (
        896,
        24,
        14,
        2,
    )
    assert (qwen.intermediate_size, qwen.vocab_size) == (4864, 151936)
    assert (config.flow.dit.dim, config.flow.dit.depth, config.flow.dit.heads, config.flow.dit.dim_head) == (
        1024,
        22,
        16,
        64,
    )
    assert (config.hift.base_channels, config.hift.f0_cond_channels) == (512, 512)
    text = yaml_text(config, demo.DEMO_FORMAT)
    assert "dim: 1024" in text and "base_channels: 512" in text
