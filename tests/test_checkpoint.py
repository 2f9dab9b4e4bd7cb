"""Model directories: HyperPyYAML reading, ModelConfig, official/converted loading, convert, inspect, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from voiceclone.checkpoint import (
    ModelConfig,
    YamlCall,
    inspect,
    read_config,
    read_hyperpyyaml,
)
from voiceclone.errors import ModelError


def link_copy(src: Path, dst: Path, replace: tuple[str, ...] = ()) -> Path:
    """A model directory whose files are symlinks to `src`, except `replace` (left out for the test to write)."""
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
        elif str(rel) not in replace:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), dst / rel)
    return dst


def test_hyperpyyaml_tags_become_data_and_refs_resolve():
    text = """
a: 3
b: 4
prod: !ref <a> * <b>
path: !ref <name>/sub
name: base
call: !new:pkg.mod.Cls
    x: !ref <a>
    inner: !name:pkg.fn
        y: 1e-06
seeded: !apply:torch.manual_seed [1986]
alias: !ref <call>
"""
    data = read_hyperpyyaml(text)
    assert data["prod"] == 12
    assert data["path"] == "base/sub"
    assert data["call"] == YamlCall(
        "new", "pkg.mod.Cls", [], {"x": 3, "inner": YamlCall("name", "pkg.fn", [], {"y": 1e-06})}
    )
    assert data["seeded"] == YamlCall("apply", "torch.manual_seed", [1986], {})
    assert data["alias"] == data["call"]


def test_hyperpyyaml_executes_nothing():
    marker = Path("/tmp/voiceclone_yaml_executed")
    data = read_hyperpyyaml(f"x: !apply:os.system ['touch {marker}']\n")
    assert data["x"] == YamlCall("apply", "os.system", [f"touch {marker}"], {})
    assert not marker.exists()
    with pytest.raises(Exception, match="python/name"):
        read_hyperpyyaml("y: !!python/name:os.system ''\n")


def test_read_config_fixture_dims(v3_model_dir):
    config = read_config(v3_model_dir)
    qwen = config.lm.qwen
    assert (config.family, config.sample_rate, config.token_frame_rate, config.token_mel_ratio) == (
        "cosyvoice3",
        24000,
        25,
        2,
    )
    assert (qwen.hidden_size, qwen.num_hidden_layers, qwen.num_attention_heads, qwen.num_key_value_heads) == (
        16,
        2,
        2,
        1,
    )
    assert (qwen.head_dim, qwen.intermediate_size, qwen.vocab_size, qwen.rope_theta) == (8, 48, 151936, 1e6)
    assert (config.lm.speech_token_size, config.lm.extra_tokens, config.lm.vocab_out) == (6561, 200, 6761)
    assert (config.lm.top_p, config.lm.top_k, config.lm.win_size, config.lm.tau_r) == (0.8, 25, 10, 0.1)
    dit = config.flow.dit
    assert config.flow.pre_lookahead_channels == 64
    assert (dit.dim, dit.depth, dit.heads, dit.dim_head, dit.ff_mult, dit.static_chunk_size) == (64, 2, 4, 16, 2, 50)
    assert (config.flow.inference_cfg_rate, config.flow.t_scheduler) == (0.7, "cosine")
    assert (config.hift.base_channels, config.hift.f0_cond_channels, config.hift.upsample_rates) == (32, 32, (8, 5, 3))
    assert (config.hift.istft_n_fft, config.hift.istft_hop_len, config.hift.conv_pre_look_right) == (16, 4, 4)
    assert (config.mel.n_fft, config.mel.hop_size, config.mel.fmax, config.mel.center) == (1920, 480, None, False)
    assert ModelConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_read_config_follows_the_files(v3_model_dir, tmp_path):
    model = link_copy(v3_model_dir, tmp_path / "m", replace=("cosyvoice3.yaml",))
    text = (v3_model_dir / "cosyvoice3.yaml").read_text()
    text = text.replace("dim: 64\n", "dim: 96\n").replace("base_channels: 32", "base_channels: 48")
    (model / "cosyvoice3.yaml").write_text(text.replace("chunk_size: 25 #", "chunk_size: 20 #"))
    config = read_config(model)
    assert (config.flow.dit.dim, config.hift.base_channels, config.flow.dit.static_chunk_size) == (96, 48, 40)


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("missing_dir", "nowhere"),
        ("missing_yaml", "cosyvoice3"),
        ("missing_llm", "llm.pt"),
        ("truncated_llm", "llm.pt"),
        ("missing_config_json", "config.json"),
        ("bad_yaml", "cosyvoice3.yaml"),
    ],
)
def test_read_config_errors_name_the_file(v3_model_dir, tmp_path, case, named):
    replace = {
        "missing_yaml": ("cosyvoice3.yaml",),
        "missing_llm": ("llm.pt",),
        "truncated_llm": ("llm.pt",),
        "missing_config_json": ("CosyVoice-BlankEN/config.json",),
        "bad_yaml": ("cosyvoice3.yaml",),
    }.get(case, ())
    model = tmp_path / "nowhere" if case == "missing_dir" else link_copy(v3_model_dir, tmp_path / "m", replace)
    if case == "truncated_llm":
        (model / "llm.pt").write_bytes((v3_model_dir / "llm.pt").read_bytes()[:100_000])
    if case == "bad_yaml":
        (model / "cosyvoice3.yaml").write_text("llm: !new:x.Y\n  a: [1, 2\n")
    with pytest.raises(ModelError, match=named) as info:
        read_config(model)
    assert "\n" not in str(info.value)


def test_cosyvoice2_directory_is_refused_clearly(v3_model_dir):
    v2 = v3_model_dir.parent.parent / "cosyvoice2-tiny" / "model"
    with pytest.raises(ModelError, match="cosyvoice2.yaml: CosyVoice2 .*not supported yet"):
        read_config(v2)


def test_inspect_official_fixture(v3_model_dir):
    report = inspect(v3_model_dir)
    assert (report["family"], report["format"], report["problems"]) == ("cosyvoice3", "official", [])
    assert report["config"]["flow"]["dit"]["dim"] == 64
    # the fixture README's parameter counts (the flow file also stores the 8-element rotary buffer)
    elements = {name: net["elements"] for name, net in report["networks"].items()}
    assert elements == {"llm": 2_653_616, "flow": 763_328 + 8, "hift": 114_627}
    assert report["networks"]["hift"]["tensors"] == 328
    assert report["files"]["llm.pt"] == (v3_model_dir / "llm.pt").stat().st_size
    assert report["model_id"].startswith("cosyvoice3-")


def test_inspect_reports_missing_files(v3_model_dir, tmp_path):
    model = link_copy(v3_model_dir, tmp_path / "m", replace=("campplus.onnx", "CosyVoice-BlankEN/model.safetensors"))
    problems = inspect(model)["problems"]
    assert any(p.startswith("campplus.onnx: missing") for p in problems)
    assert any("model.safetensors: missing (only the reference loader" in p for p in problems)


def test_load_pt_refuses_pickled_objects(tmp_path):
    from voiceclone.checkpoint import load_pt

    torch.save({"a": torch.ones(2), "b": [1, 2]}, tmp_path / "x.pt")
    with pytest.raises(ModelError, match="x.pt: not a state dict of tensors"):
        load_pt(tmp_path / "x.pt")
