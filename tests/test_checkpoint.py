"""Model directories: HyperPyYAML reading, ModelConfig, official/converted loading, convert, inspect, errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from voiceclone.errors import ModelError, UsageError
from voiceclone.loading.config import ModelConfig, read_config
from voiceclone.loading.convert import convert, inspect
from voiceclone.loading.hyperpyyaml import YamlCall, read_hyperpyyaml
from voiceclone.loading.layout import CONVERTED_CONFIG, load_pt, load_safetensors
from voiceclone.loading.load import load_model
from voiceclone.models.hift import fold_weight_norm


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
other: !include:extra.yaml
"""
    data = read_hyperpyyaml(text)
    assert data["prod"] == 12
    assert data["path"] == "base/sub"
    assert data["call"] == YamlCall(
        "new", "pkg.mod.Cls", [], {"x": 3, "inner": YamlCall("name", "pkg.fn", [], {"y": 1e-06})}
    )
    assert data["seeded"] == YamlCall("apply", "torch.manual_seed", [1986], {})
    assert data["alias"] == data["call"]
    assert data["other"] == YamlCall("include", "extra.yaml", [], {})


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


def test_cosyvoice1_and_unknown_directories_are_refused_clearly(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "cosyvoice.yaml").write_text("sample_rate: 22050\n")
    with pytest.raises(ModelError, match="cosyvoice.yaml: CosyVoice1 .*not supported"):
        read_config(tmp_path / "v1")
    with pytest.raises(ModelError, match="no cosyvoice3.yaml, cosyvoice2.yaml or voiceclone.json"):
        read_config(tmp_path)


def test_inspect_official_fixture(v3_model_dir):
    report = inspect(v3_model_dir)
    assert (report["family"], report["format"], report["problems"]) == ("cosyvoice3", "official", [])
    assert report["config"]["flow"]["dit"]["dim"] == 64
    # the fixture README's parameter counts (the flow file also stores the 8-element rotary buffer)
    elements = {name: net["parameters"] for name, net in report["networks"].items()}
    assert elements == {"llm": 2_653_616, "flow": 763_328 + 8, "hift": 114_627}
    assert report["networks"]["hift"]["tensors"] == 328
    assert report["files"]["llm.pt"] == (v3_model_dir / "llm.pt").stat().st_size
    assert report["model_id"].startswith("cosyvoice3-")


def test_model_id_follows_content_not_file_dates(v3_model_dir, tmp_path):
    original = inspect(v3_model_dir)["model_id"]
    copy = tmp_path / "copy"
    shutil.copytree(v3_model_dir, copy)
    os.utime(copy / "llm.pt", (0, 0))
    assert inspect(copy)["model_id"] == original
    state = dict(load_pt(v3_model_dir / "flow.pt"))
    state["spk_embed_affine_layer.bias"] = state["spk_embed_affine_layer.bias"] + 1
    torch.save(state, copy / "flow.pt")
    assert inspect(copy)["model_id"] != original


def test_inspect_reports_missing_files(v3_model_dir, tmp_path):
    model = link_copy(v3_model_dir, tmp_path / "m", replace=("campplus.onnx", "CosyVoice-BlankEN/model.safetensors"))
    report = inspect(model)
    assert report["problems"] == ["campplus.onnx: missing"]  # BlankEN's model.safetensors is only a note
    assert any("model.safetensors absent: only the reference's loader needs it" in n for n in report["notes"])


def test_inspect_finds_a_cut_weight_file(v3_model_dir, tmp_path):
    model = link_copy(v3_model_dir, tmp_path / "m", replace=("llm.pt",))
    (model / "llm.pt").write_bytes((v3_model_dir / "llm.pt").read_bytes()[:5000])
    report = inspect(model)
    assert len(report["problems"]) == 1 and report["problems"][0].startswith("llm.pt: not a complete pt file")
    assert set(report["networks"]) == {"flow", "hift"} and report["model_id"] is None


def test_load_pt_refuses_pickled_objects(tmp_path):
    torch.save({"a": torch.ones(2), "b": [1, 2]}, tmp_path / "x.pt")
    with pytest.raises(ModelError, match="x.pt: not a state dict of tensors"):
        load_pt(tmp_path / "x.pt")


# ---------------------------------------------------------------------------------------------------------------------
# Loading, converting.


@pytest.fixture(scope="module")
def official(v3_model_dir):
    return load_model(v3_model_dir)


@pytest.fixture(scope="module")
def converted_dir(v3_model_dir, tmp_path_factory) -> Path:
    return convert(v3_model_dir, tmp_path_factory.mktemp("conv") / "converted")


def stage_outputs(model) -> dict[str, torch.Tensor]:
    """LM logits, flow mel and HiFT wave of one small fixed input."""
    prefix = model.lm.prefix_embeds([13, 474], [40, 1079, 264], [5, 600, 6000, 17])
    tokens = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]) * 97
    prompt_feat = torch.linspace(-4, 1, 8 * 80).reshape(8, 80)
    embedding = torch.linspace(-1, 1, 192)[None]
    mel = model.flow.inference([tokens], [tokens[:4]], [prompt_feat], embedding)[0]
    return {
        "logits": model.lm.teacher_forced_logits(prefix, [7, 8, 9]),
        "mel": mel,
        "wave": model.hift.inference([mel])[0],
    }


