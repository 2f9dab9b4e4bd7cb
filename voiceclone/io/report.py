"""Report files: one row per manifest row (JSONL and CSV), `summary.json`, the run journal, atomic writes."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path

from voiceclone.errors import UsageError
from voiceclone.files import atomic_write_bytes, atomic_write_text, open_nofollow, read_bytes_nofollow, write_all

REPORT_JSONL = "report.jsonl"
REPORT_CSV = "report.csv"
SUMMARY_JSON = "summary.json"
JOURNAL = ".voiceclone-journal.jsonl"
STATUSES = ("ok", "failed", "skipped")


@dataclass
class ReportRow:
    """What one manifest row produced. Durations are seconds; `timings` maps a stage name to seconds, `dtypes` a
    network (llm, flow, vocoder) to the dtype it ran in; `speech_token_digest` is `speech_token_digest(tokens)`."""

    id: str
    status: str
    error: str | None = None
    wav: str | None = None
    duration_s: float | None = None
    sample_rate: int | None = None
    num_samples: int | None = None
    text_tokens: int | None = None
    prompt_text_tokens: int | None = None
    speech_tokens: int | None = None
    speech_token_digest: str | None = None
    min_tokens: int | None = None
    max_tokens: int | None = None
    stop_reason: str | None = None
    longest_token_run: int | None = None
    segments: int | None = None
    leading_silence_s: float | None = None
    trailing_silence_s: float | None = None
    peak: float | None = None
    clipped_fraction: float | None = None
    seed: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    rtf: float | None = None
    dtypes: dict[str, str] = field(default_factory=dict)
    fingerprint: str | None = None

    def to_dict(self) -> dict:
        """The fields in order, dict fields copied (shallow: they hold only numbers and strings; `asdict`'s deep copy
        cost more than the JSON encoding on a million-row report)."""
        return {k: dict(v) if isinstance(v, dict) else v for k, v in vars(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ReportRow:
        """Build from a parsed JSON object; raises ValueError (naming the field) when it is not a report row."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or data.get("status") not in STATUSES:
            raise ValueError("not a report row (an object with an `id` and a `status`)")
        known = {f.name: f.type for f in fields(cls)}
        for name, value in data.items():
            if name in known and not _of_type(value, known[name]):
                raise ValueError(f"{name}: expected {known[name]}, got {json.dumps(value)[:40]}")
        return cls(**{k: v for k, v in data.items() if k in known})


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "dict[str, float]": (dict,), "dict[str, str]": (dict,)}


def _of_type(value: object, annotation: str) -> bool:
    """Whether a JSON value fits a ReportRow field's annotation (`int | None`, `dict[str, float]`, ...); numbers are
    finite and never booleans; a dict's values are numbers or strings as annotated."""
    base, _, optional = annotation.partition(" | ")
    if value is None:
        return bool(optional)
    if isinstance(value, bool) or not isinstance(value, _TYPES[base]):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        inner = "float" if base.endswith("float]") else "str"
        return all(isinstance(k, str) and _of_type(v, inner) for k, v in value.items())
    return True


REPORT_FIELDS = tuple(f.name for f in fields(ReportRow))
FLATTENED = {"timings": "time_{}_s", "dtypes": "dtype_{}"}  # dict fields -> one CSV column per key


def speech_token_digest(tokens: Iterable[int]) -> str:
    """sha256 (hex) of the speech token ids written in decimal, joined by commas, as ASCII: `[12, 7]` hashes
    `b"12,7"`, no tokens hash `b""`. Two runs made the same tokens exactly when their digests are equal."""
    return hashlib.sha256(",".join(str(int(t)) for t in tokens).encode("ascii")).hexdigest()


def longest_run(tokens: list[int]) -> int:
    """Length of the longest run of one repeated token (runaway generations repeat a token)."""
    best = run = 0
    for index, token in enumerate(tokens):
        run = run + 1 if index and token == tokens[index - 1] else 1
        best = max(best, run)
    return best


def row_json(row: ReportRow) -> str:
    """One report row as strict JSON (no NaN or Infinity: the engine fails a row whose output is not finite)."""
    return json.dumps(row.to_dict(), ensure_ascii=False, allow_nan=False)


def report_jsonl_text(rows: Iterable[ReportRow]) -> str:
    """Strict JSONL: one object per line, nothing else."""
    return "".join(row_json(row) + "\n" for row in rows)


def report_csv_text(rows: list[ReportRow]) -> str:
    """CSV with a header; `timings` flattened to one `time_<stage>_s` column per stage seen in any row, `dtypes` to
    one `dtype_<network>` column per network."""
    plain = [name for name in REPORT_FIELDS if name not in FLATTENED]
    keys = {name: sorted({key for row in rows for key in getattr(row, name)}) for name in FLATTENED}
    header = plain + [FLATTENED[name].format(key) for name in FLATTENED for key in keys[name]]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        data = row.to_dict()
        cells = [data[name] for name in plain]
        cells += [data[name].get(key) for name in FLATTENED for key in keys[name]]
        writer.writerow(["" if c is None else c for c in cells])
    return buffer.getvalue()


