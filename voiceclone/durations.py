"""`check-durations`: is every expected wav there, readable, sane, and about as long as it should be?

Checks per row (a row fails when any non-warning check fails; a missing row is a failure):
- `exists`: `<out>/<id>.wav` exists, decodes, holds every frame its header promises, and only finite samples;
- `sample_rate`: the file's rate equals the run's rate (summary.json, else the row's report entry);
- `not_silent`: peak at or above -60 dBFS; `not_clipped`: at most 0.1 % of samples at |x| >= 0.999;
- `reference`: |duration - reference| <= max(rel_tol * reference, abs_tol), the reference wav having the same id;
- `bounds`: inside [min_tokens, max_tokens] / token rate (25 Hz) seconds from the report, +- 0.1 s allowance;
- `speaking_rate` (warning only): seconds per character of the target within 1/3x..3x of the prompt's;
- `tokens` (with `tokens_from`): the row's `speech_token_digest` equals the other run's for the same id.
"""

from __future__ import annotations

import functools
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voiceclone.errors import UsageError
from voiceclone.files import first_line
from voiceclone.io import audio
from voiceclone.io.manifest import id_problem, load_manifest
from voiceclone.io.report import REPORT_JSONL, SUMMARY_JSON, ReportRow, read_report_rows
from voiceclone.io.subset import Subset

SILENT_PEAK = 10 ** (-60 / 20)
MAX_CLIPPED_FRACTION = 0.001
TOKEN_RATE_HZ = 25.0
BOUND_ALLOWANCE_S = 0.1
SPEAKING_RATE_BAND = (1 / 3, 3.0)


@dataclass
class Expected:
    """A row the output folder should hold, with what the checks compare it against."""

    id: str
    reference_audio: Path | None = None
    prompt_audio: Path | None = None
    prompt_text: str | None = None
    target_text: str | None = None


@dataclass
class Check:
    name: str
    ok: bool
    message: str
    warning: bool = False


@dataclass
class RowCheck:
    """The outcome of all checks of one row."""

    id: str
    wav: str
    duration_s: float | None = None
    reference_s: float | None = None
    missing: bool = False
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks if not c.warning)

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.warning and not c.ok]

    @property
    def status(self) -> str:
        return "missing" if self.missing else ("pass" if self.passed else "fail")

    def problems(self) -> list[str]:
        return [f"{c.name}: {c.message}" for c in self.checks if not c.ok and not c.warning]


@dataclass
class Tolerances:
    rel_tol: float = 0.2
    abs_tol: float = 0.3


def expected_rows(out_dir: Path, manifest: Path | None = None, fmt: str | None = None) -> list[Expected]:
    """The rows to check: every manifest row, or without a manifest every row of `out_dir/report.jsonl`, whose ids
    must be safe file names as a manifest's are (`io.manifest.id_problem`; UsageError otherwise)."""
    if manifest is not None:
        return [
            Expected(r.id, r.reference_audio, r.prompt_audio, r.prompt_text, r.target_text)
            for r in load_manifest(manifest, fmt, check_audio=False)
        ]
    report = out_dir / REPORT_JSONL
    if not report.is_file():
        raise UsageError(f"{report}: no report to take the expected rows from; pass --manifest")
    rows = [Expected(row_id) for row_id in read_report_rows(report, strict=True)]
    for row in rows:
        problem = id_problem(row.id)
        if problem:
            raise UsageError(f"{report}: id {row.id[:80]!r}: unsafe as a file name: {problem}")
    if not rows:
        raise UsageError(f"{report}: holds no rows to check")
    return rows


def _run_sample_rate(out_dir: Path) -> tuple[int | None, float]:
    """The run's sample rate and token rate from summary.json (None / 25 Hz when absent or unreadable); a value of
    the wrong kind is a UsageError naming the file and key."""
    path = out_dir / SUMMARY_JSON
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None, TOKEN_RATE_HZ
    if not isinstance(summary, dict):
        return None, TOKEN_RATE_HZ
    rate, token_rate = summary.get("sample_rate"), summary.get("token_frame_rate", TOKEN_RATE_HZ)
    for key, value in (("sample_rate", rate), ("token_frame_rate", token_rate)):
        if value is not None and not _positive_number(value):
            raise UsageError(f"{path}: {key}: expected a positive number, got {json.dumps(value)[:40]}")
    return rate, float(token_rate or TOKEN_RATE_HZ)


def _positive_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf")


@functools.lru_cache(maxsize=4096)
def _duration_of(path: Path) -> float | None:
    """Seconds of audio from the header (cached: many rows share a prompt), None when unreadable."""
    try:
        return audio.audio_info(path).duration_s
    except Exception:  # an unreadable file is reported by the caller
        return None


