"""The `synth` run lifecycle: output-folder checks, resume planning, the engine loop, wavs and report files.

Durability: each wav is written atomically (audio.write_wav), each finished row is appended to a journal as one
complete line, and `report.jsonl` / `report.csv` / `summary.json` are only ever replaced whole (temp name + rename).
A run killed at any point leaves complete files only; `--resume` reads the report and the journal and keeps every row
whose wav is intact and whose fingerprint (prompt bytes, texts, seed, model id, output settings) still matches.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from voiceclone import __version__
from voiceclone.errors import UsageError
from voiceclone.files import is_temp_name
from voiceclone.io import audio
from voiceclone.io.manifest import Row, resolve
from voiceclone.io.report import (
    JOURNAL,
    REPORT_CSV,
    REPORT_JSONL,
    SUMMARY_JSON,
    Journal,
    ReportRow,
    read_report_rows,
    row_fingerprint,
    summarize,
    write_report,
    write_summary,
)

RUN_FILES = (REPORT_JSONL, REPORT_CSV, SUMMARY_JSON, JOURNAL)


@dataclass
class SynthOptions:
    """Everything `voiceclone synth` was asked to do besides the rows; checked on construction (UsageError)."""

    model: str
    out: Path
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 8
    max_batch_tokens: int = 32768
    seed: int = 0
    text_frontend: bool = True
    wav_format: str = "pcm16"
    resume: bool = False
    force: bool = False
    attention: str = "auto"
    compile: bool = False
    llm_file: str = "llm.pt"
    threads: int | None = None
    manifest: str = ""
    allow_download: bool = False

    def __post_init__(self) -> None:
        """Flag combinations and values that are wrong before anything else happens."""
        if self.resume and self.force:
            raise UsageError(
                "--resume and --force exclude each other: --resume keeps finished rows, --force redoes all"
            )
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_batch_tokens < 1:
            raise UsageError(f"--max-batch-tokens must be at least 1, got {self.max_batch_tokens}")
        if self.wav_format not in audio.WAV_SUBTYPES:
            raise UsageError(f"--wav-format must be one of {', '.join(audio.WAV_SUBTYPES)}, got {self.wav_format!r}")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be in [0, 2**63), got {self.seed}")


@dataclass
class SynthOutcome:
    """The report rows of a finished (or interrupted) run and its summary."""

    rows: list[ReportRow]
    summary: dict

    @property
    def failed(self) -> int:
        return sum(row.status == "failed" for row in self.rows)


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the run after the reports were written."""

    def __init__(self, outcome: SynthOutcome):
        super().__init__("interrupted")
        self.outcome = outcome


def existing_outputs(out: Path, rows: list[Row]) -> list[str]:
    """Names of files in `out` this run would overwrite."""
    if not out.is_dir():
        return []
    names = [name for name in RUN_FILES if os.path.lexists(out / name)]
    return names + [f"{row.id}.wav" for row in rows if os.path.lexists(out / f"{row.id}.wav")]


def refuse_existing(out: Path, rows: list[Row], resume: bool, force: bool) -> None:
    """UsageError when `out` is not a folder, or holds this manifest's outputs and neither --resume nor --force."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    for name in RUN_FILES:
        if (out / name).is_symlink():
            raise UsageError(f"{out / name}: is a symbolic link; voiceclone never writes through links (remove it)")
    found = existing_outputs(out, rows)
    if found and not (resume or force):
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise UsageError(f"{out}: already holds outputs ({shown}); pass --resume to continue or --force to overwrite")


def make_out_dir(out: Path) -> None:
    """Create `out` and clear temp files of killed runs (after `refuse_existing` said the run may write there)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    remove_temp_files(out)


def remove_temp_files(out: Path) -> None:
    """Delete temp files a killed run of this tool left behind (only names `files.is_temp_name` recognises)."""
    for path in out.glob(".*"):
        if is_temp_name(path.name) and not path.is_dir():
            path.unlink(missing_ok=True)


