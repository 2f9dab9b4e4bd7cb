"""Scale-out on the demo model: `--shard I/N` + `merge-reports`, torchrun with 2 gloo ranks, and SIGKILL of a rank then
`--resume` all equal the one-process run, wav byte for wav byte and report row for row (timings aside)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from voiceclone.cli import app
from voiceclone.io.manifest import load_manifest
from voiceclone.io.report import JOURNAL, ReportRow, read_report_rows
from voiceclone.shards import Shard, merge, previous_rows, shard_of

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "examples" / "prompts"
TARGETS = [
    "Good morning.",
    "It will rain later today.",
    "Yes, see you there.",
    "Call me back at five.",
    "The trains are late again.",
    "Thank you very much.",
    "See you tomorrow at noon.",
    "Where is the river?",
]
TIMING_FIELDS = ("timings", "rtf")


def write_manifest(folder: Path, order=None) -> Path:
    prompts = [
        (PROMPTS / "stella_16k.wav", "Please call Stella and ask her to bring these things with her from the store."),
        (PROMPTS / "canoe_44k.wav", "The birch canoe slid on the smooth planks."),
    ]
    lines = ["id,prompt_audio,prompt_text,target_text"]
    for i in order if order is not None else range(len(TARGETS)):
        audio, text = prompts[i % 2]
        lines.append(f'row{i},{audio},{text},"{TARGETS[i]}"')
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def synth_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    """One thread per process everywhere: a row's wav bytes depend on its process's thread count (see README)."""
    return ["synth", str(manifest), "--model", "demo", "--out", str(out), "--quiet", "--threads", "1", *extra]


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """In-process runs set torch's thread count; later tests get theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def report(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


def wavs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.wav"))}


def assert_same_run(out: Path, reference: Path) -> None:
    assert wavs(out) == wavs(reference)
    assert report(out) == report(reference)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, Path]:
    """The manifest and the plain one-process run (batch 8) everything is compared with."""
    folder = tmp_path_factory.mktemp("one")
    manifest = write_manifest(folder)
    result = CliRunner().invoke(app, synth_args(manifest, folder / "out"))
    assert result.exit_code == 0, result.output
    return manifest, folder / "out"


def test_shard_of_is_stable_and_spreads_rows():
    ids = [f"utt-{i}" for i in range(1000)]
    counts = [sum(shard_of(i, 4) == s for i in ids) for s in range(4)]
    assert min(counts) > 200  # a hash, not a range
    assert [shard_of(i, 4) for i in ids] == [shard_of(i, 4) for i in ids]
    assert Shard.parse("1/4") == Shard(1, 4) and Shard(1, 4).report == "report.shard-1-of-4.jsonl"


def test_shard_membership_survives_reordering_and_growth(tmp_path):
    small = load_manifest(write_manifest(tmp_path, order=[0, 1, 2, 3]))
    grown = load_manifest(write_manifest(tmp_path, order=[7, 3, 5, 1, 0, 2, 6, 4]))
    for index in range(3):
        shard = Shard(index, 3)
        assert {r.id for r in shard.select(small)} <= {r.id for r in shard.select(grown)}


def test_newest_entry_wins_and_skipped_never_replaces(tmp_path):
    def write(name: str, rows: list[ReportRow], mtime: int) -> None:
        (tmp_path / name).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
        os.utime(tmp_path / name, ns=(mtime, mtime))

    write("report.jsonl", [ReportRow("a", "failed"), ReportRow("b", "ok")], 10**18)
    write("report.shard-0-of-2.jsonl", [ReportRow("a", "ok"), ReportRow("b", "skipped")], 2 * 10**18)
    found = previous_rows(tmp_path)
    assert found["a"].status == "ok" and found["b"].status == "ok"
    rows = load_manifest(write_manifest(tmp_path, order=[0]))
    merged = merge(tmp_path, rows)
    assert merged.missing == ["row0"] and merged.rows[0].status == "skipped"


