"""The duration checker on synthetic wavs of known length: tolerances, bounds, missing rows, JSON and JUnit output."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import soundfile as sf
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.durations import Tolerances, check_durations
from voiceclone.io.report import ReportRow, write_report, write_summary
from voiceclone.io.subset import Subset

REPO = Path(__file__).resolve().parents[1]


def tone(path: Path, seconds: float, sr: int = 24000, amplitude: float = 0.3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * sr)) / sr
    sf.write(path, (amplitude * np.sin(2 * np.pi * 200 * t)).astype(np.float32), sr, subtype="PCM_16")
    return path


def manifest(folder: Path, ids: list[str]) -> Path:
    tone(folder / "prompt.wav", 3.0, 16000)
    lines = ["id,prompt_audio,prompt_text,target_text,reference_audio"]
    lines += [f"{i},prompt.wav,Thirty characters of prompt..,Ten chars.,ref/{i}.wav" for i in ids]
    path = folder / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def by_id(results) -> dict:
    return {r.id: r for r in results}


def test_a_long_clip_against_a_short_reference_fails_and_names_the_row(tmp_path: Path):
    out = tmp_path / "out"
    tone(out / "long.wav", 20.8)
    tone(out / "fine.wav", 4.5)
    tone(tmp_path / "ref" / "long.wav", 4.3)
    tone(tmp_path / "ref" / "fine.wav", 4.3)
    tone(tmp_path / "ref" / "gone.wav", 1.0)
    results = by_id(check_durations(out, manifest(tmp_path, ["long", "fine", "gone"])))
    assert results["fine"].passed and results["fine"].duration_s == 4.5 and results["fine"].reference_s == 4.3
    assert not results["long"].passed
    assert results["long"].problems() == ["reference: 20.80 s vs reference 4.30 s (allowed +-0.86 s)"]
    assert not results["gone"].passed and results["gone"].missing and results["gone"].status == "missing"


def test_absolute_tolerance_applies_to_short_clips(tmp_path: Path):
    out, ref = tmp_path / "out", tmp_path / "ref"
    for row_id, seconds in [("near", 0.5), ("far", 0.7)]:
        tone(out / f"{row_id}.wav", seconds)
        tone(ref / f"{row_id}.wav", 0.3)
    results = by_id(check_durations(out, manifest(tmp_path, ["near", "far"]), reference_dir=ref))
    assert results["near"].passed and not results["far"].passed
    strict = by_id(check_durations(out, manifest(tmp_path, ["near"]), tol=Tolerances(rel_tol=0.2, abs_tol=0.1)))
    assert not strict["near"].passed


def test_silence_clipping_and_rate(tmp_path: Path):
    out = tmp_path / "out"
    tone(out / "silent.wav", 1.0, amplitude=0.0)
    tone(out / "clipped.wav", 1.0, amplitude=1.5)
    tone(out / "rate.wav", 1.0, sr=22050)
    tone(out / "good.wav", 1.0)
    write_summary(out, {"sample_rate": 24000, "token_frame_rate": 25})
    write_report(out, [ReportRow(id=i, status="ok") for i in ("silent", "clipped", "rate", "good")])
    results = by_id(check_durations(out))
    failed = {row_id: [p.split(":")[0] for p in r.problems()] for row_id, r in results.items()}
    assert failed == {"silent": ["not_silent"], "clipped": ["not_clipped"], "rate": ["sample_rate"], "good": []}


def test_hard_bounds_from_the_report(tmp_path: Path):
    out = tmp_path / "out"
    tone(out / "short.wav", 2.0)
    tone(out / "long.wav", 9.0)
    tone(out / "inside.wav", 4.1)
    entry = {"status": "ok", "min_tokens": 100, "max_tokens": 200}  # 4.0 .. 8.0 s at 25 Hz
    write_report(out, [ReportRow(id=i, **entry) for i in ("short", "long", "inside")])
    results = by_id(check_durations(out))
    assert results["short"].problems() == ["bounds: 2.00 s (model bounds 3.90..8.10 s)"]
    assert results["long"].problems() == ["bounds: 9.00 s (model bounds 3.90..8.10 s)"]
    assert results["inside"].passed


def test_speaking_rate_is_only_a_warning(tmp_path: Path):
    out = tmp_path / "out"
    tone(out / "slow.wav", 10.0)  # 10 characters at the prompt's 0.1 s/char suggests ~1 s
    tone(tmp_path / "ref" / "slow.wav", 10.0)
    result = check_durations(out, manifest(tmp_path, ["slow"]))[0]
    assert result.passed and [w.name for w in result.warnings] == ["speaking_rate"]


def test_rows_come_from_the_report_and_failed_rows_count_as_missing(tmp_path: Path):
    out = tmp_path / "out"
    tone(out / "a.wav", 1.0)
    write_report(out, [ReportRow(id="a", status="ok"), ReportRow(id="b", status="failed", error="LLM exploded")])
    results = by_id(check_durations(out))
    assert results["a"].passed and results["b"].missing
    assert "LLM exploded" in results["b"].problems()[0]


def test_cli_writes_json_and_junit_and_exits_1(tmp_path: Path):
    out = tmp_path / "out"
    tone(out / "long.wav", 20.8)
    tone(tmp_path / "ref" / "long.wav", 4.3)
    tone(tmp_path / "ref" / "ok.wav", 1.0)
    tone(out / "ok.wav", 1.0)
    tone(tmp_path / "ref" / "gone.wav", 1.0)
    m = manifest(tmp_path, ["long", "ok", "gone"])
    args = ["check-durations", str(out), "--manifest", str(m), "--json", str(tmp_path / "r.json")]
    result = CliRunner().invoke(app, [*args, "--junit", str(tmp_path / "r.xml")])
    assert result.exit_code == 1, result.output
    assert "long" in result.output and "FAIL: 3 rows, 2 failed (1 missing)" in result.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["passed"] is False and data["failed"] == 2 and data["missing"] == 1
    assert [r["status"] for r in data["results"]] == ["fail", "pass", "missing"]
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "2"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert "20.80 s vs reference 4.30 s" in cases["long"].find("failure").get("message")
    assert cases["ok"].find("failure") is None and cases["gone"].find("failure").get("type") == "missing"


def test_cli_passes_and_usage_errors(tmp_path: Path):
    out = tmp_path / "out"
    tone(out / "ok.wav", 1.0)
    tone(tmp_path / "ref" / "ok.wav", 1.1)
    m = manifest(tmp_path, ["ok"])
    assert CliRunner().invoke(app, ["check-durations", str(out), "--manifest", str(m), "--quiet"]).exit_code == 0
    nothing = CliRunner().invoke(app, ["check-durations", str(out)])
    assert nothing.exit_code == 2 and "no report to take the expected rows from" in nothing.output
    assert CliRunner().invoke(app, ["check-durations", str(tmp_path / "absent")]).exit_code == 2
    (out / "report.jsonl").write_text("")
    empty = CliRunner().invoke(app, ["check-durations", str(out)])
    assert empty.exit_code == 2 and "holds no rows to check" in empty.output


def test_the_old_script_name_runs_the_same_check(tmp_path: Path):
    out = tmp_path / "out"
    tone(out / "long.wav", 20.8)
    tone(tmp_path / "ref" / "long.wav", 4.3)
    m = manifest(tmp_path, ["long"])
    run = subprocess.run(
        [sys.executable, str(REPO / "check_audio_durations.py"), str(out), "--manifest", str(m), "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 1 and "FAIL: 1 rows, 1 failed" in run.stdout, run.stderr


def test_a_wav_cut_short_fails_exists_saying_so(tmp_path: Path):
    out = tmp_path / "out"
    whole = tone(tmp_path / "whole.wav", 1.0)
    out.mkdir()
    (out / "cut.wav").write_bytes(whole.read_bytes()[:1000])  # as `head -c 1000 good.wav > OUT/cut.wav`
    write_report(out, [ReportRow(id="cut", status="ok")])
    result = check_durations(out)[0]
    assert not result.passed
    assert result.problems() == ["exists: cut short: the header promises 24000 frames, the file holds 478"]


def test_a_reference_folder_that_is_not_there_is_a_usage_error(tmp_path: Path):
    out = tmp_path / "out"
    tone(out / "a.wav", 1.0)
    write_report(out, [ReportRow(id="a", status="ok")])
    result = CliRunner().invoke(app, ["check-durations", str(out), "--reference", "/nonexistent"])
    assert result.exit_code == 2 and result.output == "error: --reference /nonexistent: not a folder\n"


def test_in_a_pipe_the_table_is_plain_ascii_one_line_per_row(tmp_path: Path):
    out, wide = tmp_path / "out", "a-rather-long-row-id-that-would-wrap-in-a-box"
    for row_id, seconds, reference_s in [("long", 20.8, 4.3), (wide, 1.0, 1.0)]:
        tone(out / f"{row_id}.wav", seconds)
        tone(tmp_path / "ref" / f"{row_id}.wav", reference_s)
    m = manifest(tmp_path, ["long", wide])
    result = CliRunner().invoke(app, ["check-durations", str(out), "--manifest", str(m)], env={"COLUMNS": "60"})
    assert result.exit_code == 1 and result.output.isascii()
    table = result.output.splitlines()
    assert len(table) == 4 and table[0].split() == [
        "id",
        "status",
        "duration",
        "reference",
        "problems",
        "/",
        "warnings",
    ]
    assert table[1].split()[:3] == ["long", "fail", "20.80"] and "reference: 20.80 s vs reference 4.30 s" in table[1]
    assert table[2].split()[:3] == [wide, "pass", "1.00"]
    assert table[3] == "FAIL: 2 rows, 1 failed (0 missing), 1 with warnings"


def test_limit_and_ids_check_a_subset(tmp_path: Path):
    out = tmp_path / "out"
    for row_id in "abc":
        tone(out / f"{row_id}.wav", 1.0)
    write_report(out, [ReportRow(id=i, status="ok") for i in "abcd"])  # d has no wav
    assert [r.id for r in check_durations(out, subset=Subset(limit=2))] == ["a", "b"]
    (tmp_path / "ids.txt").write_text("c\n\nb\n")
    base = ["check-durations", str(out), "--quiet"]
    picked = CliRunner().invoke(app, [*base, "--ids", f"@{tmp_path / 'ids.txt'}"])
    assert picked.exit_code == 0 and picked.output == "PASS: 2 rows, 0 failed (0 missing), 0 with warnings\n"
    assert CliRunner().invoke(app, base).exit_code == 1  # d is missing
    unknown = CliRunner().invoke(app, [*base, "--ids", "a,zz"])
    assert unknown.exit_code == 2 and unknown.output == "error: --ids: 1 id(s) not among the 4 rows: 'zz'\n"


def test_tokens_from_another_run_compares_speech_token_digests(tmp_path: Path):
    out, other = tmp_path / "out", tmp_path / "other"
    for row_id in ("same", "changed", "only_here", "undigested"):
        tone(out / f"{row_id}.wav", 1.0)
    digest = {"same": "a" * 64, "changed": "b" * 64, "only_here": "c" * 64, "undigested": None}
    write_report(out, [ReportRow(id=i, status="ok", speech_token_digest=d) for i, d in digest.items()])
    theirs = {"same": "a" * 64, "changed": "d" * 64, "undigested": "e" * 64}
    other.mkdir()
    write_report(other, [ReportRow(id=i, status="ok", speech_token_digest=d) for i, d in theirs.items()])
    results = by_id(check_durations(out, tokens_from=other))
    assert (
        results["same"].passed
        and results["same"].checks[-1].message == f"speech tokens identical to {other / 'report.jsonl'}"
    )
    assert results["changed"].problems() == [
        f"tokens: speech tokens differ from {other / 'report.jsonl'} (digest {'b' * 12} vs {'d' * 12})"
    ]
    assert results["only_here"].problems() == [f"tokens: {other / 'report.jsonl'} has no such row"]
    assert results["undigested"].problems() == ["tokens: no speech_token_digest for this row in report.jsonl"]
    as_file = by_id(check_durations(out, tokens_from=other / "report.jsonl"))
    assert [r.passed for r in as_file.values()] == [r.passed for r in results.values()]
    assert all(c.name != "tokens" for r in check_durations(out) for c in r.checks)  # only when asked


def test_tokens_from_cli_exit_codes(tmp_path: Path):
    out, other = tmp_path / "out", tmp_path / "other"
    tone(out / "a.wav", 1.0)
    write_report(out, [ReportRow(id="a", status="ok", speech_token_digest="a" * 64)])
    other.mkdir()
    write_report(other, [ReportRow(id="a", status="ok", speech_token_digest="a" * 64)])
    same = CliRunner().invoke(app, ["check-durations", str(out), "--tokens-from", str(other), "--quiet"])
    assert same.exit_code == 0 and "PASS: 1 rows" in same.output
    write_report(other, [ReportRow(id="a", status="ok", speech_token_digest="f" * 64)])
    differ = CliRunner().invoke(app, ["check-durations", str(out), "--tokens-from", str(other), "--quiet"])
    assert differ.exit_code == 1 and "FAIL: 1 rows, 1 failed" in differ.output
    absent = CliRunner().invoke(app, ["check-durations", str(out), "--tokens-from", str(tmp_path / "nowhere")])
    assert absent.exit_code == 2
    assert absent.output.strip().splitlines() == [f"error: --tokens-from {tmp_path / 'nowhere'}: no report.jsonl there"]
