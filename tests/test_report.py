"""Report files: schema, strict JSONL, CSV with flattened timings, summary, atomic writes, the journal, fingerprints."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

from voiceclone.files import atomic_write_text
from voiceclone.io.report import (
    JOURNAL,
    REPORT_FIELDS,
    Journal,
    ReportRow,
    read_report_rows,
    row_fingerprint,
    rtf,
    speech_token_digest,
    summarize,
    write_report,
    write_summary,
)

REQUIRED = [
    "id", "status", "error", "duration_s", "sample_rate", "text_tokens", "prompt_text_tokens", "speech_tokens",
    "min_tokens", "max_tokens", "stop_reason", "segments", "leading_silence_s", "trailing_silence_s", "peak", "seed",
    "timings", "rtf", "fingerprint", "longest_token_run", "clipped_fraction", "num_samples", "speech_token_digest",
    "dtypes",
]  # fmt: skip


def ok_row(row_id: str, duration: float = 2.0, **timings: float) -> ReportRow:
    return ReportRow(
        id=row_id, status="ok", wav=f"{row_id}.wav", duration_s=duration, sample_rate=24000,
        num_samples=int(duration * 24000), text_tokens=10, prompt_text_tokens=30, speech_tokens=50, min_tokens=20,
        max_tokens=200, stop_reason="eos", segments=1, leading_silence_s=0.1, trailing_silence_s=0.2, peak=0.5,
        clipped_fraction=0.0, seed=7, timings=timings or {"llm": 1.0, "flow": 0.5}, rtf=0.75, fingerprint="f" * 32,
        speech_token_digest="d" * 64, dtypes={"llm": "float32", "flow": "bfloat16", "vocoder": "bfloat16"},
    )  # fmt: skip


def test_schema_has_every_documented_field():
    assert set(REQUIRED) <= set(REPORT_FIELDS)


def test_jsonl_and_csv_reports(tmp_path: Path):
    rows = [
        ok_row("a", llm=1.0, flow=0.5),
        ReportRow(id='b,"quoted"\nnewline', status="failed", error="boom: x", seed=3, timings={"hift": 0.1}),
        ReportRow(id="c", status="skipped", error="interrupted before this row finished", seed=4),
    ]
    write_report(tmp_path, rows)
    lines = (tmp_path / "report.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    parsed = [json.loads(line) for line in lines]
    assert [p["id"] for p in parsed] == [r.id for r in rows]
    assert all(list(p) == list(REPORT_FIELDS) for p in parsed)
    assert parsed[0]["timings"] == {"llm": 1.0, "flow": 0.5} and parsed[1]["duration_s"] is None
    assert ReportRow.from_dict(parsed[0]) == rows[0]
    with open(tmp_path / "report.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [t["id"] for t in table] == [r.id for r in rows]
    assert table[0]["time_llm_s"] == "1.0" and table[0]["time_hift_s"] == "" and table[1]["time_hift_s"] == "0.1"
    assert table[0]["duration_s"] == "2.0" and table[1]["duration_s"] == "" and table[2]["status"] == "skipped"
    assert "timings" not in table[0] and "dtypes" not in table[0]
    assert (table[0]["dtype_llm"], table[0]["dtype_flow"], table[0]["dtype_vocoder"]) == (
        "float32",
        "bfloat16",
        "bfloat16",
    )
    assert table[1]["dtype_flow"] == "" and table[0]["speech_token_digest"] == "d" * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.csv", "report.jsonl"]  # no temp files left


def test_summary(tmp_path: Path):
    rows = [ok_row("a", 2.0, total=1.5), ok_row("b", 3.0, total=3.0), ReportRow(id="c", status="failed", error="x")]
    summary = summarize(rows, 10.0, {"device": "cpu", "model_id": "m"}, reused=frozenset({"a"}))
    assert summary["rows"] == 3 and summary["ok"] == 2 and summary["failed"] == 1 and summary["skipped"] == 0
    # over every row of the report, kept (a) or made: audio, synthesis seconds and the one RTF
    assert summary["reused"] == 1 and summary["audio_seconds"] == 5.0 and summary["synthesis_seconds"] == 4.5
    assert summary["rtf"] == 0.9 and rtf(rows) == 0.9 and rtf(rows[:1]) == 0.75 == rows[0].rtf
    # over this run: b and c were made in 10 s
    assert summary["made"] == 2 and summary["rows_per_second"] == 0.2 and summary["audio_seconds_per_second"] == 0.3
    assert summary["device"] == "cpu"
    write_summary(tmp_path, summary)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_atomic_write_replaces_whole_file(tmp_path: Path):
    target = tmp_path / "x.json"
    atomic_write_text(target, "old\n")
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_journal_appends_complete_lines_and_repairs_a_cut_line(tmp_path: Path):
    path = tmp_path / JOURNAL
    journal = Journal(path)
    journal.append(ok_row("a"))
    journal.append(ok_row("b"))
    journal.close()
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id": "c", "status": "o')  # what a SIGKILL mid-write could leave
    assert list(read_report_rows(path)) == ["a", "b"]
    journal = Journal(path)
    assert path.read_bytes() == whole
    journal.append(ok_row("c"))
    journal.close()
    assert list(read_report_rows(path)) == ["a", "b", "c"]


def test_read_report_rows_skips_garbage_and_later_lines_win(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    first, second = ok_row("a", 1.0), ok_row("a", 2.0)
    path.write_text(
        json.dumps(first.to_dict())
        + "\nnot json\n[1]\n"
        + '{"id": 5, "status": "ok"}\n'
        + json.dumps(second.to_dict())
        + "\n"
    )
    assert read_report_rows(path) == {"a": second}
    assert read_report_rows(tmp_path / "absent.jsonl") == {}


def test_fingerprint_covers_every_input():
    base = (
        "p" * 64,
        "prompt",
        "target",
        1,
        "model",
        {"dtype": "float32", "text_frontend": True, "wav_format": "pcm16"},
    )
    fp = row_fingerprint(*base)
    assert fp == row_fingerprint(*base)
    for index, changed in [
        (0, "q" * 64),
        (1, "prompt2"),
        (2, "target2"),
        (3, 2),
        (4, "model2"),
        (5, {**base[5], "dtype": "bfloat16"}),
        (5, {**base[5], "wav_format": "float"}),
    ]:
        args = list(base)
        args[index] = changed
        assert row_fingerprint(*args) != fp, index


def test_speech_token_digest_is_sha256_of_the_decimal_ids():
    assert speech_token_digest([12, 7]) == hashlib.sha256(b"12,7").hexdigest()
    assert speech_token_digest([]) == hashlib.sha256(b"").hexdigest()
    assert speech_token_digest([0, 1, 6560]) == "dad4f4b9820ec3e1b494b8e9efd24639d5baa841d5f14860ea369f099a036774"
    assert speech_token_digest(np.array([12, 7], dtype=np.int64)) == speech_token_digest(t for t in (12, 7))
    assert speech_token_digest([1, 27]) != speech_token_digest([12, 7])


def test_longest_token_run():
    from voiceclone.io.report import longest_run

    assert longest_run([]) == 0 and longest_run([5]) == 1
    assert longest_run([1, 2, 2, 3, 3, 3, 2]) == 3 and longest_run([7] * 40 + [1]) == 40
