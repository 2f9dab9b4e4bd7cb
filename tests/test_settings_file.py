"""`--config FILE`: flag defaults from the TOML files in configs/, command-line flags winning, bad files refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from voiceclone.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def dry_run(*args: str):
    return runner.invoke(app, ["synth", str(REPO / "examples/manifest.csv"), "--model", "demo", *args, "--dry-run"])


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_settings_file_names_real_flags(path: Path, tmp_path: Path):
    command = "check-durations" if path.name.startswith("durations") else "synth"
    if command == "synth":
        result = dry_run("--out", str(tmp_path / "out"), "--config", str(path))
        cuda_only = "cuda" in path.read_text()
        assert result.exit_code == (4 if cuda_only else 0), result.output
    else:
        result = runner.invoke(app, ["check-durations", str(tmp_path), "--config", str(path)])
        assert "unknown setting" not in result.output


def test_file_sets_defaults_and_flags_win(tmp_path: Path):
    out = str(tmp_path / "out")
    from_file = dry_run("--out", out, "--config", str(REPO / "configs/cpu.toml"))
    assert from_file.exit_code == 0 and "dtype float32" in from_file.output
    overridden = dry_run("--out", out, "--config", str(REPO / "configs/cpu.toml"), "--dtype", "bfloat16")
    assert overridden.exit_code == 0 and "dtype bfloat16" in overridden.output


def test_required_flags_can_come_from_the_file(tmp_path: Path):
    settings = tmp_path / "run.toml"
    settings.write_text(f'model = "demo"\nout = "{tmp_path / "out"}"\n')
    result = runner.invoke(app, ["synth", str(REPO / "examples/manifest.csv"), "--config", str(settings), "--dry-run"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("text", "message"), [("bogus = 1\n", "unknown setting 'bogus'"), ("dtype = \n", "cannot read settings")]
)
def test_bad_settings_file_is_a_usage_error(tmp_path: Path, text: str, message: str):
    settings = tmp_path / "bad.toml"
    settings.write_text(text)
    result = dry_run("--out", str(tmp_path / "out"), "--config", str(settings))
    assert result.exit_code == 2 and message in result.output and str(settings) in result.output


def test_check_durations_tolerances_from_the_file(tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    sf.write(out / "a.wav", [0.5, -0.5] * 12000, 24000)  # 1.0 s
    ref = tmp_path / "ref"
    ref.mkdir()
    sf.write(ref / "a.wav", [0.5, -0.5] * 18000, 24000)  # 1.5 s
    (out / "report.jsonl").write_text(json.dumps({"id": "a", "status": "ok", "sample_rate": 24000}) + "\n")
    base = ["check-durations", str(out), "--reference", str(ref), "--sample-rate", "24000"]
    assert runner.invoke(app, [*base, "--config", str(REPO / "configs/durations-ci.toml")]).exit_code == 1
    loose = tmp_path / "loose.toml"
    loose.write_text("abs-tol = 0.6\n")
    assert runner.invoke(app, [*base, "--config", str(loose)]).exit_code == 0
