"""Fault injection on real demo runs: SIGKILL at seeded random points (each followed by --resume), a full disk at
seeded random points, a real file size limit, an unwritable --out, signals early and in bursts. After every fault:
no traceback, the right exit code, no half-written file, and --resume ends with every row done once, each wav equal
to an uninterrupted run's. The counts here feed the README's "Reliability" table."""

from __future__ import annotations

import errno
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

import voiceclone.files
from voiceclone.cli import app
from voiceclone.files import is_temp_name
from voiceclone.io.report import JOURNAL, REPORT_JSONL, read_report_rows

REPO = Path(__file__).resolve().parents[1]
PROMPT = REPO / "examples" / "prompts" / "stella_16k.wav"
SEED = 9  # every random fault point comes from this seed: a failure replays exactly
KILLS = int(os.environ.get("VOICECLONE_FAULT_KILLS", "4"))  # the issue asks 20: 4 keep the suite in its budget
DISK_FULL_POINTS = 3  # and one in the reports
RUN_FLAGS = ("--model", "demo", "--quiet", "--batch-size", "4", "--threads", "1")  # same threads: same bytes


def write_manifest(folder: Path, rows: int) -> Path:
    """`rows` short rows (one 1 s prompt, two-syllable targets) in `folder/m.csv`: a cheap demo run."""
    samples, rate = sf.read(PROMPT)
    sf.write(folder / "p.wav", samples[:rate], rate)
    lines = ["id,prompt_audio,prompt_text,target_text"]
    lines += [f"r{i:02d},{folder / 'p.wav'},Hello.,Ah." for i in range(rows)]
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return folder / "m.csv"


def synth_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    return ["synth", str(manifest), "--out", str(out), *RUN_FLAGS, *extra]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "voiceclone", *args]


def invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def temp_files(out: Path) -> list[str]:
    return [name for name in os.listdir(out) if is_temp_name(name)]


def assert_only_whole_files(out: Path) -> None:
    """What a killed run leaves: complete wavs (every frame their header promises), journal lines that parse (but an
    unfinished last one), reports that parse; temp files at most besides."""
    for name in os.listdir(out):
        if name.endswith(".wav") and not is_temp_name(name):
            info = sf.info(out / name)
            assert info.frames > 0 and info.frames * 2 + 44 == (out / name).stat().st_size, name
    if (out / JOURNAL).exists():
        lines = (out / JOURNAL).read_bytes().split(b"\n")
        for line in lines[:-1]:
            json.loads(line)
    if (out / REPORT_JSONL).exists():
        for line in (out / REPORT_JSONL).read_text().splitlines():
            json.loads(line)


def assert_complete_like(out: Path, reference: Path, ids: list[str]) -> None:
    """Every row ok, once, in order; its wav byte-identical to the uninterrupted run's; nothing left over."""
    rows = [json.loads(line) for line in (out / REPORT_JSONL).read_text().splitlines()]
    assert [row["id"] for row in rows] == ids and {row["status"] for row in rows} == {"ok"}
    for row_id in ids:
        assert (out / f"{row_id}.wav").read_bytes() == (reference / f"{row_id}.wav").read_bytes(), row_id
    assert not temp_files(out) and not (out / JOURNAL).exists()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """An uninterrupted 30-row run: (manifest, out, ids)."""
    folder = tmp_path_factory.mktemp("faults")
    manifest = write_manifest(folder, 30)
    out = folder / "reference"
    assert invoke(synth_args(manifest, out)).exit_code == 0
    return manifest, out, [f"r{i:02d}" for i in range(30)]


def kill_points(count: int) -> list[tuple[str, float]]:
    """Seeded kill points: ("start", seconds after launch: start-up, model load, prompt features) or ("rows", seconds
    after the journal gained a row: mid-batch, mid-write)."""
    rng = random.Random(SEED)
    return [
        ("start", rng.uniform(0.0, 4.0)) if rng.random() < 0.3 else ("rows", rng.uniform(0.0, 1.0))
        for _ in range(count)
    ]


