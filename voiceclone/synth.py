"""The `synth` run lifecycle: output-folder checks (`outdir`), resume planning, the engine loop, wavs and report files.

Durability: each wav is written atomically (audio.write_wav), each finished row is appended to a journal as one
complete line, and `report.jsonl` / `report.csv` / `summary.json` are only ever replaced whole (temp name + rename).
A run killed at any point leaves complete files only; `--resume` reads the reports and journals and keeps every row
whose wav is intact and whose fingerprint (prompt bytes, texts, seed, model id, output settings) still matches. A
`--shard I/N` run (or torchrun rank) does the same for its own rows and writes a shard report instead (`shards`).
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from voiceclone import __version__, interrupts
from voiceclone.errors import UsageError
from voiceclone.files import atomic_write_text
from voiceclone.frontend.text import frontend_id
from voiceclone.io import audio
from voiceclone.io.manifest import Row, resolve
from voiceclone.io.report import (
    JOURNAL,
    ReportRow,
    longest_run,
    report_jsonl_text,
    row_fingerprint,
    speech_token_digest,
    summarize,
    write_report,
    write_summary,
)
from voiceclone.io.subset import Subset
from voiceclone.loading import hub, layout
from voiceclone.outdir import (
    make_out_dir,
    refuse_dropping_rows,
    refuse_existing,
    remove_temp_files,
    run_files,
    wav_intact,
)
from voiceclone.outputs import append_row, close_journal, error_text, open_journal, reports_error
from voiceclone.shards import Shard, previous_rows, remove_shard_files, shard_entry


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
    subset: Subset = field(default_factory=Subset)
    shard: Shard | None = None
    owner: bool = True

    def __post_init__(self) -> None:
        """Flag combinations and values that are wrong before anything else happens (the dry run checks them too)."""
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
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")


@dataclass
class SynthOutcome:
    """The report rows of a finished (or interrupted) run and its summary."""

    rows: list[ReportRow]
    summary: dict
    stopped: str | None = None  # why the run stopped early (a write to --out failed), if it did

    @property
    def failed(self) -> int:
        return sum(row.status == "failed" for row in self.rows)


class _WriteFailed(Exception):
    """A row's wav could not be written: the run stops after recording the row as failed."""

    def __init__(self, entry: ReportRow):
        super().__init__(entry.error)
        self.entry = entry


