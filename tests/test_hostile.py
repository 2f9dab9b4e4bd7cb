"""Hostile files and faults: nothing is written outside --out, no link is followed, hostile yaml is refused fast."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.files import atomic_write_text, is_temp_name, temp_name_for
from voiceclone.io.report import JOURNAL, REPORT_JSONL
from voiceclone.loading.hyperpyyaml import read_hyperpyyaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished two-row demo run: (manifest, out)."""
    folder = tmp_path_factory.mktemp("run")
    manifest = folder / "m.csv"
    prompt = EXAMPLES / "prompts" / "stella_16k.wav"
    manifest.write_text(
        f"id,prompt_audio,prompt_text,target_text\nr1,{prompt},Hello there.,Good day.\n"
        f"r2,{prompt},Hello there.,Good night.\n"
    )
    out = folder / "o"
    result = invoke("synth", manifest, "--model", "demo", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return manifest, out


@pytest.mark.parametrize("planted", [JOURNAL, REPORT_JSONL])
@pytest.mark.parametrize("dangling", [False, True])
def test_resume_never_writes_through_a_planted_link(tmp_path: Path, finished_run, planted: str, dangling: bool):
    manifest, done = finished_run
    out = tmp_path / "o"
    shutil.copytree(done, out)
    (out / "r1.wav").unlink()
    victim = tmp_path / "victim"
    if not dangling:
        victim.write_text("precious\n")
    (out / planted).unlink(missing_ok=True)
    os.symlink(victim, out / planted)
    result = invoke("synth", manifest, "--model", "demo", "--out", out, "--resume", "--quiet")
    assert result.exit_code == 2, result.output
    assert lines(result) == [
        f"error: {out / planted}: is a symbolic link; voiceclone never writes through links (remove it)"
    ]
    assert victim.read_text() == "precious\n" if not dangling else not victim.exists()
    assert not (out / "r1.wav").exists()


def test_journal_refuses_a_link_even_when_opened_directly(tmp_path: Path):
    from voiceclone.errors import UsageError
    from voiceclone.io.report import Journal, read_report_rows

    victim = tmp_path / "victim"
    os.symlink(victim, tmp_path / JOURNAL)
    with pytest.raises(UsageError, match="symbolic link"):
        Journal(tmp_path / JOURNAL)
    with pytest.raises(UsageError, match="symbolic link"):
        read_report_rows(tmp_path / JOURNAL)
    assert not victim.exists()


def test_atomic_write_replaces_a_link_not_its_target(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, tmp_path / "report.csv")
    atomic_write_text(tmp_path / "report.csv", "new\n")
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "report.csv").is_symlink() and (tmp_path / "report.csv").read_text() == "new\n"


def test_temp_names_are_unguessable_and_only_ours_are_cleaned(tmp_path: Path, finished_run):
    first, second = temp_name_for(tmp_path / "a.wav"), temp_name_for(tmp_path / "a.wav")
    assert first != second and is_temp_name(first.name) and is_temp_name(second.name)
    assert not is_temp_name(".mynotes.tmp") and not is_temp_name(".a.wav.1234.tmp")
    manifest, done = finished_run
    out = tmp_path / "o"
    shutil.copytree(done, out)
    (out / ".mynotes.tmp").write_text("mine\n")
    left = temp_name_for(out / "r1.wav")
    left.write_bytes(b"left by a killed run")
    result = invoke("synth", manifest, "--model", "demo", "--out", out, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / ".mynotes.tmp").read_text() == "mine\n" and not left.exists()


def _alias_bomb(levels: int = 10, width: int = 10) -> str:
    text = "a0: &a0 [" + ",".join(["1"] * width) + "]\n"
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]\n"
    return text


def _ref_bomb(levels: int = 10, width: int = 10) -> str:
    text = "a0: 1\n"
    for i in range(1, levels):
        text += f"a{i}: [" + ",".join([f"!ref <a{i - 1}>"] * width) + "]\n"
    return text


def _chain(op: str, base: str, levels: int = 40) -> str:
    text = f"k0: {base}\n"
    for i in range(1, levels):
        text += f"k{i}: !ref <k{i - 1}>{op}<k{i - 1}>\n"
    return text


HOSTILE_YAML = {
    "alias bomb": (_alias_bomb(), "expands to more than"),
    "!ref bomb": (_ref_bomb(), "expands to more than"),
    "power tower": ("a: 10\nb: !ref <a> ** <a> ** <a> ** 2\n", "exponent 100 is larger than 64"),
    "squaring chain": (_chain(" * ", "10"), "out of range"),
    "string doubling": (_chain("/", "ab"), "expands to more than"),
    "deep nesting": ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    "ref into a list": ("a: [1]\nb: !ref <a.key>\n", "not a key of a mapping"),
}