def check_row(
    exp: Expected,
    out_dir: Path,
    report_row: ReportRow | None,
    reference: Path | None,
    sample_rate: int | None,
    token_rate: float,
    tol: Tolerances,
) -> RowCheck:
    """Run every check on one row."""
    wav_path = out_dir / f"{exp.id}.wav"
    result = RowCheck(exp.id, str(wav_path))
    add = result.checks.append
    if not wav_path.is_file():
        result.missing = True
        why = f" (report status {report_row.status}: {report_row.error})" if report_row and report_row.error else ""
        add(Check("exists", False, f"missing: {wav_path}{why}"))
        return result
    try:
        wav, rate = audio.read_audio(wav_path)
        promised = audio.wav_header_frames(wav_path)
    except Exception as e:
        add(Check("exists", False, f"unreadable: {first_line(e)}"))
        return result
    if promised is not None and promised > wav.shape[-1]:
        add(Check("exists", False, f"cut short: the header promises {promised} frames, the file holds {wav.shape[-1]}"))
        return result
    if not np.isfinite(wav).all():  # a float wav can hold them; no statistic of it would be a number
        add(Check("exists", False, "holds NaN or infinite samples"))
        return result
    add(Check("exists", True, "readable"))
    stats = audio.audio_stats(wav, rate)
    duration = result.duration_s = stats["duration_s"]
    expected_rate = sample_rate or (report_row.sample_rate if report_row else None)
    if expected_rate:
        add(Check("sample_rate", rate == expected_rate, f"{rate} Hz (expected {expected_rate} Hz)"))
    add(Check("not_silent", stats["peak"] >= SILENT_PEAK, f"peak {stats['peak']:.5f}"))
    clipped = stats["clipped_fraction"]
    add(Check("not_clipped", clipped <= MAX_CLIPPED_FRACTION, f"{clipped * 100:.2f} % of samples clipped"))
    if reference is not None:
        ref_s = _duration_of(reference) if reference.is_file() else None
        if ref_s is None:
            add(Check("reference", False, f"reference wav missing or unreadable: {reference}"))
        else:
            result.reference_s = ref_s
            allowed = max(tol.rel_tol * ref_s, tol.abs_tol)
            ok = abs(duration - ref_s) <= allowed
            add(Check("reference", ok, f"{duration:.2f} s vs reference {ref_s:.2f} s (allowed +-{allowed:.2f} s)"))
    if report_row and report_row.min_tokens is not None and report_row.max_tokens is not None:
        low = report_row.min_tokens / token_rate - BOUND_ALLOWANCE_S
        high = report_row.max_tokens / token_rate + BOUND_ALLOWANCE_S
        ok = low <= duration <= high
        add(Check("bounds", ok, f"{duration:.2f} s (model bounds {max(low, 0):.2f}..{high:.2f} s)"))
    rate_check = _speaking_rate(exp, duration)
    if rate_check:
        add(rate_check)
    return result


def _speaking_rate(exp: Expected, duration: float) -> Check | None:
    """Warning when the target's seconds per character are far from the prompt's."""
    if not (exp.prompt_audio and exp.prompt_text and exp.target_text):
        return None
    prompt_s = _duration_of(exp.prompt_audio)
    prompt_chars = len("".join(exp.prompt_text.split()))
    target_chars = len("".join(exp.target_text.split()))
    if not prompt_s or not prompt_chars or not target_chars:
        return None
    expected = prompt_s / prompt_chars * target_chars
    low, high = SPEAKING_RATE_BAND
    ok = low * expected <= duration <= high * expected
    return Check("speaking_rate", ok, f"{duration:.2f} s, prompt's speaking rate suggests ~{expected:.2f} s", True)


def token_digests(source: Path) -> tuple[Path, dict[str, str | None]]:
    """Another run's report (`source`: its output folder or a report.jsonl) and its speech token digests by row id."""
    path = source / REPORT_JSONL if source.is_dir() else source
    if not path.is_file():
        raise UsageError(f"--tokens-from {source}: no {REPORT_JSONL} there")
    rows = read_report_rows(path, strict=True)
    if not rows:
        raise UsageError(f"{path}: holds no report rows")
    return path, {row_id: row.speech_token_digest for row_id, row in rows.items()}


def tokens_check(mine: str | None, theirs: str | None, other: Path, row_known: bool) -> Check:
    """Whether a row's speech token digest equals the other run's (both must have one)."""
    if mine is None:
        return Check("tokens", False, f"no speech_token_digest for this row in {REPORT_JSONL}")
    if theirs is None:
        why = "has no speech_token_digest for this row" if row_known else "has no such row"
        return Check("tokens", False, f"{other} {why}")
    if mine != theirs:
        return Check("tokens", False, f"speech tokens differ from {other} (digest {mine[:12]} vs {theirs[:12]})")
    return Check("tokens", True, f"speech tokens identical to {other}")