def test_load_official_fixture(official, v3_model_dir):
    assert official.config == read_config(v3_model_dir)
    assert official.model_id == inspect(v3_model_dir)["model_id"]
    assert official.tokenizer.endofprompt_id == 151646
    for name, module in (("llm", official.lm), ("flow", official.flow)):
        saved, ours = load_pt(v3_model_dir / f"{name}.pt"), module.official_state_dict()
        assert saved.keys() == ours.keys()
        assert all(torch.equal(saved[k], ours[k]) for k in saved), name
    saved, ours = load_pt(v3_model_dir / "hift.pt"), official.hift.state_dict()
    for key, value in saved.items():
        if key.endswith("original1"):
            module = key.removesuffix(".parametrizations.weight.original1")
            weight = ours[f"{module}.weight"]
            folded = fold_weight_norm(saved[f"{module}.parametrizations.weight.original0"], value, weight.dtype)
            assert torch.equal(weight, folded), key
        elif not key.endswith("original0"):
            assert torch.equal(ours[key], value.to(ours[key].dtype)), key


def test_legacy_hift_weight_norm_form_loads_the_same(official, v3_model_dir, tmp_path):
    model = link_copy(v3_model_dir, tmp_path / "m", replace=("hift.pt",))
    legacy = {
        "generator."
        + k.replace(".parametrizations.weight.original0", ".weight_g").replace(
            ".parametrizations.weight.original1", ".weight_v"
        ): v
        for k, v in load_pt(v3_model_dir / "hift.pt").items()
    }
    assert any(k.endswith(".weight_g") for k in legacy)
    torch.save(legacy, model / "hift.pt")
    loaded = load_model(model)
    ours, reference = loaded.hift.state_dict(), official.hift.state_dict()
    assert ours.keys() == reference.keys() and all(torch.equal(ours[k], reference[k]) for k in ours)
    assert loaded.model_id != official.model_id


def test_convert_round_trip(official, converted_dir, v3_model_dir):
    info = json.loads((converted_dir / CONVERTED_CONFIG).read_text())
    assert (converted_dir / CONVERTED_CONFIG).stat().st_size < 8192
    assert info["format_version"] == 1 and info["source"]["llm_file"] == "llm.pt"
    loaded = load_model(converted_dir)
    assert loaded.config == official.config
    assert loaded.model_id == official.model_id  # the same weights resume each other's runs
    for name in ("lm", "flow", "hift"):
        a, b = getattr(official, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert "llm.model.lm_head.weight" not in load_safetensors(converted_dir / "llm.safetensors")
    assert not any("parametrizations" in k for k in load_safetensors(converted_dir / "hift.safetensors"))
    expected, got = stage_outputs(official), stage_outputs(loaded)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert expected["wave"].abs().max() > 0
    for name in ("campplus.onnx", "speech_tokenizer_v3.onnx", "CosyVoice-BlankEN/vocab.json"):
        assert (converted_dir / name).read_bytes() == (v3_model_dir / name).read_bytes()
    report = inspect(converted_dir)
    assert (report["format"], report["problems"], report["model_id"]) == ("converted", [], official.model_id)
    assert report["networks"]["hift"]["parameters"] < inspect(v3_model_dir)["networks"]["hift"]["parameters"]


def test_convert_refuses_existing_output_and_leaves_no_temporaries(v3_model_dir, converted_dir):
    with pytest.raises(UsageError, match="already exists; pass --overwrite to replace it"):
        convert(v3_model_dir, converted_dir)
    with pytest.raises(ModelError, match="already a converted directory"):
        convert(converted_dir, converted_dir.parent / "again")
    assert [p.name for p in converted_dir.parent.iterdir()] == ["converted"]


def _truncate(path: Path, source: Path) -> None:
    path.write_bytes(source.read_bytes()[: source.stat().st_size // 2])


def _wrong_shape(path: Path, source: Path) -> None:
    state = dict(load_pt(source))
    state["pre_lookahead_layer.conv1.bias"] = torch.zeros(65)
    torch.save(state, path)


@pytest.mark.parametrize(
    ("file", "damage", "message"),
    [
        ("hift.pt", None, r"hift\.pt: missing"),
        ("campplus.onnx", None, r"campplus\.onnx: missing"),
        ("CosyVoice-BlankEN/vocab.json", None, r"vocab\.json: missing"),
        ("flow.pt", _truncate, r"flow\.pt: not a readable PyTorch checkpoint"),
        ("flow.pt", _wrong_shape, r"flow\.pt: .*pre_lookahead_layer\.conv1\.bias.*shape"),
    ],
)
def test_load_errors_name_the_file(v3_model_dir, tmp_path, file, damage, message):
    model = link_copy(v3_model_dir, tmp_path / "m", replace=(file,))
    if damage:
        damage(model / file, v3_model_dir / file)
    with pytest.raises(ModelError, match=message) as info:
        load_model(model)
    assert "\n" not in str(info.value) and str(model) in str(info.value)


def test_load_rl_file_on_request(v3_model_dir, tmp_path):
    model = link_copy(v3_model_dir, tmp_path / "m")
    with pytest.raises(ModelError, match=r"llm\.rl\.pt: missing"):
        load_model(model, llm_file="llm.rl.pt")
    os.symlink((v3_model_dir / "llm.pt").resolve(), model / "llm.rl.pt")
    assert load_model(model, llm_file="llm.rl.pt").config == read_config(v3_model_dir)


@pytest.mark.parametrize("damage", ["missing", "garbled"])
def test_converted_errors_name_the_file(converted_dir, tmp_path, damage):
    model = link_copy(converted_dir, tmp_path / "c", replace=("flow.safetensors",))
    if damage == "garbled":
        (model / "flow.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ModelError, match=r"flow\.safetensors: (missing|not a readable safetensors)"):
        load_model(model)


def test_converted_config_version_checked(converted_dir, tmp_path):
    model = link_copy(converted_dir, tmp_path / "c", replace=(CONVERTED_CONFIG,))
    info = json.loads((converted_dir / CONVERTED_CONFIG).read_text())
    (model / CONVERTED_CONFIG).write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(ModelError, match="voiceclone.json: .*convert the model again"):
        read_config(model)
