"""Manifests in: CSV/TSV, JSONL and Seed-TTS `.lst` readers, and validation of every row before a model loads."""

from __future__ import annotations

import csv
import json
import os
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from voiceclone.errors import ManifestError
from voiceclone.files import first_line, sha256_file
from voiceclone.frontend.text import is_punctuation_only
from voiceclone.io import audio
from voiceclone.seeds import seed_for

FORMATS = ("csv", "tsv", "jsonl", "lst")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".lst": "lst"}

REQUIRED_FIELDS = ("id", "prompt_audio", "prompt_text", "target_text")
OPTIONAL_FIELDS = ("reference_audio", "seed")
FIELDS = REQUIRED_FIELDS + OPTIONAL_FIELDS
PATH_AND_TEXT_FIELDS = REQUIRED_FIELDS + ("reference_audio",)
ALIASES = {"key": "id", "prompt_wav": "prompt_audio", "text": "target_text", "wav": "reference_audio"}
LST_FIELDS = ("id", "prompt_text", "prompt_audio", "target_text", "reference_audio")
LST_LAYOUT = "id|prompt_text|prompt_wav|target_text[|reference_wav]"

MAX_ID_BYTES = 128
MAX_LINE_BYTES = 1 << 20  # a manifest line (or CSV record) longer than this is refused, never read whole
MAX_SEED = 2**63
UNSAFE_ID_CHARS = set('/\\<>:"|?*')
RESERVED_NAMES = {"con", "prn", "aux", "nul"} | {f"{p}{i}" for p in ("com", "lpt") for i in range(1, 10)}
csv.field_size_limit(MAX_LINE_BYTES)


@dataclass(frozen=True)
class Row:
    """One row, from the manifest to the engine. `load_manifest` makes it validated, with paths resolved against the
    manifest's folder and `seed` the row's own seed column (or None); `resolve` makes it ready to run: `seed` the seed
    it runs with and `prompt_sha256` the digest of its prompt file."""

    id: str
    prompt_audio: Path
    prompt_text: str
    target_text: str
    seed: int | None = None
    reference_audio: Path | None = None
    line: int = 0
    prompt_sha256: str | None = None


class ManifestErrors(ManifestError):
    """Every problem found in one manifest; `str()` is one line per problem."""

    def __init__(self, errors: list[ManifestError]):
        self.errors = errors
        first = errors[0]
        super().__init__(first.path, first.line, first.field, first.message)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


def detect_format(path: str | Path, override: str | None = None) -> str:
    """The manifest format: `override` if given, else from the file extension."""
    if override is not None:
        if override not in FORMATS:
            message = f"unknown format {override!r} (choose from {', '.join(FORMATS)})"
            raise ManifestError(str(path), None, None, message)
        return override
    fmt = EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ManifestError(str(path), None, None, "cannot tell the format from the extension; pass --format")
    return fmt