def check_durations(
    out_dir: str | Path,
    manifest: str | Path | None = None,
    fmt: str | None = None,
    reference_dir: str | Path | None = None,
    tol: Tolerances | None = None,
    sample_rate: int | None = None,
    subset: Subset | None = None,
    tokens_from: str | Path | None = None,
) -> list[RowCheck]:
    """Check every expected row of `out_dir` (those `subset` chooses); with `tokens_from` (another run's folder or
    report.jsonl) each row's speech tokens must also equal that run's."""
    out_dir = Path(out_dir)
    tol = tol or Tolerances()
    _duration_of.cache_clear()  # files may have changed since an earlier call in this process
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir}: output folder not found")
    rows = expected_rows(out_dir, Path(manifest) if manifest else None, fmt)
    rows = (subset or Subset()).select(rows)
    other, digests = token_digests(Path(tokens_from)) if tokens_from is not None else (None, {})
    report = read_report_rows(out_dir / REPORT_JSONL, strict=True)
    run_rate, token_rate = _run_sample_rate(out_dir)
    results = []
    for exp in rows:
        reference = Path(reference_dir) / f"{exp.id}.wav" if reference_dir else exp.reference_audio
        row = report.get(exp.id)
        result = check_row(exp, out_dir, row, reference, sample_rate or run_rate, token_rate, tol)
        if other is not None and not result.missing:
            mine = row.speech_token_digest if row else None
            result.checks.append(tokens_check(mine, digests.get(exp.id), other, exp.id in digests))
        results.append(result)
    return results


def results_json(results: list[RowCheck], settings: dict) -> dict:
    """The machine-readable outcome (`--json`)."""
    return {
        "passed": all(r.passed for r in results),
        "rows": len(results),
        "failed": sum(not r.passed for r in results),
        "missing": sum(r.missing for r in results),
        "warnings": sum(bool(r.warnings) for r in results),
        "settings": settings,
        "results": [
            {
                "id": r.id,
                "status": r.status,
                "wav": r.wav,
                "duration_s": r.duration_s,
                "reference_s": r.reference_s,
                "checks": [vars(c) for c in r.checks],
            }
            for r in results
        ],
    }


def junit_xml(results: list[RowCheck]) -> str:
    """JUnit XML: one test case per row; failed checks become a `<failure>`, warnings go to `<system-out>`."""
    failures = sum(not r.passed for r in results)
    suites = ET.Element("testsuites", name="voiceclone", tests=str(len(results)), failures=str(failures))
    suite = ET.SubElement(suites, "testsuite", name="check-durations", tests=str(len(results)), failures=str(failures))
    suite.set("errors", "0")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname="check-durations", name=r.id, time="0")
        if not r.passed:
            problems = r.problems()
            failure = ET.SubElement(case, "failure", message=problems[0], type=r.status)
            failure.text = "\n".join(problems)
        if r.warnings:
            ET.SubElement(case, "system-out").text = "\n".join(f"warning: {c.name}: {c.message}" for c in r.warnings)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def render_table(results: list[RowCheck], console) -> None:
    """A rich table of every row, then one summary line."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="check-durations")
    for column in ("id", "status", "duration", "reference", "problems / warnings"):
        table.add_column(column)
    style = {"pass": "green", "fail": "red", "missing": "red"}
    for r in results:
        notes = r.problems() + [f"warning: {c.name}: {c.message}" for c in r.warnings]
        table.add_row(
            escape(r.id),
            f"[{style[r.status]}]{r.status}[/]",
            "-" if r.duration_s is None else f"{r.duration_s:.2f} s",
            "-" if r.reference_s is None else f"{r.reference_s:.2f} s",
            escape("\n".join(notes)),
        )
    console.print(table)
    console.print(summary_line(results))


def plain_table(results: list[RowCheck]) -> str:
    """The table for logs and pipes: plain ASCII columns, one line per row however long, then the summary line."""
    header = ("id", "status", "duration", "reference", "problems / warnings")
    rows = [header]
    for r in results:
        notes = r.problems() + [f"warning: {c.name}: {c.message}" for c in r.warnings]
        duration = "-" if r.duration_s is None else f"{r.duration_s:.2f} s"
        reference = "-" if r.reference_s is None else f"{r.reference_s:.2f} s"
        rows.append((r.id, r.status, duration, reference, "; ".join(notes)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)), row[4]]).rstrip() for row in rows
    ]
    return "\n".join([*lines, summary_line(results)])


def summary_line(results: list[RowCheck]) -> str:
    failed = sum(not r.passed for r in results)
    missing = sum(r.missing for r in results)
    warned = sum(bool(r.warnings) for r in results)
    verdict = "PASS" if failed == 0 else "FAIL"
    return f"{verdict}: {len(results)} rows, {failed} failed ({missing} missing), {warned} with warnings"