@pytest.mark.parametrize("name", HOSTILE_YAML)
def test_hostile_yaml_is_refused_quickly(name: str):
    text, message = HOSTILE_YAML[name]
    assert len(text.encode()) < 12_000
    start = time.monotonic()
    with pytest.raises(ValueError, match=message):
        read_hyperpyyaml(text)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("name", ["alias bomb", "power tower", "string doubling"])
def test_hostile_model_yaml_exits_3_with_one_line(tmp_path: Path, v3_model_dir: Path, name: str):
    model = tmp_path / "model"
    shutil.copytree(v3_model_dir, model)
    yaml_path = model / "cosyvoice3.yaml"
    yaml_path.chmod(0o644)
    yaml_path.write_text(yaml_path.read_text() + HOSTILE_YAML[name][0])
    for args in (("inspect", model), ("synth", EXAMPLES / "manifest.csv", "--model", model, "--out", tmp_path / "o")):
        result = invoke(*args)
        problems = lines(result)
        if args[0] == "inspect":
            assert result.exit_code == 3 and "unreadable HyperPyYAML" in result.output
        else:
            assert result.exit_code == 3, result.output
            assert len(problems) == 1 and problems[0].startswith(f"error: {yaml_path}: unreadable HyperPyYAML")


def _sub(old: str, new: str):
    return lambda text: text.replace(old, new, 1)


HOSTILE_YAML_VALUES = {
    "speech_token_size a string": (
        _sub("speech_token_size: 6561", 'speech_token_size: "abc"'),
        "llm.speech_token_size",
    ),
    "dim a word": (_sub("dim: 64", 'dim: "sixty"'), "flow.decoder.estimator.dim: expected an integer, got 'sixty'"),
    "dim a billion": (_sub("dim: 64", "dim: 1000000000"), "flow.decoder.estimator.dim: expected an integer in"),
    "dim a deep list": (_sub("dim: 64", "dim: " + "[" * 5000 + "]" * 5000), "nested"),
    "kernel sizes of words": (_sub("upsample_rates: [8, 5, 3]", "upsample_rates: [a, b]"), "hift.upsample_rates"),
    "top_p not finite": (_sub("top_p: 0.8", "top_p: .nan"), "llm.sampling.top_p: expected a finite number"),
}


@pytest.mark.parametrize("name", HOSTILE_YAML_VALUES)
def test_model_yaml_values_of_the_wrong_kind_or_size_exit_3_naming_the_key(tmp_path: Path, v3_model_dir, name: str):
    edit, message = HOSTILE_YAML_VALUES[name]
    model = tmp_path / "model"
    shutil.copytree(v3_model_dir, model)
    yaml_path = model / "cosyvoice3.yaml"
    yaml_path.chmod(0o644)
    yaml_path.write_text(edit(yaml_path.read_text()))
    result = invoke("synth", EXAMPLES / "manifest.csv", "--model", model, "--out", tmp_path / "o")
    assert result.exit_code == 3, result.output
    [problem] = lines(result)
    assert problem.startswith(f"error: {yaml_path}: ") and message in problem
    assert not (tmp_path / "o").exists()


HOSTILE_QWEN = {"hidden_size": "x", "num_attention_heads": 0, "vocab_size": 10**12, "rope_theta": True}


@pytest.mark.parametrize("key", HOSTILE_QWEN)
def test_blank_en_config_values_exit_3_naming_the_key(tmp_path: Path, v3_model_dir, key: str):
    model = tmp_path / "model"
    shutil.copytree(v3_model_dir, model)
    path = model / "CosyVoice-BlankEN" / "config.json"
    path.chmod(0o644)
    path.write_text(json.dumps(json.loads(path.read_text()) | {key: HOSTILE_QWEN[key]}))
    result = invoke("inspect", model)
    assert result.exit_code == 3 and f"{path}: {key}: expected" in result.output, result.output


HOSTILE_CONVERTED = {
    "dim a word": (("flow", "dit", "dim"), "sixty", "config: flow.dit.dim: expected an integer"),
    "dim a billion": (("flow", "dit", "dim"), 10**9, "config: flow.dit.dim: expected an integer in"),
    "noise table huge": (("hift", "noise_samples"), 10**12, "config: hift.noise_samples: expected an integer in"),
    "a deep list": (("hift", "upsample_rates"), [], "nested too deeply"),
    "qwen heads a list": (("lm", "qwen", "num_attention_heads"), [2], "config: lm.qwen.num_attention_heads"),
}