def output_settings(opts: SynthOptions, dtype: str) -> dict:
    """The settings that change a row's audio bytes (batching does not: rows equal their batch-1 result)."""
    return {"dtype": dtype, "text_frontend": opts.text_frontend, "wav_format": opts.wav_format}


def wav_intact(path: Path, entry: ReportRow) -> bool:
    """The wav is a regular file (not a link), decodes its header and has the rate and length the report recorded."""
    if not path.is_file() or path.is_symlink():
        return False
    try:
        info = audio.audio_info(path)
    except Exception:
        return False
    return info.sample_rate == entry.sample_rate and info.frames == entry.num_samples


def reusable_rows(out: Path, fingerprints: dict[str, str]) -> dict[str, ReportRow]:
    """Previous rows that are ok, match this run's fingerprint, and whose wav is intact."""
    previous = read_report_rows(out / REPORT_JSONL)
    previous.update(read_report_rows(out / JOURNAL))
    return {
        row_id: entry
        for row_id, entry in previous.items()
        if entry.status == "ok"
        and entry.fingerprint == fingerprints.get(row_id)
        and wav_intact(out / f"{row_id}.wav", entry)
    }


def longest_run(tokens: list[int]) -> int:
    """Length of the longest run of one repeated token (runaway generations repeat a token)."""
    best = run = 0
    for index, token in enumerate(tokens):
        run = run + 1 if index and token == tokens[index - 1] else 1
        best = max(best, run)
    return best


def _report_row(result, row_seed: int, fingerprint: str, out: Path, wav_format: str) -> ReportRow:
    """Write the row's wav (when it has audio) and describe it."""
    entry = ReportRow(
        id=result.id,
        status="failed",
        error=result.error,
        text_tokens=result.text_tokens,
        prompt_text_tokens=result.prompt_text_tokens,
        speech_tokens=len(result.speech_tokens),
        min_tokens=result.min_tokens,
        max_tokens=result.max_tokens,
        stop_reason=result.stop_reason,
        longest_token_run=longest_run(result.speech_tokens),
        segments=result.segments,
        seed=row_seed,
        timings={k: round(v, 6) for k, v in result.timings.items()},
        fingerprint=fingerprint,
    )
    if result.error is not None:
        return entry
    if result.wav is None:
        entry.error = "the engine returned no audio"
        return entry
    name = f"{result.id}.wav"
    try:
        audio.write_wav(out / name, result.wav, result.sample_rate, wav_format)
    except OSError as e:
        entry.error = f"cannot write {out / name}: {e.strerror or e}"
        return entry
    stats = audio.audio_stats(result.wav, result.sample_rate)
    entry.status, entry.wav = "ok", name
    entry.sample_rate, entry.num_samples = result.sample_rate, int(result.wav.shape[-1])
    entry.duration_s = round(stats["duration_s"], 6)
    entry.leading_silence_s = round(stats["leading_silence_s"], 4)
    entry.trailing_silence_s = round(stats["trailing_silence_s"], 4)
    entry.peak = round(stats["peak"], 6)
    entry.clipped_fraction = round(stats["clipped_fraction"], 6)
    entry.rtf = round(result.rtf, 6) if result.rtf is not None else None
    return entry


def dry_run(rows: list[Row], opts: SynthOptions) -> str:
    """Check everything a run needs without loading the model (device, existing outputs, the model folder's config);
    returns the one-line summary of what the run would do."""
    from voiceclone.engine import runtime
    from voiceclone.loading import config, hub

    rt = runtime.resolve_runtime(opts.device, opts.dtype, opts.attention, opts.compile)
    refuse_existing(opts.out, rows, opts.resume, opts.force)
    model = opts.model
    if opts.allow_download and hub.is_hub_id(model) and hub.find_cached(model) is None:
        model += " (in no local cache: the run downloads it)"
    elif model != "demo":
        config.read_config(model, opts.llm_file)
    found = existing_outputs(opts.out, rows)
    prompts = {row.prompt_audio for row in rows}
    seeded = sum(row.seed is not None for row in rows)
    refs = sum(row.reference_audio is not None for row in rows)
    return (
        f"dry run: {len(rows)} rows valid ({len(prompts)} distinct prompts, {seeded} with an explicit seed, "
        f"{refs} with reference audio); model {model}; device {rt.device}, "
        f"dtype {str(rt.dtype).removeprefix('torch.')}; {len(found)} existing outputs in {opts.out}"
    )


