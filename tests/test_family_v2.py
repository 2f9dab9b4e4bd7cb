"""CosyVoice2 through the one loader: family detection, config, loading, convert, inspect and the demo-v2 model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from voiceclone.loading import demo
from voiceclone.loading.config import ModelConfig, read_config
from voiceclone.loading.convert import convert, inspect
from voiceclone.loading.layout import family_of, load_pt
from voiceclone.loading.load import load_model, resolve_model
from voiceclone.loading.recipes import yaml_text
from voiceclone.models.flow2 import Flow2, Flow2Config
from voiceclone.models.hift import HiFTConfig
from voiceclone.models.hift2 import HiFT2
from voiceclone.models.lm import LMConfig
from voiceclone.models.qwen2 import Qwen2Config


@pytest.fixture(scope="module")
def official(v2_model_dir: Path):
    return load_model(v2_model_dir)


def test_config_is_what_the_recipe_says(v2_model_dir, v2_configs):
    """The loader's mapping equals the tests' own reading of cosyvoice2.yaml (conftest.read_v2_configs)."""
    config = read_config(v2_model_dir)
    assert (config.family, config.sample_rate, config.token_frame_rate, config.token_mel_ratio) == (
        "cosyvoice2",
        24000,
        25,
        2,
    )
    assert (config.lm, config.flow, config.hift, config.mel) == (
        v2_configs.lm,
        v2_configs.flow,
        v2_configs.hift,
        v2_configs.mel,
    )
    assert (config.lm.vocab_out, config.lm.first_stop_id, config.lm.decoder_bias, config.lm.sos_task_embedding) == (
        6564,
        6561,
        True,
        True,
    )
    assert ModelConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_load_official_fixture(official, v2_model_dir, v2_lm, v2_flow, v2_hift):
    assert family_of(v2_model_dir) == "cosyvoice2"
    assert isinstance(official.flow, Flow2) and isinstance(official.hift, HiFT2)
    assert official.model_id.startswith("cosyvoice2-") and official.model_id == inspect(v2_model_dir)["model_id"]
    assert len(official.tokenizer) == 151663  # the v2 specials only
    for ours, theirs in ((official.lm, v2_lm), (official.flow, v2_flow), (official.hift, v2_hift)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), type(ours).__name__
    assert official.prompts.frontend.speech_tokenizer.path.name == "speech_tokenizer_v2.onnx"


def test_convert_and_inspect_round_trip(official, v2_model_dir, tmp_path):
    converted = convert(v2_model_dir, tmp_path / "converted")
    assert sorted(p.name for p in converted.iterdir()) == [
        "CosyVoice-BlankEN",
        "campplus.onnx",
        "flow.safetensors",
        "hift.safetensors",
        "llm.safetensors",
        "speech_tokenizer_v2.onnx",
        "voiceclone.json",
    ]
    loaded = load_model(converted)
    assert loaded.config == official.config and loaded.model_id == official.model_id
    for name in ("lm", "flow", "hift"):
        a, b = getattr(official, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    report = inspect(converted)
    assert (report["family"], report["format"], report["problems"]) == ("cosyvoice2", "converted", [])
    report = inspect(v2_model_dir)
    assert (report["family"], report["format"], report["problems"]) == ("cosyvoice2", "official", [])
    assert report["config"]["flow"]["estimator"]["channels"] == 64


def test_missing_v2_tokenizer_is_named(v2_model_dir, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    for path in v2_model_dir.iterdir():
        if path.name != "speech_tokenizer_v2.onnx":
            (model / path.name).symlink_to(path)
    assert inspect(model)["problems"] == ["speech_tokenizer_v2.onnx: missing"]


def test_demo_v2_has_the_fixture_layout(v2_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    built = resolve_model("demo-v2")
    assert built == tmp_path / "voiceclone" / f"demo-v2-{demo.DEMO_FORMAT}"
    assert read_config(built) == read_config(v2_model_dir) == demo.model_config("tiny", "cosyvoice2")
    for name in ("llm", "flow", "hift"):
        ours, theirs = load_pt(built / f"{name}.pt"), load_pt(v2_model_dir / f"{name}.pt")
        if name == "hift":  # the fixture keeps the released file's legacy weight_g/weight_v names
            theirs = {k.replace(".weight_g", ".parametrizations.weight.original0"): v for k, v in theirs.items()}
            theirs = {k.replace(".weight_v", ".parametrizations.weight.original1"): v for k, v in theirs.items()}
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}, name
    report = inspect(built)
    assert report["problems"] == [] and report["family"] == "cosyvoice2"
    assert resolve_model("demo-v2") == built and resolve_model("demo") != built


def test_full_v2_config_is_the_release_shape():
    """`make_model.py --family cosyvoice2 --size full` uses the configs whose networks test_lm_v2, test_flow_v2 and
    test_hift_v2 check against the released CosyVoice2-0.5B keys and shapes."""
    config = demo.model_config("full", "cosyvoice2")
    assert config.lm == LMConfig(qwen=Qwen2Config(), extra_tokens=3, decoder_bias=True, sos_task_embedding=True)
    assert (config.flow, config.hift, config.mel.fmax) == (Flow2Config(), HiFTConfig(), 8000.0)
    assert "CausalMaskedDiffWithXvec" in yaml_text(config, demo.DEMO_FORMAT)


def test_quickstart_runs_on_demo_v2(tmp_path, monkeypatch):
    """`voiceclone synth examples/manifest.csv --model demo-v2` and `check-durations` on its output (the dry run and
    the run take the name like `demo`)."""
    from typer.testing import CliRunner

    from voiceclone.cli import app

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    manifest, out = Path(__file__).resolve().parents[1] / "examples" / "manifest.csv", tmp_path / "out"

    def invoke(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    dry = invoke("synth", manifest, "--model", "demo-v2", "--out", out, "--dry-run")
    assert dry.exit_code == 0 and "model demo-v2;" in dry.output and not out.exists()
    run = invoke("synth", manifest, "--model", "demo-v2", "--out", out, "--limit", "2", "--batch-size", "2")
    assert run.exit_code == 0, run.output
    assert "--model demo-v2 has random weights" in run.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == 2 and summary["model_id"].startswith("cosyvoice2-") and summary["hub"] is None
    check = invoke("check-durations", out, "--quiet")
    assert check.exit_code == 0, check.output