@pytest.mark.parametrize("name", HOSTILE_CONVERTED)
def test_converted_config_values_are_model_errors_naming_the_key(tmp_path: Path, v3_config, name: str):
    from voiceclone.errors import ModelError
    from voiceclone.loading.config import read_config

    keys, value, message = HOSTILE_CONVERTED[name]
    config = v3_config.to_json()
    node = config
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    data = {"format": "voiceclone", "format_version": 1, "config": config}
    text = json.dumps(data) if name != "a deep list" else json.dumps(data).replace("[]", "[" * 5000 + "]" * 5000)
    (tmp_path / "voiceclone.json").write_text(text)
    with pytest.raises(ModelError, match=re.escape(message)) as error:
        read_config(tmp_path)
    assert str(error.value).startswith(str(tmp_path / "voiceclone.json"))


def test_a_folder_where_a_wav_or_report_goes_is_one_line(tmp_path: Path, finished_run):
    manifest, done = finished_run
    for name, flag in (("r1.wav", "--force"), ("report.jsonl", "--resume"), ("summary.json", "--force")):
        out = tmp_path / name
        shutil.copytree(done, out)
        (out / name).unlink()
        (out / name).mkdir()
        result = invoke("synth", manifest, "--model", "demo", "--out", out, flag, "--quiet")
        assert result.exit_code == 2, result.output
        assert lines(result) == [
            f"error: {out / name}: is not a regular file; this run writes a file there (remove it)"
        ]


REPORT_EDITS = {
    "garbage line": (lambda rows: rows[:1] + ["garbage {"] + rows[1:], ":2: not JSON"),
    "not a row": (lambda rows: rows + ["[1, 2]"], ":3: not a report row"),
    "min_tokens a string": (
        lambda rows: [rows[0].replace('"min_tokens": ', '"min_tokens": "x", "was": '), rows[1]],
        ':1: min_tokens: expected int | None, got "x"',
    ),
    "peak NaN": (lambda rows: [rows[0].replace('"peak": ', '"peak": NaN, "was": '), rows[1]], ":1: peak: expected"),
}


@pytest.mark.parametrize("name", REPORT_EDITS)
def test_check_durations_names_a_bad_report_line(tmp_path: Path, finished_run, name: str):
    _, done = finished_run
    out = tmp_path / "o"
    shutil.copytree(done, out)
    edit, message = REPORT_EDITS[name]
    rows = (out / REPORT_JSONL).read_text().splitlines()
    (out / REPORT_JSONL).write_text("\n".join(edit(rows)) + "\n")
    result = invoke("check-durations", out)
    assert result.exit_code == 2, result.output
    [problem] = lines(result)
    assert problem.startswith(f"error: {out / REPORT_JSONL}{message}")


@pytest.mark.parametrize("key, value", [("token_frame_rate", "fast"), ("sample_rate", [24000]), ("sample_rate", 0)])
def test_check_durations_names_a_bad_summary_value(tmp_path: Path, finished_run, key: str, value):
    _, done = finished_run
    out = tmp_path / "o"
    shutil.copytree(done, out)
    summary = json.loads((out / "summary.json").read_text())
    (out / "summary.json").write_text(json.dumps(summary | {key: value}))
    result = invoke("check-durations", out)
    assert result.exit_code == 2, result.output
    assert lines(result) == [
        f"error: {out / 'summary.json'}: {key}: expected a positive number, got {json.dumps(value)}"
    ]


@pytest.mark.parametrize("flag", ["--json", "--junit"])
def test_check_durations_into_a_missing_folder_is_one_line(tmp_path: Path, finished_run, flag: str):
    _, done = finished_run
    target = tmp_path / "missing" / "x.out"
    result = invoke("check-durations", done, flag, target)
    assert result.exit_code == 2, result.output
    assert lines(result) == [f"error: {flag} {target}: the folder {target.parent} does not exist"]


def test_convert_into_a_file_is_one_line(tmp_path: Path, v3_model_dir):
    (tmp_path / "some_file").write_text("x")
    result = invoke("convert", v3_model_dir, tmp_path / "some_file" / "sub")
    assert result.exit_code == 2, result.output
    assert lines(result) == [
        f"error: {tmp_path / 'some_file' / 'sub'}: cannot create it: {tmp_path / 'some_file'} is not a folder"
    ]