def run_and_kill(args: list[str], out: Path, where: str, delay: float) -> int:
    """Start a run, SIGKILL it at the point; its exit status (0 when it finished first)."""
    before = len(read_report_rows(out / JOURNAL)) if (out / JOURNAL).exists() else 0
    proc = subprocess.Popen(cli(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.monotonic()
    while proc.poll() is None:
        if where == "start" and time.monotonic() - start >= delay:
            break
        if where == "rows" and (out / JOURNAL).exists() and len(read_report_rows(out / JOURNAL)) > before:
            time.sleep(delay)
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert b"Traceback" not in stderr, stderr.decode()
    return proc.returncode


def test_sigkill_at_random_points_then_resume(tmp_path: Path, reference_run):
    manifest, reference, ids = reference_run
    out = tmp_path / "o"
    for where, delay in kill_points(KILLS):
        code = run_and_kill(synth_args(manifest, out, "--resume"), out, where, delay)
        assert code in (-signal.SIGKILL, 0)
        if out.exists():
            assert_only_whole_files(out)
    result = invoke(synth_args(manifest, out, "--resume"))
    assert result.exit_code == 0, result.output
    assert_complete_like(out, reference, ids)
    assert os.listdir(tmp_path) == ["o"]  # nothing written beside --out


class DiskFull:
    """A disk with `free` bytes left: every write of the tool past them fails with ENOSPC (partly written first)."""

    def __init__(self, free: int):
        self.free, self.used, self.real = free, 0, os.write

    def __call__(self, fd: int, data) -> int:
        room = self.free - self.used
        if room <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = self.real(fd, bytes(data[:room]))
        self.used += written
        return written


def test_disk_full_at_random_points_then_resume(tmp_path: Path, reference_run, monkeypatch):
    manifest, reference, ids = reference_run
    ids = ids[:4]
    small = tmp_path / "m4.csv"
    small.write_text("".join(manifest.read_text().splitlines(keepends=True)[:5]))
    counter = DiskFull(1 << 40)
    monkeypatch.setattr(voiceclone.files, "_os_write", counter)
    assert invoke(synth_args(small, tmp_path / "full")).exit_code == 0
    total = counter.used
    rng = random.Random(SEED)
    points = sorted(rng.randrange(total) for _ in range(DISK_FULL_POINTS))
    for point in [*points, total - 100]:  # the last one fills the disk while the summary is written
        out = tmp_path / f"o{point}"
        monkeypatch.setattr(voiceclone.files, "_os_write", DiskFull(point))
        result = invoke(synth_args(small, out))
        assert result.exit_code == 1, result.output
        errors = error_lines(result.output)
        assert len(errors) == 1 and "no space left on device" in errors[0], result.output
        assert not temp_files(out)
        if (out / REPORT_JSONL).exists():  # the reports fitted: the row that hit the full disk failed, the rest wait
            rows = [json.loads(line) for line in (out / REPORT_JSONL).read_text().splitlines()]
            assert [row["id"] for row in rows] == ids
            assert sum(row["status"] == "failed" for row in rows) <= 1
            assert all("no space left on device" in row["error"] for row in rows if row["status"] != "ok")
        monkeypatch.setattr(voiceclone.files, "_os_write", os.write)
        resumed = invoke(synth_args(small, out, "--resume"))
        assert resumed.exit_code == 0, resumed.output
        assert_complete_like(out, reference, ids)


def test_a_file_size_limit_fails_the_row_in_one_line_then_resume(tmp_path: Path, reference_run):
    """A real kernel limit (ulimit -f, SIGXFSZ ignored): the wav write fails with EFBIG inside the wav encoder's
    output, the run stops, the small reports are written, exit 1; --resume without the limit completes."""
    manifest, reference, ids = reference_run
    small = tmp_path / "m3.csv"
    small.write_text("".join(manifest.read_text().splitlines(keepends=True)[:4]))
    out = tmp_path / "o"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))  # the reports fit, a wav (42 KB) does not

    proc = subprocess.run(cli(*synth_args(small, out)), cwd=REPO, capture_output=True, text=True, preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    [error] = error_lines(proc.stderr)
    assert re.fullmatch(f"error: the run stopped: cannot write {out}/r0[0-2].wav: file too large; fix that .*", error)
    rows = [json.loads(line) for line in (out / REPORT_JSONL).read_text().splitlines()]
    assert sorted(row["status"] for row in rows) == ["failed", "skipped", "skipped"]
    resumed = invoke(synth_args(small, out, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert_complete_like(out, reference, ids[:3])


def without_root_powers(command: list[str]) -> list[str]:
    """`command` run without the capabilities that let root write into any folder (as root: through setpriv)."""
    if os.geteuid() != 0:
        return command
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop CAP_DAC_OVERRIDE")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *command]


def test_an_unwritable_out_is_one_line_and_exit_2(tmp_path: Path):
    """A mode-555 --out, as a user (or root without its capabilities) who cannot write there."""
    out = tmp_path / "o"
    out.mkdir()
    out.chmod(0o555)
    manifest = write_manifest(tmp_path, 1)
    proc = subprocess.run(
        without_root_powers(cli(*synth_args(manifest, out))), cwd=REPO, capture_output=True, text=True
    )
    out.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert error_lines(proc.stderr) == [f"error: --out {out}: cannot write there (permission denied)"]
    assert "Traceback" not in proc.stderr and os.listdir(out) == []


@pytest.mark.parametrize("delay", [0.1, 0.2, 0.3, 1.0])
def test_sigterm_in_the_first_second_exits_130(tmp_path: Path, reference_run, delay: float):
    manifest, _, _ = reference_run
    proc = subprocess.Popen(
        cli(*synth_args(manifest, tmp_path / "o")), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr


def test_a_burst_of_sigints_exits_130_without_a_traceback(tmp_path: Path, reference_run):
    manifest, _, _ = reference_run
    out = tmp_path / "o"
    proc = subprocess.Popen(cli(*synth_args(manifest, out)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    while not ((out / JOURNAL).exists() and read_report_rows(out / JOURNAL)):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    for _ in range(50):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.002)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    assert b"Traceback" not in stderr and b"Exception ignored" not in stderr, stderr.decode()
    assert_only_whole_files(out)


def test_a_ctrl_c_reaching_the_error_handler_is_130_not_a_traceback(capsys):
    """A second KeyboardInterrupt can escape typer's own handling; it used to meet a missing `click.Abort` there."""
    from voiceclone.usage import one_line_errors

    def interrupted() -> None:
        raise KeyboardInterrupt

    assert one_line_errors(interrupted) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_only_the_first_signal_raises_and_a_swallowed_one_is_still_seen():
    from voiceclone import interrupts

    previous = interrupts.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupts.interrupt_once(signal.SIGINT, None)
        interrupts.interrupt_once(signal.SIGTERM, None)  # noted, not raised: the clean-up goes on
        assert interrupts.requested()
    finally:
        signal.signal(signal.SIGINT, previous[signal.SIGINT])
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
    again = interrupts.install()  # a new run (in this process) starts un-interrupted
    assert not interrupts.requested()
    interrupts.restore(again)


def test_a_signal_inside_a_finaliser_is_noted_not_raised(monkeypatch):
    from voiceclone import interrupts

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", dropped.append)  # where Python reports an exception it drops

    class Finalised:
        def __del__(self) -> None:
            interrupts.interrupt_once(signal.SIGINT, sys._getframe())

    previous = interrupts.install()
    try:
        Finalised()  # Python would print "Exception ignored in __del__" for a KeyboardInterrupt raised here
        assert interrupts.requested() and dropped == []
    finally:
        signal.signal(signal.SIGINT, previous[signal.SIGINT])
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
