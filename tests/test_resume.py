"""Interrupted runs: Ctrl-C exits 130 with complete files, SIGKILL leaves nothing half-written, --resume finishes
the job without touching rows that were already done, and redoes a row whose wav was damaged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import soundfile as sf
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.report import JOURNAL, read_report_rows

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
IDS = ["greeting", "weather", "yes"]  # three example rows: done before Ctrl-C, before SIGKILL, and after


def synth_cmd(out: Path, *extra: str) -> list[str]:
    manifest = str(out.parent / "manifest.csv")
    return [sys.executable, "-m", "voiceclone", "synth", manifest, "--model", "demo", "--out", str(out), *extra]


def three_example_rows(folder: Path) -> None:
    lines = (EXAMPLES / "manifest.csv").read_text().splitlines()
    text = (
        "\n".join(lines[: len(IDS) + 1])
        .replace("prompts/", f"{EXAMPLES}/prompts/")
        .replace("reference/", f"{EXAMPLES}/reference/")
    )
    (folder / "manifest.csv").write_text(text + "\n")


def start_and_stop_after_first_row(cmd: list[str], out: Path, sig: int) -> tuple[int, str]:
    """Run `cmd`, send `sig` as soon as the journal holds one finished row; the exit status and stderr."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if read_report_rows(out / JOURNAL):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def files_state(out: Path, ids) -> dict[str, tuple[int, bytes]]:
    return {i: ((out / f"{i}.wav").stat().st_mtime_ns, (out / f"{i}.wav").read_bytes()) for i in ids}


def temp_files(out: Path) -> list[str]:
    return [name for name in os.listdir(out) if ".tmp" in name]


def test_interrupt_kill_and_resume(tmp_path: Path):
    out = tmp_path / "out"
    three_example_rows(tmp_path)

    # 1. Ctrl-C: exit 130, finished rows stay, the rest are `skipped`, reports complete, no temp files.
    code, stderr = start_and_stop_after_first_row(synth_cmd(out, "--batch-size", "1", "--quiet"), out, signal.SIGINT)
    assert code == 130, stderr
    assert "run again with --resume" in stderr and "Traceback" not in stderr
    report = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert [r["id"] for r in report] == IDS
    done_a = [r["id"] for r in report if r["status"] == "ok"]
    assert 1 <= len(done_a) < len(IDS) and {r["status"] for r in report} == {"ok", "skipped"}
    assert json.loads((out / "summary.json").read_text())["interrupted"] is True
    assert not temp_files(out) and not (out / JOURNAL).exists()
    assert sorted(p for p in os.listdir(out) if p.endswith(".wav")) == sorted(f"{i}.wav" for i in done_a)
    state_a = files_state(out, done_a)
    report_a = (out / "report.jsonl").read_bytes()

    # 2. Without --resume the folder is refused; with it, a SIGKILL partway leaves only complete files.
    refused = CliRunner().invoke(app, synth_cmd(out)[3:])
    assert refused.exit_code == 2 and "pass --resume" in refused.output
    time.sleep(0.05)  # make a rewrite of an old wav visible in its mtime
    code, _ = start_and_stop_after_first_row(
        synth_cmd(out, "--batch-size", "1", "--quiet", "--resume"), out, signal.SIGKILL
    )
    assert code == -signal.SIGKILL
    assert (out / "report.jsonl").read_bytes() == report_a  # reports are only replaced whole, at the end
    done_b = list(read_report_rows(out / JOURNAL))
    assert done_b and not set(done_b) & set(done_a)
    assert files_state(out, done_a) == state_a
    for row_id in done_b:
        assert sf.info(out / f"{row_id}.wav").frames > 0

    # 3. Damage one row made before the kill: --resume must redo it, and keep every other finished row untouched.
    damaged = done_b[0]
    wav = out / f"{damaged}.wav"
    wav.write_bytes(wav.read_bytes()[:1000])
    kept = [i for i in done_a + done_b if i != damaged]
    state_kept = files_state(out, kept)
    third = subprocess.run(synth_cmd(out, "--resume", "--quiet"), cwd=REPO, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert third.stderr == "" and third.stdout == ""  # --quiet
    assert files_state(out, kept) == state_kept
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == len(IDS) and summary["reused"] == len(kept) and summary["interrupted"] is False
    final = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert [r["id"] for r in final] == IDS and {r["status"] for r in final} == {"ok"}
    assert not temp_files(out) and not (out / JOURNAL).exists()
    for row_id in IDS:  # every row, kept or redone, has its full deterministic length
        assert sf.info(out / f"{row_id}.wav").frames == sf.info(EXAMPLES / "reference" / f"{row_id}.wav").frames