def write_report(out_dir: str | Path, rows: list[ReportRow]) -> None:
    """Write `report.jsonl` and `report.csv` atomically."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / REPORT_JSONL, report_jsonl_text(rows))
    atomic_write_text(out_dir / REPORT_CSV, report_csv_text(rows))


def write_summary(out_dir: str | Path, summary: dict) -> None:
    """Write `summary.json` atomically."""
    atomic_write_text(
        Path(out_dir) / SUMMARY_JSON, json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    )


def read_report_rows(path: str | Path, strict: bool = False) -> dict[str, ReportRow]:
    """Rows of a report or journal JSONL file by id (a later line wins); lines that are not report rows are skipped
    (`--resume` redoes those rows), or with `strict` are a UsageError naming the file and line.

    A symbolic link at `path` is refused (UsageError), never followed."""
    rows: dict[str, ReportRow] = {}
    data = read_bytes_nofollow(Path(path)) or b""
    for number, raw in enumerate(data.splitlines(keepends=True), 1):
        if not raw.endswith(b"\n") and not strict:
            break  # an unfinished last line (the writer was killed): ignore it
        try:
            parsed = json.loads(raw)
        except (ValueError, RecursionError):
            parsed = None
        try:
            row = ReportRow.from_dict(parsed)
        except ValueError as e:
            if strict:
                raise UsageError(f"{path}:{number}: {e if parsed is not None else 'not JSON'}") from None
            continue
        rows[row.id] = row
    return rows


class Journal:
    """Append-only record of finished rows: each row is one complete line, handed to the OS before the next.

    A killed process loses nothing the OS already has; fsync (against power loss) runs at most once per
    `fsync_every_s` and on close, so tens of thousands of rows do not pay one disk flush each."""

    def __init__(self, path: str | Path, fsync_every_s: float = 1.0):
        self.path = Path(path)
        self.fsync_every_s = fsync_every_s
        self._repair()
        self._fd = open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # held open until close()
        self._synced = time.monotonic()

    def _repair(self) -> None:
        """Cut an unfinished last line left by a killed run."""
        data = read_bytes_nofollow(self.path)
        if data and not data.endswith(b"\n"):
            atomic_write_bytes(self.path, data[: data.rfind(b"\n") + 1])

    def append(self, row: ReportRow) -> None:
        """Write the row's line (a full disk raises OSError and may leave part of it, which `_repair` cuts)."""
        write_all(self._fd, (row_json(row) + "\n").encode("utf-8"))
        if time.monotonic() - self._synced >= self.fsync_every_s:
            os.fsync(self._fd)
            self._synced = time.monotonic()

    def close(self) -> None:
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)


def row_fingerprint(
    prompt_sha256: str, prompt_text: str, target_text: str, seed: int, model_id: str, settings: dict
) -> str:
    """Hash of everything that decides a row's audio: prompt bytes, texts, seed, model and output settings."""
    content = {
        "prompt_sha256": prompt_sha256,
        "prompt_text": prompt_text,
        "target_text": target_text,
        "seed": seed,
        "model_id": model_id,
        "settings": settings,
    }
    text = json.dumps(content, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def synthesis_seconds(row: ReportRow) -> float:
    """A row's synthesis time: its share of the engine's stage time (`timings["total"]`)."""
    return row.timings.get("total", 0.0)


def rtf(rows: Iterable[ReportRow]) -> float | None:
    """The one real-time factor every output shows: synthesis seconds per second of audio, over the ok rows given
    (model loading and file writing are not in it; a row's `rtf` is the same ratio for that row alone)."""
    ok = [row for row in rows if row.status == "ok"]
    audio_s = sum(row.duration_s or 0.0 for row in ok)
    return sum(map(synthesis_seconds, ok)) / audio_s if audio_s > 0 else None


def summarize(rows: list[ReportRow], wall_s: float, run: dict, reused: frozenset[str] = frozenset()) -> dict:
    """`summary.json`: counts, audio, synthesis time and RTF over every row of the report (made now or kept from an
    earlier run); `made`, `wall_seconds` and the throughputs over the rows made by this run; then the settings."""
    counts = {status: sum(row.status == status for row in rows) for status in STATUSES}
    ok = [row for row in rows if row.status == "ok"]
    made = [row for row in rows if row.status != "skipped" and row.id not in reused]
    made_audio_s = sum(row.duration_s or 0.0 for row in made if row.status == "ok")
    ratio = rtf(rows)
    return {
        "rows": len(rows),
        **counts,
        "reused": len(reused),
        "audio_seconds": round(sum(row.duration_s or 0.0 for row in ok), 3),
        "synthesis_seconds": round(sum(map(synthesis_seconds, ok)), 3),
        "rtf": round(ratio, 4) if ratio is not None else None,
        "made": len(made),
        "wall_seconds": round(wall_s, 3),
        "rows_per_second": round(len(made) / wall_s, 4) if wall_s > 0 else None,
        "audio_seconds_per_second": round(made_audio_s / wall_s, 4) if wall_s > 0 else None,
        **run,
    }