class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the run after the reports were written."""

    def __init__(self, outcome: SynthOutcome):
        super().__init__("interrupted")
        self.outcome = outcome


def check_out(rows: list[Row], chosen: list[Row], opts: SynthOptions) -> None:
    """Refuse an `--out` holding this run's outputs without --resume/--force, or a subset that would drop report rows
    (`rows`: what this process makes, `chosen`: the whole run's rows)."""
    refuse_existing(opts.out, rows, opts.resume, opts.force, run_files(opts.out, opts.shard))
    if opts.subset.given:
        refuse_dropping_rows(opts.out, chosen)


def clear_out(opts: SynthOptions) -> None:
    """Create `--out`; without --resume drop the journal(s) of earlier runs: a shard its own, a whole run all."""
    make_out_dir(opts.out, clear_temp=opts.shard is None)
    if opts.resume:
        return
    if opts.shard is not None:
        (opts.out / opts.shard.journal).unlink(missing_ok=True)
    else:
        (opts.out / JOURNAL).unlink(missing_ok=True)
        remove_shard_files(opts.out)


def output_settings(opts: SynthOptions, dtypes: dict[str, str]) -> dict:
    """The settings that change a row's audio bytes (batching does not: rows equal their batch-1 result): the dtype
    each network ran in (not the `--dtype` name: `mixed` without native bfloat16 runs, and equals, float32)."""
    return {"dtypes": dtypes, "text_frontend": frontend_id(opts.text_frontend), "wav_format": opts.wav_format}


def dtype_label(requested: str, dtypes: dict[str, str]) -> str:
    """The run's dtype as the summary records it: `mixed`, or the resolved dtype (`auto` -> `float32`)."""
    return "mixed" if requested == "mixed" else dtypes["llm"]


def reusable_rows(out: Path, fingerprints: dict[str, str]) -> dict[str, ReportRow]:
    """Previous rows (of any report, journal or shard file) that are ok, match this run's fingerprint, and whose wav
    is intact."""
    previous = previous_rows(out)
    return {
        row_id: entry
        for row_id, entry in previous.items()
        if entry.status == "ok"
        and entry.fingerprint == fingerprints.get(row_id)
        and wav_intact(out / f"{row_id}.wav", entry)
    }


@dataclass
class Plan:
    """What a run will do: its rows (resolved), their fingerprints, the rows kept from an earlier run, the rest."""

    rows: list[Row]
    fingerprints: dict[str, str]
    kept: dict[str, ReportRow]
    todo: list[Row]
    model_id: str


def plan_run(rows: list[Row], opts: SynthOptions, model_dir: Path, dtypes: dict[str, str]) -> Plan:
    """Fingerprint the rows (prompt digests, texts, seeds, the model id from the folder's files, output settings) and
    split them into rows `--resume` keeps and rows to make; reads no weights."""
    model_id = layout.model_id_of(layout.existing_dir(model_dir), opts.llm_file)
    settings = output_settings(opts, dtypes)
    rows = resolve(rows, opts.seed)
    fingerprints = {
        row.id: row_fingerprint(row.prompt_sha256, row.prompt_text, row.target_text, row.seed, model_id, settings)
        for row in rows
    }
    kept = reusable_rows(opts.out, fingerprints) if opts.resume else {}
    return Plan(rows, fingerprints, kept, [row for row in rows if row.id not in kept], model_id)


def report_row(
    result,
    row_seed: int,
    fingerprint: str,
    out: Path,
    wav_format: str,
    dtypes: dict[str, str],
    stop_on_write_error: bool = False,
) -> ReportRow:
    """Write the row's wav (when it has audio) and describe it; a wav that cannot be written fails the row, or with
    `stop_on_write_error` raises _WriteFailed carrying the failed row (the run stops: later rows would fail too)."""
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
        dtypes=dtypes,
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
        entry.error = f"cannot write {out / name}: {error_text(e)}"
        if stop_on_write_error:
            raise _WriteFailed(entry) from None
        return entry
    stats = audio.audio_stats(result.wav, result.sample_rate)
    entry.status, entry.wav = "ok", name
    entry.speech_token_digest = speech_token_digest(result.speech_tokens)
    entry.sample_rate, entry.num_samples = result.sample_rate, int(result.wav.shape[-1])
    entry.duration_s = round(stats["duration_s"], 6)
    entry.leading_silence_s = round(stats["leading_silence_s"], 4)
    entry.trailing_silence_s = round(stats["trailing_silence_s"], 4)
    entry.peak = round(stats["peak"], 6)
    entry.clipped_fraction = round(stats["clipped_fraction"], 6)
    entry.rtf = round(result.rtf, 6) if result.rtf is not None else None
    return entry


def write_outputs(opts: SynthOptions, report_rows: list[ReportRow], summary: dict) -> None:
    """A whole run: the one report and summary (the journal and shard files are then redundant). A shard: its shard
    report and summary, for `merge-reports` (or rank 0) to merge."""
    if opts.shard is None:
        write_report(opts.out, report_rows)
        write_summary(opts.out, summary)
        (opts.out / JOURNAL).unlink(missing_ok=True)
        remove_shard_files(opts.out)
        return
    atomic_write_text(opts.out / opts.shard.report, report_jsonl_text(report_rows))
    atomic_write_text(
        opts.out / opts.shard.summary, json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    )
    (opts.out / opts.shard.journal).unlink(missing_ok=True)


def run_synth(
    rows: list[Row],
    opts: SynthOptions,
    on_start: Callable[[int, list[ReportRow]], None] = lambda total, kept: None,
    on_row: Callable[[ReportRow], None] = lambda row: None,
    on_model: Callable[[object], None] = lambda model: None,
) -> SynthOutcome:
    """Synthesise every row (of `opts.subset`) not already done; write wavs, the reports and the summary. Raises
    Interrupted on Ctrl-C.

    Order of checks: device (runtime), existing outputs, model; the model is loaded only when a row is left to make,
    and `opts.out` is created only after that."""
    from voiceclone.engine import engine, runtime
    from voiceclone.loading import config as model_config
    from voiceclone.loading import load

    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    chosen = opts.subset.select(rows)
    mine = opts.shard.select(chosen) if opts.shard is not None else chosen
    rt = runtime.resolve_runtime(opts.device, opts.dtype, opts.attention, opts.compile)
    threads = runtime.set_cpu_threads(opts.threads)
    if opts.owner:
        check_out(mine, chosen, opts)
    model_dir = load.resolve_model(opts.model, allow_download=opts.allow_download)
    origin = hub.resolve(opts.model)  # a hub id: found in its cache now (downloaded above when allowed)
    dtypes = rt.dtypes.names()
    plan = plan_run(mine, opts, model_dir, dtypes)
    model = load.load_model(model_dir, rt.device, rt.dtypes, opts.llm_file) if plan.todo else None
    if model is not None and rt.compile:
        runtime.compile_model(model)
    config = model.config if model is not None else model_config.read_config(model_dir, opts.llm_file)
    if opts.owner:
        clear_out(opts)
    journal_name = opts.shard.journal if opts.shard is not None else JOURNAL
    journal = open_journal(opts.out / journal_name, [opts.out / f"{row.id}.wav" for row in plan.todo])
    if model is not None:
        on_model(model)
    done = dict(plan.kept)
    on_start(len(plan.rows), list(plan.kept.values()))
    by_id = {row.id: row for row in plan.rows}
    runner = None
    if model is not None:
        settings = engine.EngineSettings(
            batch_size=opts.batch_size, max_batch_tokens=opts.max_batch_tokens, text_frontend=opts.text_frontend
        )
        runner = engine.Engine(model, settings)
    interrupted, stopped = False, None
    try:
        for result in runner.run(plan.todo) if runner is not None else ():
            if interrupts.requested():
                raise KeyboardInterrupt  # a signal came but its KeyboardInterrupt was swallowed on the way
            seed, fingerprint = by_id[result.id].seed, plan.fingerprints[result.id]
            try:
                entry = report_row(
                    result, seed, fingerprint, opts.out, opts.wav_format, dtypes, stop_on_write_error=True
                )
            except _WriteFailed as failed:
                entry, stopped = failed.entry, failed.entry.error
            done[entry.id] = entry
            stopped = append_row(journal, entry) or stopped
            on_row(entry)
            if stopped:
                break  # every later row would fail the same way
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stopped = close_journal(journal) or stopped
        if opts.shard is None:
            remove_temp_files(opts.out)
    facts = {
        "hub": origin.describe() if origin else None,
        "sample_rate": config.sample_rate,
        "token_frame_rate": config.token_frame_rate,
        "device": str(rt.device),
        "dtypes": dtypes,
        "threads": threads,
        "peak_memory_bytes": runner.stats.get("peak_memory_bytes") if runner is not None else None,
    }
    return finish_run((len(rows), len(chosen)), opts, plan, done, facts, (started, started_at), interrupted, stopped)


def finish_run(
    counts: tuple[int, int],
    opts: SynthOptions,
    plan: Plan,
    done: dict[str, ReportRow],
    facts: dict,
    start: tuple[float, str],
    interrupted: bool,
    stopped: str | None = None,
) -> SynthOutcome:
    """The report rows in manifest order (unfinished ones `skipped`), the summary (`facts`: sample_rate,
    token_frame_rate, device, dtypes, threads, peak_memory_bytes, optionally world_size; `counts`: the manifest's
    rows and the chosen ones) and the files; raises Interrupted after writing them when `interrupted`, OutputError
    when they do not fit (`stopped`: why a write to `--out` stopped the run early)."""
    why = f"not made: the run stopped ({stopped})" if stopped else "interrupted before this row finished"
    report_rows = [
        done.get(row.id) or ReportRow(id=row.id, status="skipped", error=why, seed=row.seed) for row in plan.rows
    ]
    dtypes = facts["dtypes"]
    run = {
        "manifest": opts.manifest,
        "subset": opts.subset.describe(*counts),
        "model": opts.model,
        "model_id": plan.model_id,
        "hub": facts.get("hub"),
        "sample_rate": facts["sample_rate"],
        "token_frame_rate": facts["token_frame_rate"],
        "device": facts["device"],
        "dtype": dtype_label(opts.dtype, dtypes),
        "dtypes": dtypes,
        "attention": opts.attention,
        "compile": opts.compile,
        "batch_size": opts.batch_size,
        "max_batch_tokens": opts.max_batch_tokens,
        "seed": opts.seed,
        "threads": facts["threads"],
        "text_frontend": frontend_id(opts.text_frontend),
        "wav_format": opts.wav_format,
        "peak_memory_bytes": facts["peak_memory_bytes"],
        "interrupted": interrupted,
        "stopped": stopped,
        "started": start[1],
        "voiceclone_version": __version__,
        "world_size": facts.get("world_size", opts.shard.count if opts.shard is not None else 1),
    }
    if opts.shard is not None:
        run["shard"] = {"index": opts.shard.index, "count": opts.shard.count}
    summary = summarize(report_rows, time.perf_counter() - start[0], run, frozenset(plan.kept))
    summary["shards"] = [shard_entry(opts.shard, summary, facts["threads"])]
    try:
        write_outputs(opts, report_rows, summary)
    except OSError as e:
        raise reports_error(opts.out, report_rows, e) from None
    outcome = SynthOutcome(report_rows, summary, stopped)
    if interrupted:
        raise Interrupted(outcome)
    return outcome