def _text_lines(path: Path, name: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line) for each line, streaming in bounded reads; a bad byte or a line longer than
    MAX_LINE_BYTES is a located error (a file without newlines, such as /dev/zero, is refused, not read whole)."""
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise ManifestError(name, number, None, f"line longer than {MAX_LINE_BYTES} bytes (1 MB)")
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(name, number, None, f"not valid UTF-8 (byte {e.start})") from None
            yield number, text.rstrip("\r\n")


def _shown(text: str, limit: int = 200) -> str:
    """User text as it may appear in a one-line message: as is when printable, else its repr; cut at `limit`."""
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _canonical(name: str) -> str:
    key = name.strip()
    return ALIASES.get(key, key)


def _read_delimited(path: Path, name: str, delimiter: str) -> Iterator[tuple[int, dict[str, str] | ManifestError]]:
    lines = _text_lines(path, name)
    numbers: list[int] = []
    record = [0]  # characters of the record being read (a quoted cell may span lines)

    def feed() -> Iterator[str]:
        for number, text in lines:
            numbers.append(number)
            record[0] += len(text) + 1
            if record[0] > MAX_LINE_BYTES:
                raise ManifestError(name, number, None, f"record longer than {MAX_LINE_BYTES} characters (1 MB)")
            yield text

    reader = csv.reader(feed(), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    while True:
        start = numbers[-1] + 1 if numbers else 1
        record[0] = 0
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            line = numbers[-1] if numbers else 1
            raise ManifestError(name, line, None, f"malformed {delimiter!r}-separated line: {e}") from None
        if not any(c.strip() for c in cells):
            continue
        if header is None:
            header = [_canonical(c) for c in cells]
            _check_header(header, name, start)
            continue
        if len(cells) != len(header):
            yield start, ManifestError(name, start, None, f"expected {len(header)} columns, found {len(cells)}")
            continue
        yield start, dict(zip(header, cells, strict=True))
    if header is None:
        raise ManifestError(name, None, None, "empty manifest: no header line")


def _check_header(header: list[str], name: str, line: int) -> None:
    for column in header:
        if column not in FIELDS:
            raise ManifestError(
                name, line, _shown(column) or "header", f"unknown column (expected {', '.join(FIELDS)})"
            )
    for column in set(header):
        if header.count(column) > 1:
            raise ManifestError(name, line, column, "column given twice")
    for column in REQUIRED_FIELDS:
        if column not in header:
            raise ManifestError(name, line, column, "missing required column")


def _read_jsonl(path: Path, name: str) -> Iterator[tuple[int, dict[str, str] | ManifestError]]:
    for number, text in _text_lines(path, name):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:
            yield number, ManifestError(name, number, None, f"invalid JSON: {first_line(e)[:200]}")
            continue
        if not isinstance(obj, dict):
            yield number, ManifestError(name, number, None, f"expected a JSON object, found {type(obj).__name__}")
            continue
        fields: dict = {}
        problem = None
        for key, value in obj.items():
            field = _canonical(key)
            if field not in FIELDS:
                problem = ManifestError(name, number, _shown(key, 64), "unknown field")
            elif field in fields:
                problem = ManifestError(name, number, field, f"given twice (as {key!r} and an alias)")
            else:
                fields[field] = value
            if problem:
                break
        yield number, problem or fields


def _read_lst(path: Path, name: str) -> Iterator[tuple[int, dict[str, str] | ManifestError]]:
    for number, text in _text_lines(path, name):
        if not text.strip():
            continue
        parts = text.split("|")
        if len(parts) not in (4, 5):
            message = f"expected 4 or 5 '|'-separated fields ({LST_LAYOUT}), found {len(parts)}"
            yield number, ManifestError(name, number, None, message)
            continue
        yield number, dict(zip(LST_FIELDS, parts, strict=False))


def read_records(path: str | Path, fmt: str | None = None) -> Iterator[tuple[int, dict | ManifestError]]:
    """Stream (line, raw fields) from a manifest; line-level problems come as ManifestError values."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    name = str(path)
    try:
        if fmt == "csv":
            yield from _read_delimited(path, name, ",")
        elif fmt == "tsv":
            yield from _read_delimited(path, name, "\t")
        elif fmt == "jsonl":
            yield from _read_jsonl(path, name)
        else:
            yield from _read_lst(path, name)
    except OSError as e:
        raise ManifestError(name, None, None, f"cannot read manifest: {e.strerror or e}") from None


def id_problem(row_id: str) -> str | None:
    """Why `row_id` is unsafe as an output file name, or None."""
    if not row_id:
        return "empty id"
    if len(row_id.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return f"longer than {MAX_ID_BYTES} bytes"
    bad = sorted({c for c in row_id if c in UNSAFE_ID_CHARS})
    if bad:
        return f"contains {''.join(bad)!r} (not allowed in file names)"
    if row_id.startswith("."):
        return "starts with '.'"
    if ".." in row_id:
        return "contains '..'"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in row_id):
        return "contains control or invisible characters"
    if row_id != row_id.strip() or row_id.endswith("."):
        return "starts or ends with whitespace or ends with '.'"
    if row_id.split(".")[0].lower() in RESERVED_NAMES:
        return "reserved file name on Windows"
    return None