def run_synth(
    rows: list[Row],
    opts: SynthOptions,
    on_start: Callable[[int, int], None] = lambda total, reused: None,
    on_row: Callable[[ReportRow], None] = lambda row: None,
    on_model: Callable[[object], None] = lambda model: None,
) -> SynthOutcome:
    """Synthesise every row not already done; write wavs, the reports and the summary. Raises Interrupted on Ctrl-C.

    Order of checks: device (runtime), existing outputs, model; `opts.out` is created only after the model loaded."""
    from voiceclone.engine import engine, runtime
    from voiceclone.loading import load

    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    rt = runtime.resolve_runtime(opts.device, opts.dtype, opts.attention, opts.compile)
    runtime.set_cpu_threads(opts.threads)
    refuse_existing(opts.out, rows, opts.resume, opts.force)
    model_dir = load.resolve_model(opts.model, allow_download=opts.allow_download)
    model = load.load_model(model_dir, rt.device, rt.dtype, opts.llm_file)
    if rt.compile:
        runtime.compile_model(model)
    make_out_dir(opts.out)
    on_model(model)
    dtype_name = str(rt.dtype).removeprefix("torch.")
    settings = output_settings(opts, dtype_name)
    rows = resolve(rows, opts.seed)
    by_id = {row.id: row for row in rows}
    fingerprints = {
        row.id: row_fingerprint(row.prompt_sha256, row.prompt_text, row.target_text, row.seed, model.model_id, settings)
        for row in rows
    }
    done = reusable_rows(opts.out, fingerprints) if opts.resume else {}
    if not opts.resume:
        (opts.out / JOURNAL).unlink(missing_ok=True)
    reused = frozenset(done)
    todo = [row for row in rows if row.id not in done]
    for row in todo:
        (opts.out / f"{row.id}.wav").unlink(missing_ok=True)  # never leave an old wav beside a new report entry
    on_start(len(rows), len(done))
    runner = engine.Engine(
        model,
        engine.EngineSettings(
            batch_size=opts.batch_size, max_batch_tokens=opts.max_batch_tokens, text_frontend=opts.text_frontend
        ),
    )
    journal = Journal(opts.out / JOURNAL)
    interrupted = False
    try:
        for result in runner.run(todo):
            entry = _report_row(result, by_id[result.id].seed, fingerprints[result.id], opts.out, opts.wav_format)
            journal.append(entry)
            done[entry.id] = entry
            on_row(entry)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        journal.close()
        remove_temp_files(opts.out)
    report_rows = [
        done.get(row.id)
        or ReportRow(id=row.id, status="skipped", error="interrupted before this row finished", seed=row.seed)
        for row in rows
    ]
    run = {
        "manifest": opts.manifest,
        "model": opts.model,
        "model_id": model.model_id,
        "sample_rate": model.config.sample_rate,
        "token_frame_rate": model.config.token_frame_rate,
        "device": str(rt.device),
        "dtype": dtype_name,
        "attention": opts.attention,
        "compile": opts.compile,
        "batch_size": opts.batch_size,
        "max_batch_tokens": opts.max_batch_tokens,
        "seed": opts.seed,
        "text_frontend": opts.text_frontend,
        "wav_format": opts.wav_format,
        "peak_memory_bytes": runner.stats.get("peak_memory_bytes"),
        "interrupted": interrupted,
        "started": started_at,
        "voiceclone_version": __version__,
    }
    summary = summarize(report_rows, time.perf_counter() - started, run, reused)
    write_report(opts.out, report_rows)
    write_summary(opts.out, summary)
    (opts.out / JOURNAL).unlink(missing_ok=True)
    outcome = SynthOutcome(report_rows, summary)
    if interrupted:
        raise Interrupted(outcome)
    return outcome
