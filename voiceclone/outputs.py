"""Writes to `--out` that can fail (a full disk, a folder turned read-only): opening the journal, journalling rows,
the reports; each failure one line; a failed write stops the run and `--resume` continues it."""

from __future__ import annotations

from pathlib import Path

from voiceclone.errors import UsageError, VoiceCloneError
from voiceclone.io.report import Journal, ReportRow


class OutputError(VoiceCloneError):
    """The reports could not be written to `--out` (exit 1); the journal keeps the finished rows for `--resume`."""


def error_text(exc: OSError) -> str:
    """An OSError's reason in lower case, as a report row or error line quotes it ("no space left on device")."""
    return (exc.strerror or str(exc)).lower()


def open_journal(path: Path, replaced: list[Path]) -> Journal:
    """Remove the `replaced` wavs (never an old wav beside a new report entry) and open the journal at `path`;
    UsageError when its folder is not writable."""
    try:
        for wav in replaced:
            wav.unlink(missing_ok=True)
        return Journal(path)
    except OSError as e:
        raise UsageError(f"--out {path.parent}: cannot write there ({error_text(e)})") from None


def append_row(journal: Journal, entry: ReportRow) -> str | None:
    """Journal a finished row; why the run must stop when that fails, else None."""
    try:
        journal.append(entry)
    except OSError as e:
        return f"cannot write {journal.path}: {error_text(e)}"
    return None


def close_journal(journal: Journal) -> str | None:
    """Flush and close the journal; why the run must stop when that fails, else None."""
    try:
        journal.close()
    except OSError as e:
        return f"cannot write {journal.path}: {error_text(e)}"
    return None


def reports_error(out: Path, rows: list[ReportRow], exc: OSError) -> OutputError:
    """The one line for reports that could not be written; the journal keeps the finished rows for `--resume`."""
    finished = sum(row.status == "ok" for row in rows)
    return OutputError(
        f"{out}: cannot write the reports ({error_text(exc)}); {finished} finished rows are kept: "
        "fix that and run again with --resume"
    )
