"""The `voiceclone` command line: parse flags, call the library, turn errors into one line and an exit code."""

from __future__ import annotations

import json
import signal
import sys
import tomllib
from pathlib import Path

import typer

from voiceclone import __version__
from voiceclone.errors import UsageError, VoiceCloneError
from voiceclone.io.manifest import FORMATS, ManifestErrors

EXIT_INTERRUPTED = 130
DEMO_NOTICE = "note: --model demo has random weights: its audio is noise (durations and files are real)"

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Batch zero-shot voice cloning with CosyVoice3 checkpoints.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"voiceclone {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Batch zero-shot voice cloning with CosyVoice3 checkpoints."""


def _fail(error: VoiceCloneError) -> typer.Exit:
    """Print a user error (one line per problem) on stderr and return the Exit carrying its code."""
    if isinstance(error, ManifestErrors):
        for problem in error.errors:
            typer.echo(str(problem), err=True)
        if len(error.errors) > 1:
            typer.echo(f"{len(error.errors)} problems in {error.path}", err=True)
    else:
        typer.echo(f"error: {error}", err=True)
    return typer.Exit(error.exit_code)


def _settings_file(ctx: typer.Context, value: Path | None) -> Path | None:
    """Load a TOML file of flag defaults (e.g. `configs/cpu.toml`); flags given on the command line still win."""
    if value is None:
        return None
    try:
        table = tomllib.loads(value.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise _fail(UsageError(f"{value}: cannot read settings: {e}")) from None
    flags = {opt.lstrip("-").replace("-", "_"): p.name for p in ctx.command.params for opt in p.opts if opt[:2] == "--"}
    defaults = {}
    for key, setting in table.items():
        name = flags.get(key.replace("-", "_"))
        if name is None or name == "config":
            raise _fail(UsageError(f"{value}: unknown setting {key!r} for `{ctx.command.name}`"))
        defaults[name] = setting
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


CONFIG_OPTION = typer.Option(
    None, "--config", callback=_settings_file, is_eager=True, help="TOML file of flag defaults (see configs/)."
)


def _format_option(value: str | None) -> str | None:
    if value is not None and value not in FORMATS:
        raise typer.BadParameter(f"choose from {', '.join(FORMATS)}")
    return value


def _demo_notice(loaded) -> None:
    typer.echo(DEMO_NOTICE, err=True)


def _sigterm_as_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


@app.command()
def synth(
    manifest: Path = typer.Argument(..., help="CSV/TSV, JSONL or Seed-TTS .lst manifest."),
    model: str = typer.Option(
        ..., "--model", help="Model directory (official or converted), a hub id (ORG/NAME) in a local cache, or `demo`."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder: <id>.wav, report.jsonl, report.csv, summary.json."),
    fmt: str | None = typer.Option(None, "--format", callback=_format_option, help="csv, tsv, jsonl or lst."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", help="auto, float32, bfloat16 or float16."),
    batch_size: int = typer.Option(8, help="Rows per batch."),
    max_batch_tokens: int = typer.Option(32768, help="Token budget of one batch (rows x longest row)."),
    seed: int = typer.Option(0, help="Base seed; a row's seed is derived from it and the row id."),
    text_frontend: bool = typer.Option(True, help="Normalise texts (off: texts are used verbatim)."),
    wav_format: str = typer.Option("pcm16", help="pcm16 (16-bit PCM) or float (32-bit float)."),
    resume: bool = typer.Option(
        False, "--resume", help="Keep finished rows of an earlier run in --out; redo the rest."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs in --out."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Validate manifest, audio, model folder and device; load nothing."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    attention: str = typer.Option("auto", help="Attention backend: auto, flash, efficient or math."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the networks (falls back to eager)."),
    llm_file: str = typer.Option("llm.pt", help="LLM weights file in an official folder, e.g. llm.rl.pt."),
    threads: int | None = typer.Option(None, help="CPU threads for torch (default: torch's choice)."),
    allow_download: bool = typer.Option(
        False, "--allow-download", help="Download a hub id that is in no local cache (as `voiceclone download`)."
    ),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Clone the prompt voice for every manifest row into OUT/<id>.wav, with reports."""
    from voiceclone.io.manifest import load_manifest
    from voiceclone.progress import progress_for
    from voiceclone.synth import Interrupted, SynthOptions

    progress = progress_for(quiet)
    try:
        opts = SynthOptions(
            model=model,
            out=out,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            max_batch_tokens=max_batch_tokens,
            seed=seed,
            text_frontend=text_frontend,
            wav_format=wav_format,
            resume=resume,
            force=force,
            attention=attention,
            compile=compile,
            llm_file=llm_file,
            threads=threads,
            manifest=str(manifest),
            allow_download=allow_download,
        )
        rows = load_manifest(manifest, fmt)
        if dry_run:
            from voiceclone.synth import dry_run as dry_run_summary

            summary = dry_run_summary(rows, opts)
            if not quiet:
                typer.echo(summary)
            return
        from voiceclone.synth import run_synth

        previous_handler = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
        try:
            on_model = _demo_notice if model == "demo" and not quiet else (lambda loaded: None)
            outcome = run_synth(rows, opts, on_start=progress.start, on_row=progress.row, on_model=on_model)
        finally:
            progress.close()
            signal.signal(signal.SIGTERM, previous_handler)
    except VoiceCloneError as e:
        raise _fail(e) from None
    except Interrupted:
        typer.echo(f"interrupted: finished rows are kept in {out}; run again with --resume to continue", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    s = outcome.summary
    if not quiet:
        typer.echo(
            f"done: {s['ok']} ok, {s['failed']} failed, {s['reused']} kept from an earlier run; "
            f"{s['audio_seconds']:.1f} s audio in {s['wall_seconds']:.1f} s -> {out}",
            err=True,
        )
    if outcome.failed:
        raise typer.Exit(1)


@app.command("check-durations")
def check_durations(
    out: Path = typer.Argument(..., help="The synth output folder."),
    manifest: Path | None = typer.Option(None, help="Expected rows (default: OUT/report.jsonl)."),
    fmt: str | None = typer.Option(None, "--format", callback=_format_option, help="Manifest format override."),
    reference: Path | None = typer.Option(None, help="Folder of reference wavs named <id>.wav."),
    rel_tol: float = typer.Option(0.2, help="Allowed duration error relative to the reference."),
    abs_tol: float = typer.Option(0.3, help="Allowed duration error in seconds (the larger of the two applies)."),
    sample_rate: int | None = typer.Option(None, help="Expected sample rate (default: from summary.json)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write the results as JSON to this file."),
    junit: Path | None = typer.Option(None, help="Write JUnit XML to this file."),
    quiet: bool = typer.Option(False, "--quiet", help="No table; only the summary line."),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Check every expected wav in OUT (present, readable, rate, silence, clipping, duration); exit 0 if all pass."""
    from rich.console import Console

    from voiceclone import durations
    from voiceclone.files import atomic_write_text

    if rel_tol < 0 or abs_tol < 0:
        raise _fail(UsageError("--rel-tol and --abs-tol must not be negative"))
    try:
        tol = durations.Tolerances(rel_tol=rel_tol, abs_tol=abs_tol)
        results = durations.check_durations(out, manifest, fmt, reference, tol, sample_rate)
    except VoiceCloneError as e:
        raise _fail(e) from None
    settings = {"out": str(out), "manifest": str(manifest) if manifest else None}
    settings |= {"reference": str(reference) if reference else None, "rel_tol": rel_tol, "abs_tol": abs_tol}
    if json_path:
        atomic_write_text(json_path, json.dumps(durations.results_json(results, settings), indent=2) + "\n")
    if junit:
        atomic_write_text(junit, durations.junit_xml(results))
    if quiet:
        typer.echo(durations.summary_line(results))
    else:
        durations.render_table(results, Console())
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@app.command()
def convert(
    src: Path = typer.Argument(..., help="Official CosyVoice3 model folder."),
    dst: Path = typer.Argument(..., help="New folder for the converted (safetensors) model."),
    llm_file: str = typer.Option("llm.pt", help="LLM weights file to convert, e.g. llm.rl.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists."),
) -> None:
    """Convert an official model folder to voiceclone's safetensors layout."""
    from voiceclone.loading.convert import convert as convert_model

    try:
        convert_model(src, dst, llm_file=llm_file, overwrite=overwrite)
    except VoiceCloneError as e:
        raise _fail(e) from None
    typer.echo(f"converted {src} -> {dst}")


@app.command()
def download(
    repo_id: str = typer.Argument(..., help="Hub id, e.g. FunAudioLLM/Fun-CosyVoice3-0.5B-2512."),
    source: str | None = typer.Option(
        None, "--source", help="hf or modelscope (default: modelscope for iic/..., else hf)."
    ),
) -> None:
    """Download a model into the Hugging Face (or ModelScope) cache, where `--model ORG/NAME` finds it."""
    from voiceclone.loading import hub

    try:
        model = hub.download(repo_id, source)
    except VoiceCloneError as e:
        raise _fail(e) from None
    typer.echo(f"downloaded {repo_id} from {model.source} (revision {model.revision or 'unknown'}) -> {model.path}")


@app.command()
def inspect(
    model_dir: Path = typer.Argument(..., help="Official or converted model folder, or a hub id in a local cache."),
    llm_file: str = typer.Option("llm.pt", help="LLM weights file of an official folder, e.g. llm.rl.pt."),
) -> None:
    """Print a model folder's family, config, networks, files and problems as JSON."""
    from voiceclone.loading.convert import inspect as inspect_model

    try:
        info = inspect_model(model_dir, llm_file=llm_file)
    except VoiceCloneError as e:
        raise _fail(e) from None
    typer.echo(info if isinstance(info, str) else json.dumps(info, indent=2, default=str))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
