"""Shards of a run: which rows a shard owns (a stable hash of the row id), the files a shard writes into the shared
`--out`, and the one merge of every report and journal found there into the single report (`merge-reports`, and
rank 0 under torchrun). Imports no torch.

A row's shard is `sha256(id) mod N`: it never depends on the row's position, so a row keeps its shard when the
manifest is reordered or grows. Each shard writes only its own journal, shard report and shard summary, so no two
processes ever append to one file. The merge reads every source once (O(rows)), newest file last.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from voiceclone.errors import UsageError
from voiceclone.io.manifest import Row
from voiceclone.io.report import (
    JOURNAL,
    REPORT_JSONL,
    ReportRow,
    read_report_rows,
    summarize,
    write_report,
    write_summary,
)

SHARD_FILE = re.compile(r"^(report|summary|\.voiceclone-journal)\.shard-(\d+)-of-(\d+)\.(jsonl|json)$")
SHARD_SPEC = re.compile(r"^(\d+)/(\d+)$")


def shard_of(row_id: str, count: int) -> int:
    """The shard (0..count-1) that owns `row_id`: the first 8 bytes of sha256(id), big-endian, mod `count`."""
    digest = hashlib.sha256(row_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (`--shard I/N`, or a torchrun rank of its world size)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"--shard {self.index}/{self.count}: need 0 <= I < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`I/N` -> Shard(I, N); UsageError otherwise."""
        match = SHARD_SPEC.match(text.strip())
        if not match:
            raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/4")
        return cls(int(match[1]), int(match[2]))

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, rows: list[Row]) -> list[Row]:
        """The rows this shard owns, in manifest order."""
        return [row for row in rows if shard_of(row.id, self.count) == self.index]

    def _name(self, stem: str, ext: str) -> str:
        return f"{stem}.shard-{self.index}-of-{self.count}.{ext}"

    @property
    def report(self) -> str:
        return self._name("report", "jsonl")

    @property
    def summary(self) -> str:
        return self._name("summary", "json")

    @property
    def journal(self) -> str:
        return self._name(".voiceclone-journal", "jsonl")

    @property
    def files(self) -> tuple[str, str, str]:
        return (self.report, self.summary, self.journal)


def shard_files(out: Path) -> list[Path]:
    """Every shard report, summary and journal in `out` (any shard count)."""
    if not out.is_dir():
        return []
    return sorted(path for path in out.iterdir() if SHARD_FILE.match(path.name))


def remove_shard_files(out: Path) -> None:
    """Delete every shard file (after the one report holding their rows was written)."""
    for path in shard_files(out):
        path.unlink(missing_ok=True)


def _mtime(path: Path) -> int:
    try:
        return path.lstat().st_mtime_ns
    except OSError:
        return -1


def previous_rows(out: Path) -> dict[str, ReportRow]:
    """Every row `out` records, from `report.jsonl`, the journal and every shard report and journal, read oldest file
    first so the newest entry of a row wins; a `skipped` entry never replaces a finished one."""
    sources = [out / REPORT_JSONL, out / JOURNAL] + [p for p in shard_files(out) if p.suffix == ".jsonl"]
    found: dict[str, ReportRow] = {}
    for path in sorted(sources, key=lambda p: (_mtime(p), p.name)):
        if _mtime(path) < 0:
            continue
        for row_id, entry in read_report_rows(path).items():
            if entry.status != "skipped" or row_id not in found:
                found[row_id] = entry
    return found


def shard_summaries(out: Path) -> list[dict]:
    """The shard summaries of the newest shard count in `out` (by file time), in shard order."""
    summaries = []
    for path in shard_files(out):
        if path.name.startswith("summary."):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and isinstance(data.get("shard"), dict):
                summaries.append((_mtime(path), data))
    if not summaries:
        return []
    count = max(summaries, key=lambda item: item[0])[1]["shard"]["count"]
    chosen = [data for _, data in summaries if data["shard"]["count"] == count]
    return sorted(chosen, key=lambda data: data["shard"]["index"])


@dataclass
class Merged:
    """The one report (manifest order; rows no source finished are `skipped`), the ids missing, and the summary."""

    rows: list[ReportRow]
    missing: list[str]
    summary: dict


def shard_entry(shard: Shard | None, summary: dict, threads: int | None) -> dict:
    """One rank's or shard's line in `summary.json`'s `shards`: its rows, what it made, and its wall time."""
    return {
        "shard": shard.label if shard else "0/1",
        "rows": summary["rows"],
        "made": summary["made"],
        "ok": summary["ok"],
        "failed": summary["failed"],
        "skipped": summary["skipped"],
        "wall_seconds": summary["wall_seconds"],
        "device": summary.get("device"),
        "threads": threads,
    }


def merge(out: Path, rows: list[Row], lost: str = "no shard has finished this row") -> Merged:
    """Merge every source in `out` for `rows` (the manifest's, after --limit/--ids) into the one report; one pass."""
    found = previous_rows(out)
    report, missing = [], []
    for row in rows:
        entry = found.get(row.id)
        if entry is None or entry.status == "skipped":
            missing.append(row.id)
            entry = ReportRow(id=row.id, status="skipped", error=lost, seed=entry.seed if entry else None)
        report.append(entry)
    summaries = shard_summaries(out)
    counters = set(summarize([], 1.0, {}))
    run = {k: v for k, v in summaries[0].items() if k not in counters} if summaries else {}
    run.pop("shard", None)
    wall = max((s["wall_seconds"] for s in summaries), default=0.0)
    run["world_size"] = summaries[0]["shard"]["count"] if summaries else 1
    run["shards"] = [entry for s in summaries for entry in s.get("shards", [])]
    summary = summarize(report, wall, run)
    made = sum(s["made"] for s in summaries)
    made_audio = sum((s.get("audio_seconds_per_second") or 0.0) * s["wall_seconds"] for s in summaries)
    summary["reused"] = sum(s["reused"] for s in summaries)
    summary["made"] = made
    summary["rows_per_second"] = round(made / wall, 4) if wall > 0 else None
    summary["audio_seconds_per_second"] = round(made_audio / wall, 4) if wall > 0 else None
    return Merged(report, missing, summary)


def write_merged(out: Path, merged: Merged) -> None:
    """Write the one `report.jsonl` / `report.csv` / `summary.json`; once every row is finished, the shard files
    and the journal are redundant and removed."""
    write_report(out, merged.rows)
    write_summary(out, merged.summary)
    if not merged.missing:
        remove_shard_files(out)
        (out / JOURNAL).unlink(missing_ok=True)


def missing_line(missing: list[str]) -> str:
    """`N rows missing: a, b, c and M more` for an incomplete merge."""
    shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
    return f"{len(missing)} rows not finished by any shard yet: {shown}"
