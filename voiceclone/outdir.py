"""The output folder of a run: which files a run owns there, the checks before it writes (existing outputs, links,
subsets that would drop report rows), creating it, and clearing temp files of killed runs. Imports no torch."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from voiceclone.errors import UsageError
from voiceclone.files import is_temp_name
from voiceclone.io import audio
from voiceclone.io.manifest import Row
from voiceclone.io.report import JOURNAL, REPORT_CSV, REPORT_JSONL, SUMMARY_JSON, ReportRow
from voiceclone.shards import Shard, previous_rows, shard_files

RUN_FILES = (REPORT_JSONL, REPORT_CSV, SUMMARY_JSON, JOURNAL)


def run_files(out: Path, shard: Shard | None) -> tuple[str, ...]:
    """The files a run owns in `out`: a shard its own report, summary and journal; a whole run the reports, the
    journal and every shard file (which its report replaces)."""
    if shard is not None:
        return shard.files
    return RUN_FILES + tuple(path.name for path in shard_files(out))


def existing_outputs(out: Path, rows: list[Row], names: tuple[str, ...] = RUN_FILES) -> list[str]:
    """Names of files in `out` this run would overwrite."""
    if not out.is_dir():
        return []
    found = [name for name in names if os.path.lexists(out / name)]
    return found + [f"{row.id}.wav" for row in rows if os.path.lexists(out / f"{row.id}.wav")]


def refuse_existing(out: Path, rows: list[Row], resume: bool, force: bool, names: tuple[str, ...] = RUN_FILES) -> None:
    """UsageError when `out` is not a folder, holds a link or a non-file where this run writes a file, or holds this
    run's outputs (`names` and the rows' wavs) and neither --resume nor --force."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    for name in names:
        if (out / name).is_symlink():
            raise UsageError(f"{out / name}: is a symbolic link; voiceclone never writes through links (remove it)")
    for path in [out / name for name in names] + [out / f"{row.id}.wav" for row in rows]:
        if os.path.lexists(path) and not (path.is_symlink() or path.is_file()):
            raise UsageError(f"{path}: is not a regular file; this run writes a file there (remove it)")
    found = existing_outputs(out, rows, names)
    if found and not (resume or force):
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise UsageError(f"{out}: already holds outputs ({shown}); pass --resume to continue or --force to overwrite")


def refuse_dropping_rows(out: Path, rows: list[Row]) -> None:
    """UsageError when a subset run (`--limit`/`--ids`) would drop rows of an earlier report from `out`'s report: its
    report covers only the subset, so a subset never shrinks a report (a smaller one goes to another `--out`)."""
    earlier = set(previous_rows(out))
    dropped = earlier - {row.id for row in rows}
    if dropped:
        raise UsageError(
            f"{out}: its report holds {len(dropped)} rows outside --limit/--ids, which this run's report would drop; "
            "choose another --out or run without --limit/--ids"
        )


def make_out_dir(out: Path, clear_temp: bool = True) -> None:
    """Create `out` and clear temp files of killed runs (after `refuse_existing` said the run may write there); a
    shard never clears them (another shard's writes may be in flight)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    if clear_temp:
        remove_temp_files(out)


def remove_temp_files(out: Path) -> None:
    """Delete temp files a killed run of this tool left behind (only names `files.is_temp_name` recognises; a file
    that cannot be deleted stays)."""
    for path in out.glob(".*"):
        if is_temp_name(path.name) and not path.is_dir():
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


def wav_intact(path: Path, entry: ReportRow) -> bool:
    """The wav is a regular file (not a link), decodes its header and has the rate and length the report recorded."""
    if not path.is_file() or path.is_symlink():
        return False
    try:
        info = audio.audio_info(path)
    except Exception:
        return False
    return info.sample_rate == entry.sample_rate and info.frames == entry.num_samples
