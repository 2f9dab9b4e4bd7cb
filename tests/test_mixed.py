"""`--dtype mixed`: the LLM in float32 (the tokens of a float32 run at any batch size), the flow and the vocoder in
bfloat16; every stage's dtype in the report, the summary and the resume fingerprint.

This CPU may lack native bfloat16, where `mixed` runs float32; the `native_bf16` fixture makes `mixed` choose bfloat16
anyway, so the bfloat16 flow and vocoder really run here (emulated bfloat16 rounds as native does, only slower).
How far mixed audio is from float32 is measured, not asserted: benchmarks/bench_mixed.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from voiceclone import dryrun
from voiceclone.cli import app
from voiceclone.engine import runtime
from voiceclone.engine.engine import Engine, EngineSettings
from voiceclone.errors import UsageError
from voiceclone.io.manifest import Row, resolve
from voiceclone.io.report import row_fingerprint
from voiceclone.loading.load import load_model
from voiceclone.models.network import StageDtypes
from voiceclone.synth import SynthOptions, output_settings

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
MIXED_BF16 = StageDtypes(llm=torch.float32, flow=torch.bfloat16, vocoder=torch.bfloat16)
CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch):
    """`--dtype mixed` takes this CPU for one with bfloat16 arithmetic."""
    monkeypatch.setattr(runtime, "cpu_has_bf16_dot", lambda: True)


def test_mixed_dtypes_per_device(monkeypatch, capsys):
    monkeypatch.setattr(runtime, "cpu_has_bf16_dot", lambda: True)
    assert runtime.resolve_dtypes("mixed", CPU) == MIXED_BF16
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(runtime, "cpu_has_bf16_dot", lambda: False)
    assert runtime.resolve_dtypes("mixed", CPU) == StageDtypes()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("note: --dtype mixed: this CPU has no bfloat16 arithmetic") and "float32" in line
    for has_bf16, half in [(True, torch.bfloat16), (False, torch.float16)]:
        monkeypatch.setattr(runtime.cuda, "has_bf16", lambda has=has_bf16: has)
        assert runtime.resolve_dtypes("mixed", torch.device("cuda", 0)) == StageDtypes(torch.float32, half, half)
    assert runtime.resolve_dtypes("bfloat16", CPU) == StageDtypes(torch.bfloat16, torch.bfloat16, torch.float32)
    assert runtime.resolve_dtypes("auto", CPU) == StageDtypes()
    assert runtime.resolve_runtime("cpu", "mixed").dtype == torch.float32
    with pytest.raises(UsageError, match="choose auto, float32, bfloat16, float16 or mixed"):
        runtime.resolve_dtypes("half", CPU)


def test_fingerprint_follows_the_stage_dtypes_not_the_flag():
    opts = SynthOptions(model="m", out=Path("o"))
    names = {
        "float32": StageDtypes().names(),
        "mixed": MIXED_BF16.names(),
        "bfloat16": StageDtypes.of(torch.bfloat16).names(),
    }
    assert names["mixed"] == {"llm": "float32", "flow": "bfloat16", "vocoder": "bfloat16"}
    prints = {k: row_fingerprint("p" * 64, "a", "b", 1, "m", output_settings(opts, v)) for k, v in names.items()}
    assert len(set(prints.values())) == 3


def test_mixed_gives_the_float32_tokens_on_the_tiny_fixture(v3_model_dir: Path, v3_cases: Path):
    fp32 = load_model(v3_model_dir, "cpu", torch.float32)
    mixed = load_model(v3_model_dir, "cpu", MIXED_BF16)
    assert mixed.dtypes == MIXED_BF16 and mixed.dtype == torch.float32
    assert mixed.lm.llm_decoder.weight.dtype == torch.float32
    assert mixed.flow.estimator.proj_out.weight.dtype == torch.bfloat16
    assert mixed.hift.compute_dtype == torch.bfloat16
    assert mixed.hift.f0_predictor.classifier.weight.dtype == torch.float64  # pinned, as in the reference
    assert mixed.hift.m_source.l_linear.weight.dtype == torch.float32
    assert mixed.flow.noise.table.dtype == torch.float32
    prompts = [
        (v3_cases / "prompt_en.wav", "The quick brown fox jumps over the lazy dog."),
        (v3_cases / "prompt_zh.wav", "今天天气很好，我们去散步。"),
    ]
    targets = ["Yes.", "Good day.", "天气很好。", "It will rain later today.", "Call me at five."]
    rows = resolve([Row(f"r{i}", *prompts[i % 2], t, seed=40 + i) for i, t in enumerate(targets)], 0)
    base = {r.id: r for r in Engine(fp32, EngineSettings(batch_size=1, text_frontend=False)).run(rows)}
    fast = {r.id: r for r in Engine(mixed, EngineSettings(batch_size=4, text_frontend=False)).run(rows)}
    assert len({len(r.speech_tokens) for r in base.values()}) >= 3
    for row in rows:
        a, b = base[row.id], fast[row.id]
        assert a.error is None and b.error is None
        assert b.speech_tokens == a.speech_tokens, row.id
        assert b.wav.shape == a.wav.shape and np.isfinite(b.wav).all()


def synth(manifest: Path, out: Path, *extra: str):
    args = ["synth", str(manifest), "--model", "demo", "--out", str(out), "--quiet", *extra]
    return CliRunner().invoke(app, args)


def test_mixed_run_of_the_demo_model_matches_float32(tmp_path: Path, native_bf16, monkeypatch):
    lines = (EXAMPLES / "manifest.csv").read_text().splitlines()
    manifest = tmp_path / "m.csv"
    text = "\n".join([lines[0], lines[1], lines[3]]).replace("prompts/", f"{EXAMPLES}/prompts/")
    manifest.write_text(text.replace("reference/", f"{EXAMPLES}/reference/") + "\n")
    exact, mixed = tmp_path / "float32", tmp_path / "mixed"
    assert synth(manifest, exact, "--dtype", "float32", "--batch-size", "1").exit_code == 0
    run = synth(manifest, mixed, "--dtype", "mixed", "--batch-size", "2")
    assert run.exit_code == 0, run.output
    summary = json.loads((mixed / "summary.json").read_text())
    assert summary["dtype"] == "mixed" and summary["dtypes"] == MIXED_BF16.names()
    assert json.loads((exact / "summary.json").read_text())["dtypes"] == StageDtypes().names()
    reports = {
        name: {r["id"]: r for r in map(json.loads, (folder / "report.jsonl").read_text().splitlines())}
        for name, folder in (("float32", exact), ("mixed", mixed))
    }
    for row_id, row in reports["mixed"].items():
        other = reports["float32"][row_id]
        assert row["dtypes"] == MIXED_BF16.names() and other["dtypes"] == StageDtypes().names()
        assert row["speech_token_digest"] == other["speech_token_digest"] and len(row["speech_token_digest"]) == 64
        assert row["num_samples"] == other["num_samples"]  # identical tokens: identical durations
        assert row["fingerprint"] != other["fingerprint"]
    check = CliRunner().invoke(app, ["check-durations", str(mixed), "--tokens-from", str(exact), "--quiet"])
    assert check.exit_code == 0 and "PASS: 2 rows, 0 failed" in check.output, check.output
    # Without native bfloat16, mixed runs float32: a float32 run's rows are kept on --resume.
    monkeypatch.setattr(runtime, "cpu_has_bf16_dot", lambda: False)
    args = ["synth", str(manifest), "--model", "demo", "--out", str(exact), "--dtype", "mixed", "--resume"]
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert (
        dry.exit_code == 0
        and "dtype mixed (llm float32, flow float32, vocoder float32); --resume: 2 rows kept, 0 to make" in dry.output
    ), dry.output
    resumed = synth(manifest, exact, "--dtype", "mixed", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((exact / "summary.json").read_text())["reused"] == 2


def test_the_dry_run_names_each_networks_dtype(tmp_path: Path, native_bf16):
    base = ["synth", str(EXAMPLES / "manifest.csv"), "--model", "demo", "--out", str(tmp_path / "out"), "--dry-run"]
    plain = CliRunner().invoke(app, [*base, "--device", "cpu"])
    assert plain.exit_code == 0 and "dtype float32 (llm float32, flow float32, vocoder float32);" in plain.output
    assert StageDtypes().names() == dryrun.FLOAT32_DTYPES  # what the dry run knows without torch
    mixed = CliRunner().invoke(app, [*base, "--device", "cpu", "--dtype", "mixed"])
    assert mixed.exit_code == 0, mixed.output
    assert "dtype mixed (llm float32, flow bfloat16, vocoder bfloat16);" in mixed.output
