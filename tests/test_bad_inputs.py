"""Bad inputs that used to pass validation or fail late (issue 9): bad prompt audio, endless manifest lines, unsafe
report ids in check-durations."""

from __future__ import annotations

import json
import os
import re
import resource
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.io.manifest import MAX_LINE_BYTES, ManifestErrors, load_manifest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
PROMPT = EXAMPLES / "prompts" / "stella_16k.wav"


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def noise(
    path: Path, seconds: float, sr: int, subtype: str = "PCM_16", poison: float | None = None, level: float = 0.3
) -> Path:
    """Noise of peak `level`; `poison` (NaN or inf) replaces one sample in the middle."""
    data = np.random.default_rng(0).uniform(-level, level, max(1, int(seconds * sr))).astype(np.float32)
    if poison is not None:
        data[len(data) // 2] = poison
    sf.write(path, data, sr, subtype=subtype)
    return path


def with_header_rate(path: Path, rate: int) -> Path:
    """A PCM wav whose header claims `rate` (and the matching byte rate), its samples unchanged."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"RIFF" and data[12:16] == b"fmt "
    channels, bits = struct.unpack("<H", data[22:24])[0], struct.unpack("<H", data[34:36])[0]
    data[24:28] = struct.pack("<I", rate)
    data[28:32] = struct.pack("<I", min(rate * channels * bits // 8, 2**32 - 1))
    path.write_bytes(bytes(data))
    return path


# ---- prompt audio: refused at validation, naming file, line and field ------------------------------------------------


def bad_prompts(folder: Path) -> dict[str, tuple[Path, str]]:
    """Hostile prompts by name: (file, what the one-line refusal says)."""
    return {
        "nan": (noise(folder / "nan.wav", 1.0, 16000, "FLOAT", float("nan")), "NaN or infinite samples"),
        "inf": (noise(folder / "inf.wav", 1.0, 24000, "DOUBLE", float("inf")), "NaN or infinite samples"),
        "short": (noise(folder / "short.wav", 0.02, 16000), "20.0 ms is under the 40 ms prompt minimum"),
        "rate": (with_header_rate(noise(folder / "rate.wav", 0.5, 16000), 2**31 - 1), "over 384000 Hz"),
        "odd rate": (noise(folder / "odd.wav", 1.0, 44101), "cannot be resampled to 16000 Hz"),
        "silent": (noise(folder / "silent.wav", 1.0, 16000, level=0.0005), "silent (peak -65.7 dBFS"),
        "zero": (noise(folder / "zero.wav", 1.0, 24000, "FLOAT", level=0.0), "silent (peak all zero"),
    }


@pytest.mark.parametrize("name", ["nan", "inf", "short", "rate", "odd rate", "silent", "zero"])
def test_bad_prompt_audio_is_refused_at_validation(tmp_path: Path, name: str):
    path, message = bad_prompts(tmp_path)[name]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"id,prompt_audio,prompt_text,target_text\nr1,{PROMPT},Hi.,Good day.\nr2,{path},Hi.,Bye.\n")
    result = invoke("synth", manifest, "--model", "demo", "--out", tmp_path / "o", "--dry-run")
    assert result.exit_code == 2, result.output
    assert lines(result) == [f"error: {manifest}:3: prompt_audio: {lines(result)[0].split(': ', 3)[-1]}"]
    assert message in result.output and str(path) in result.output


def test_good_float_prompts_and_rates_still_pass(tmp_path: Path):
    fine = [
        noise(tmp_path / "f.wav", 1.0, 48000, "FLOAT"),
        noise(tmp_path / "d.wav", 0.04, 22050, "DOUBLE"),
        noise(tmp_path / "p.wav", 2.0, 44100),
        noise(tmp_path / "q.wav", 1.0, 384000),
        noise(tmp_path / "soft.wav", 1.0, 16000, level=0.002),  # -54 dBFS: quiet, not silent
    ]
    manifest = tmp_path / "m.csv"
    body = "".join(f"r{i},{p},Hi.,Good day.\n" for i, p in enumerate(fine))
    manifest.write_text("id,prompt_audio,prompt_text,target_text\n" + body)
    rows = load_manifest(manifest)
    assert [r.prompt_audio for r in rows] == fine


def test_the_prompt_front_end_refuses_what_validation_refuses(tmp_path: Path):
    from voiceclone.frontend.prompt import PromptFrontend
    from voiceclone.io.audio import AudioError

    frontend = PromptFrontend(tmp_path / "none.onnx", tmp_path / "none.onnx", mel=None)
    for path, message in bad_prompts(tmp_path).values():
        with pytest.raises(AudioError, match=re.escape(message)):
            frontend.extract(path)


# ---- manifest lines: at most 1 MB, read in bounded chunks ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "lst"])
def test_a_line_over_1_mb_is_refused_with_its_line(tmp_path: Path, fmt: str):
    header = {"csv": "id,prompt_audio,prompt_text,target_text\n", "tsv": "id\tprompt_audio\tprompt_text\ttarget_text\n"}
    path = tmp_path / f"m.{fmt}"
    path.write_bytes(header.get(fmt, "").encode() + b"x" * (MAX_LINE_BYTES + 10))
    with pytest.raises(ManifestErrors) as info:
        load_manifest(path)
    line = 2 if fmt in header else 1
    assert [str(e) for e in info.value.errors] == [f"{path}:{line}: line longer than {MAX_LINE_BYTES} bytes (1 MB)"]


def test_a_csv_record_spanning_lines_is_capped_too(tmp_path: Path):
    path = tmp_path / "m.csv"
    cells = ",".join(['"' + "y" * 1000 + '\n"'] * 2000)  # 2 MB in one record, no line over 1 KB
    path.write_text(f"id,prompt_audio,prompt_text,target_text\n{cells}\n")
    with pytest.raises(ManifestErrors, match="record longer than"):
        load_manifest(path)


def test_dev_zero_is_refused_in_bounded_memory(tmp_path: Path):
    """A manifest without newlines (/dev/zero) ends with one line and exit 2, under a 1 GB address-space limit."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    command = [sys.executable, "-m", "voiceclone", "synth", "/dev/zero", "--format", "lst", "--model", "demo"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "o"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limit_memory,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"error: /dev/zero:1: line longer than {MAX_LINE_BYTES} bytes (1 MB)"]
    assert not (tmp_path / "o").exists()


# ---- check-durations: report ids are validated as manifest ids are ---------------------------------------------------


@pytest.mark.parametrize(
    ("row_id", "why"),
    [
        ("a\u0001b", "contains control or invisible characters"),
        ("/tmp/victim", "contains '/'"),
        ("../outside", "contains '/'"),
        ("..", "starts with '.'"),
        ("x..y", "contains '..'"),
    ],
)
def test_check_durations_refuses_unsafe_report_ids(tmp_path: Path, row_id: str, why: str):
    out = tmp_path / "o"
    out.mkdir()
    noise(out / "ok.wav", 1.0, 24000)
    victim = tmp_path / "victim.wav"
    noise(victim, 1.0, 24000)
    report = out / "report.jsonl"
    rows = [
        {"id": "ok", "status": "ok"},
        {"id": row_id if row_id != "/tmp/victim" else str(victim)[:-4], "status": "ok"},
    ]
    report.write_text("".join(json.dumps(row) + "\n" for row in rows))
    junit = tmp_path / "d.xml"
    result = invoke("check-durations", out, "--junit", junit)
    assert result.exit_code == 2, result.output
    assert len(lines(result)) == 1 and lines(result)[0].startswith(f"error: {report}: id ")
    assert why in result.output and not junit.exists()


def test_check_durations_fails_a_wav_with_nan_samples_and_its_json_stays_strict(tmp_path: Path):
    out = tmp_path / "o"
    out.mkdir()
    noise(out / "bad.wav", 1.0, 24000, "FLOAT", float("nan"))
    noise(out / "good.wav", 1.0, 24000)
    (out / "report.jsonl").write_text("".join(json.dumps({"id": i, "status": "ok"}) + "\n" for i in ("bad", "good")))
    report = tmp_path / "d.json"
    result = invoke("check-durations", out, "--json", report, "--quiet")
    assert result.exit_code == 1, result.output

    def refuse(constant: str):
        raise AssertionError(f"not strict JSON: {constant}")

    data = json.loads(report.read_text(), parse_constant=refuse)
    bad = next(r for r in data["results"] if r["id"] == "bad")
    assert bad["status"] == "fail" and bad["checks"] == [
        {"name": "exists", "ok": False, "message": "holds NaN or infinite samples", "warning": False}
    ]
    assert [r["status"] for r in data["results"] if r["id"] == "good"] == ["pass"]
