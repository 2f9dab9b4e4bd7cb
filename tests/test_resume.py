"""A real run killed with SIGKILL partway leaves nothing half-written, and --resume finishes the job without
touching the rows that were already done (Ctrl-C and damaged wavs: tests/test_cli.py, with a stand-in engine)."""

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
from voiceclone.files import is_temp_name
from voiceclone.io.report import JOURNAL, read_report_rows

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
IDS = ["greeting", "weather", "yes"]  # three of the example rows


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
    return [name for name in os.listdir(out) if is_temp_name(name)]


def test_sigkill_partway_then_resume(tmp_path: Path):
    out = tmp_path / "out"
    three_example_rows(tmp_path)

    # 1. SIGKILL as soon as one row is finished: only complete files are left (temp files at most).
    code, _ = start_and_stop_after_first_row(synth_cmd(out, "--batch-size", "1", "--quiet"), out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert not (out / "report.jsonl").exists()  # reports are only written whole, at the end
    done = list(read_report_rows(out / JOURNAL))
    assert 1 <= len(done) < len(IDS)
    assert sorted(p for p in os.listdir(out) if p.endswith(".wav")) == sorted(f"{i}.wav" for i in done)
    for row_id in done:
        assert sf.info(out / f"{row_id}.wav").frames == sf.info(EXAMPLES / "reference" / f"{row_id}.wav").frames
    state = files_state(out, done)

    # 2. The folder is refused without --resume; with it, the run finishes and the first rows' files are untouched.
    refused = CliRunner().invoke(app, synth_cmd(out)[3:])
    assert refused.exit_code == 2 and "pass --resume" in refused.output
    time.sleep(0.05)  # a rewrite of an old wav would show in its mtime
    resumed = subprocess.run(synth_cmd(out, "--resume", "--quiet"), cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr == "" and resumed.stdout == ""  # --quiet
    assert files_state(out, done) == state
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] == len(IDS) and summary["reused"] == len(done) and summary["interrupted"] is False
    final = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    assert [r["id"] for r in final] == IDS and {r["status"] for r in final} == {"ok"}
    assert not temp_files(out) and not (out / JOURNAL).exists()
    for row_id in IDS:  # every row, kept or made after the kill, has its full deterministic length
        assert sf.info(out / f"{row_id}.wav").frames == sf.info(EXAMPLES / "reference" / f"{row_id}.wav").frames
