"""What a new user meets first: one-line usage errors, help that reads well in 80 columns, and the exit codes of
`convert` and `inspect` that a CI script can gate on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voiceclone.cli import app

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "examples" / "manifest.csv"
COMMANDS = ["synth", "check-durations", "convert", "download", "inspect"]


def invoke(*args, env: dict | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xml"], "error: Invalid value for '--format': choose from csv, tsv, jsonl, lst"),
        (["--batch-size", "two"], "error: Invalid value for '--batch-size': "),
        (["--bogus"], "error: No such option: --bogus"),
        (["--model"], "error: Option '--model' requires an argument."),
    ],
)
def test_a_bad_flag_is_one_error_line_and_one_hint(tmp_path: Path, args: list[str], message: str):
    result = invoke("synth", MANIFEST, "--model", "demo", "--out", tmp_path / "out", *args)
    assert result.exit_code == 2 and lines(result)[0].startswith(message), result.output
    assert all(line.startswith("try: ") and line.endswith(" synth --help") for line in lines(result)[1:])
    assert len(lines(result)) <= 2


def test_missing_arguments_and_unknown_commands_are_one_line(tmp_path: Path):
    for args, message in [
        (["synth"], "error: Missing argument 'MANIFEST'."),
        (["synth", MANIFEST, "--out", tmp_path], "error: Missing option '--model'."),
        (["convert", tmp_path], "error: Missing argument 'DST'."),
        (["sinth"], "error: No such command 'sinth'."),
    ]:
        result = invoke(*args)
        assert result.exit_code == 2 and lines(result)[0].startswith(message) and len(lines(result)) == 2, args


def test_a_bad_value_in_a_settings_file_names_the_file_and_the_key(tmp_path: Path):
    settings = tmp_path / "run.toml"
    settings.write_text('batch-size = "two"\n')
    result = invoke("synth", MANIFEST, "--model", "demo", "--out", tmp_path / "out", "--config", settings)
    assert result.exit_code == 2 and len(lines(result)) == 2
    assert lines(result)[0].startswith(f"error: {settings}: batch-size: invalid value 'two': ")


@pytest.mark.parametrize("command", [[], *[[name] for name in COMMANDS]], ids=lambda c: " ".join(c) or "voiceclone")
def test_help_reads_well_in_80_columns(command: list[str]):
    result = invoke(*command, "--help", env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert max(map(len, result.output.splitlines())) <= 80
    assert "<bool>" not in result.output and "{" not in result.output and "╭" not in result.output
    usage = result.output.splitlines()[0]
    arguments = {"synth": "MANIFEST", "check-durations": "OUT", "convert": "SRC DST", "inspect": "MODEL"}
    if command and command[0] in arguments:
        assert usage.endswith(f" {command[0]} [OPTIONS] {arguments[command[0]]}"), usage


def test_the_old_script_has_its_own_usage_line_and_one_line_errors():
    script = [sys.executable, str(REPO / "check_audio_durations.py")]
    helped = subprocess.run([*script, "--help"], cwd=REPO, capture_output=True, text=True)
    assert helped.returncode == 0 and helped.stdout.startswith("Usage: check_audio_durations.py [OPTIONS] OUT\n")
    bad = subprocess.run(script, cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == ["error: Missing argument 'OUT'.", "try: check_audio_durations.py --help"]


def test_convert_into_an_existing_folder_says_overwrite(v3_model_dir: Path, tmp_path: Path):
    (tmp_path / "taken").mkdir()
    result = invoke("convert", v3_model_dir, tmp_path / "taken")
    assert result.exit_code == 2
    assert lines(result) == [f"error: {tmp_path / 'taken'}: already exists; pass --overwrite to replace it, or choose "
                             "another folder"]  # fmt: skip


def test_inspect_exits_3_on_a_folder_that_is_no_model_or_a_problem(v3_model_dir: Path, tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not a model\n")
    result = invoke("inspect", tmp_path)
    assert (
        result.exit_code == 3
        and len(lines(result)) == 1
        and "not a CosyVoice3 or CosyVoice2 model directory" in result.output
    )
    model = tmp_path / "cut"
    model.mkdir()
    for path in v3_model_dir.rglob("*"):
        target = model / path.relative_to(v3_model_dir)
        if path.is_dir():
            target.mkdir()
        else:
            target.symlink_to(path)
    (model / "llm.pt").unlink()
    (model / "llm.pt").write_bytes((v3_model_dir / "llm.pt").read_bytes()[:5000])
    result = CliRunner().invoke(app, ["inspect", str(model)])
    assert result.exit_code == 3
    assert json.loads(result.stdout)["problems"][0].startswith("llm.pt: not a complete pt file")
    assert result.stderr.startswith(f"error: 1 problem(s) in {model}: llm.pt: not a complete pt file")
    whole = invoke("inspect", v3_model_dir)
    assert whole.exit_code == 0 and json.loads(whole.output)["problems"] == []