def test_shards_then_merge_reports_equal_one_process(one_process, tmp_path):
    manifest, reference = one_process
    out = tmp_path / "out"
    runner = CliRunner()
    first = runner.invoke(app, synth_args(manifest, out, "--shard", "0/2", "--batch-size", "3"))
    assert first.exit_code == 0, first.output
    early = runner.invoke(app, ["merge-reports", str(out), "--manifest", str(manifest)])
    assert early.exit_code == 1 and "not finished by any shard yet" in early.output
    assert not (out / "report.jsonl").exists()
    # the second shard does not refuse because of the first one's files
    second = runner.invoke(app, synth_args(manifest, out, "--shard", "1/2", "--batch-size", "1"))
    assert second.exit_code == 0, second.output
    merged = runner.invoke(app, ["merge-reports", str(out), "--manifest", str(manifest)])
    assert merged.exit_code == 0, merged.output
    assert_same_run(out, reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and [s["shard"] for s in summary["shards"]] == ["0/2", "1/2"]
    assert sum(s["rows"] for s in summary["shards"]) == summary["rows"] == len(TARGETS)
    plain = json.loads((reference / "summary.json").read_text())
    assert plain["world_size"] == 1 and plain["shards"][0]["rows"] == len(TARGETS)


def torchrun(manifest: Path, out: Path, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return launcher + ["-m", "voiceclone", *synth_args(manifest, out, *extra)]


def test_torchrun_two_ranks_equal_one_process(one_process, tmp_path):
    manifest, reference = one_process
    out = tmp_path / "out"
    done = subprocess.run(torchrun(manifest, out), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(out, reference)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and [s["shard"] for s in summary["shards"]] == ["0/2", "1/2"]
    assert all(s["threads"] == 1 for s in summary["shards"])


def test_rank_defaults_split_the_cores(tmp_path):
    from voiceclone.distributed import Launch, launch_from_env, rank_options
    from voiceclone.errors import UsageError
    from voiceclone.synth import SynthOptions

    launch = launch_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"})
    assert launch == Launch(1, 4, 1, 2) and launch_from_env({}) is None
    assert launch_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None  # a world of one is a plain run
    opts = rank_options(SynthOptions(model="demo", out=tmp_path), launch, cuda_available=False)
    assert opts.shard == Shard(1, 4) and not opts.owner and opts.device == "auto"
    assert opts.threads == max(1, len(os.sched_getaffinity(0)) // 2)
    assert rank_options(SynthOptions(model="demo", out=tmp_path), launch, cuda_available=True).device == "cuda:1"
    with pytest.raises(UsageError, match="exclude each other"):
        rank_options(SynthOptions(model="demo", out=tmp_path, shard=Shard(0, 2)), launch, False)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def rank_pid(launcher: int, rank: int) -> int | None:
    for pid in children(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


def test_sigkill_of_one_rank_then_resume_completes_every_row_once(one_process, tmp_path):
    manifest, reference = one_process
    out = tmp_path / "out"
    proc = subprocess.Popen(torchrun(manifest, out, "--batch-size", "1"), cwd=REPO, stderr=subprocess.PIPE, text=True)
    journal = out / Shard(1, 2).journal
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not read_report_rows(journal):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    victim = rank_pid(proc.pid, 1)
    assert victim is not None and proc.poll() is None
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0
    finished = previous_rows(out)
    assert 1 <= sum(r.status == "ok" for r in finished.values()) < len(TARGETS), stderr[-3000:]
    resumed = CliRunner().invoke(app, synth_args(manifest, out, "--resume", "--batch-size", "5"))
    assert resumed.exit_code == 0, resumed.output
    assert_same_run(out, reference)
    assert [r["id"] for r in report(out)] == [f"row{i}" for i in range(len(TARGETS))]
    assert not (out / JOURNAL).exists()


def test_shard_flag_in_the_dry_run_and_bad_values(tmp_path):
    manifest = write_manifest(tmp_path)
    runner = CliRunner()
    args = [a for a in synth_args(manifest, tmp_path / "out", "--shard", "1/2", "--dry-run") if a != "--quiet"]
    dry = runner.invoke(app, args)
    owned = len(Shard(1, 2).select(load_manifest(manifest)))
    assert dry.exit_code == 0 and f", {owned} in shard 1/2" in dry.output
    for bad in ("2/2", "1", "a/b", "0/0"):
        result = runner.invoke(app, synth_args(manifest, tmp_path / "out", "--shard", bad, "--dry-run"))
        assert result.exit_code == 2 and result.output.startswith("error: --shard"), (bad, result.output)


def test_torchrun_refusal_by_rank_0_stops_every_rank(one_process, tmp_path):
    manifest, reference = one_process
    out = tmp_path / "out"
    out.mkdir()
    (out / "row0.wav").write_bytes((reference / "row0.wav").read_bytes())  # an earlier output, no --resume/--force
    done = subprocess.run(torchrun(manifest, out), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("pass --resume to continue or --force to overwrite") == 1, done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["row0.wav"]