def parse_seed(value: object) -> int:
    """A row seed: an integer in [0, 2**63); raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 19:
            raise ValueError(f"not a non-negative integer: {value[:40]!r}")
        value = int(text)
    if not isinstance(value, int):
        raise ValueError(f"must be an integer, found {type(value).__name__}")
    if not 0 <= value < MAX_SEED:
        raise ValueError("must be in [0, 2**63)")
    return value


class _AudioChecker:
    """Checks of audio files, cached per path so repeated prompts cost one read: the header, and for a prompt also its
    samples (`audio.prompt_problem`)."""

    def __init__(self):
        self.cache: dict[str, str | None] = {}

    def problem(self, path: Path, is_prompt: bool) -> str | None:
        key = f"{is_prompt}:{path}"
        if key not in self.cache:
            self.cache[key] = self._inspect(path, is_prompt)
        return self.cache[key]

    @staticmethod
    def _inspect(path: Path, is_prompt: bool) -> str | None:
        if not os.path.isfile(path):
            return "file not found" if not os.path.exists(path) else "not a file"
        try:
            if is_prompt:
                return audio.prompt_problem(path)
            info = audio.audio_info(path)
        except Exception as e:  # any decoder complaint means the file is unusable
            return f"unreadable audio ({first_line(e).rsplit(': ', 1)[-1].rstrip('.')[:120]})"
        return "audio has no samples" if info.frames <= 0 else None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def load_manifest(path: str | Path, fmt: str | None = None, check_audio: bool = True) -> list[Row]:
    """Read and validate a whole manifest; raises ManifestErrors listing every problem found."""
    path = Path(path)
    name = str(path)
    base = path.parent
    checker = _AudioChecker()
    rows: list[Row] = []
    errors: list[ManifestError] = []
    seen: dict[str, int] = {}
    folded: dict[str, tuple[str, int]] = {}
    try:
        for line, record in read_records(path, fmt):
            if isinstance(record, ManifestError):
                errors.append(record)
                continue
            row_errors: list[ManifestError] = []

            def fail(field: str, message: str, line: int = line, row_errors: list = row_errors) -> None:
                row_errors.append(ManifestError(name, line, field, message))

            values: dict[str, str] = {}
            for field in PATH_AND_TEXT_FIELDS:
                value = record.get(field)
                if value is None:
                    if field in REQUIRED_FIELDS:
                        fail(field, "missing")
                elif not isinstance(value, str):
                    fail(field, f"must be a string, found {type(value).__name__}")
                elif field in REQUIRED_FIELDS and not value.strip():
                    fail(field, "empty")
                elif not _encodable(value):
                    fail(field, "contains a lone surrogate (not valid Unicode text)")
                elif field == "target_text" and is_punctuation_only(value):
                    fail(field, f"nothing to speak (only punctuation and symbols): {_shown(value)}")
                else:
                    values[field] = value
            row_id = values.get("id", "")
            if row_id.strip():
                problem = id_problem(row_id)
                if problem:
                    fail("id", f"unsafe as a file name: {problem}")
                elif row_id in seen:
                    fail("id", f"duplicate id {row_id!r} (first on line {seen[row_id]})")
                else:
                    seen[row_id] = line
                    other = folded.setdefault(row_id.casefold(), (row_id, line))
                    if other[0] != row_id:
                        fail("id", f"id {row_id!r} differs from {other[0]!r} (line {other[1]}) only by case")
            seed = None
            raw_seed = record.get("seed")
            if raw_seed is not None and raw_seed != "":
                try:
                    seed = parse_seed(raw_seed)
                except ValueError as e:
                    fail("seed", str(e))
            paths: dict[str, Path | None] = {}
            for field in ("prompt_audio", "reference_audio"):
                value = values.get(field, "")
                paths[field] = _resolve(base, value) if value.strip() else None
                if paths[field] is not None and check_audio:
                    problem = checker.problem(paths[field], field == "prompt_audio")
                    if problem:
                        fail(field, f"{problem}: {_shown(value)}")
            if row_errors:
                errors.extend(row_errors)
                continue
            rows.append(
                Row(
                    id=row_id,
                    prompt_audio=paths["prompt_audio"],
                    prompt_text=values["prompt_text"],
                    target_text=values["target_text"],
                    reference_audio=paths["reference_audio"],
                    seed=seed,
                    line=line,
                )
            )
    except ManifestError as e:
        errors.append(e)
    if errors:
        raise ManifestErrors(errors)
    if not rows:
        raise ManifestErrors([ManifestError(name, None, None, "no rows")])
    return rows


def resolve(rows: Iterable[Row], base_seed: int) -> list[Row]:
    """The rows as the engine takes them: each with the seed it runs with (`seeds.seed_for`) and the sha256 of its
    prompt file (each distinct file is read once)."""
    digests: dict[Path, str] = {}
    resolved = []
    for row in rows:
        if row.prompt_audio not in digests:
            digests[row.prompt_audio] = sha256_file(row.prompt_audio)
        seed = seed_for(row.seed, base_seed, row.id)
        resolved.append(replace(row, seed=seed, prompt_sha256=digests[row.prompt_audio]))
    return resolved
