"""The `voiceclone` command line: parse flags, call the library, turn errors into one line and an exit code.

Only `typer` and the standard library load at import time: `--help`, `--version` and the commands that only read
files (`check-durations`, `inspect` of a converted folder, `synth --dry-run`) never import torch.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import typer

from voiceclone import __version__, interrupts
from voiceclone.errors import UsageError, VoiceCloneError
from voiceclone.usage import CONFIG_META, EXIT_INTERRUPTED, Command, Group, one_line_errors

app = typer.Typer(
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Batch zero-shot voice cloning with CosyVoice3 and CosyVoice2 checkpoints.",
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
    """Print a user error (one `error:` line per problem) on stderr and return the Exit carrying its code."""
    from voiceclone.io.manifest import ManifestErrors

    if isinstance(error, ManifestErrors):
        for problem in error.errors:
            typer.echo(f"error: {problem}", err=True)
        if len(error.errors) > 1:
            typer.echo(f"error: {len(error.errors)} problems in {error.path}", err=True)
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
    ctx.meta[CONFIG_META] = value
    return value


CONFIG_OPTION = typer.Option(
    None,
    "--config",
    metavar="FILE",
    callback=_settings_file,
    is_eager=True,
    help="TOML file of flag defaults (see configs/).",
)
LIMIT_OPTION = typer.Option(None, "--limit", metavar="N", help="Only the first N rows (after --ids).")
IDS_OPTION = typer.Option(None, "--ids", metavar="IDS", help="Only these rows: a,b,c or @FILE (one id a line).")


def _format_option(value: str | None) -> str | None:
    from voiceclone.io.manifest import FORMATS

    if value is not None and value not in FORMATS:
        raise typer.BadParameter(f"choose from {', '.join(FORMATS)}")
    return value


@app.command(cls=Command, short_help="Clone the voices of a manifest's rows.")
def synth(
    manifest: Path = typer.Argument(..., metavar="MANIFEST", help="CSV/TSV, JSONL or Seed-TTS .lst manifest."),
    model: str = typer.Option(
        ..., "--model", metavar="MODEL", help="Official or converted model folder, hub id ORG/NAME, demo or demo-v2."
    ),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="Output folder for <id>.wav and the reports."),
    fmt: str | None = typer.Option(
        None, "--format", metavar="FORMAT", callback=_format_option, help="csv, tsv, jsonl or lst."
    ),
    device: str = typer.Option("auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option(
        "auto", metavar="DTYPE", help="auto, float32, bfloat16, float16 or mixed (LLM float32, rest bf16)."
    ),
    batch_size: int = typer.Option(8, metavar="N", help="Rows per batch."),
    max_batch_tokens: int = typer.Option(32768, metavar="N", help="Token budget of one batch."),
    seed: int = typer.Option(0, metavar="N", help="Base seed; each row's seed comes from it and the row id."),
    text_frontend: bool = typer.Option(True, help="Read numbers aloud (off: texts as written)."),
    wav_format: str = typer.Option("pcm16", metavar="FORMAT", help="pcm16 or float (32-bit)."),
    resume: bool = typer.Option(False, "--resume", help="Keep finished rows of an earlier run; redo the rest."),
    force: bool = typer.Option(False, "--force", help="Overwrite this manifest's outputs in --out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check everything, load no model, write nothing."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress and no closing line."),
    attention: str = typer.Option("auto", metavar="NAME", help="auto, flash, efficient or math."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the networks."),
    llm_file: str = typer.Option("llm.pt", metavar="FILE", help="LLM weights of an official folder."),
    threads: int | None = typer.Option(None, metavar="N", help="CPU threads for torch."),
    allow_download: bool = typer.Option(False, "--allow-download", help="Download a hub id found in no cache."),
    shard: str | None = typer.Option(
        None, "--shard", metavar="I/N", help="Only shard I of N (by a hash of the row id); then merge-reports."
    ),
    backend: str = typer.Option("local", metavar="NAME", help="local (this process, or torchrun's ranks) or ray."),
    ray_address: str | None = typer.Option(None, metavar="ADDR", help="Ray cluster address (default: local)."),
    workers: int = typer.Option(1, metavar="N", help="Ray actors, one model each."),
    gpus_per_worker: float = typer.Option(0.0, metavar="G", help="GPUs per Ray actor (0: CPU actors)."),
    limit: int | None = LIMIT_OPTION,
    ids: str | None = IDS_OPTION,
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Clone each manifest row's prompt voice into DIR/<id>.wav, with reports."""
    from voiceclone.io.manifest import load_manifest
    from voiceclone.io.subset import Subset, parse_ids
    from voiceclone.shards import Shard
    from voiceclone.synth import SynthOptions

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
            subset=Subset(limit, parse_ids(ids)),
            shard=Shard.parse(shard) if shard is not None else None,
        )
        if backend not in ("local", "ray"):
            raise UsageError(f"--backend must be local or ray, got {backend!r}")
        ray_opts = None
        if backend == "ray":
            from voiceclone.raybackend import RayOptions, import_ray

            ray_opts = RayOptions(ray_address, workers, gpus_per_worker)
            import_ray()
        rows = load_manifest(manifest, fmt)
        if dry_run:
            from voiceclone.dryrun import dry_run as dry_run_summary

            summary = dry_run_summary(rows, opts)
            if not quiet:
                typer.echo(summary)
            return
    except VoiceCloneError as e:
        raise _fail(e) from None
    from voiceclone.runner import run_from_cli

    try:
        code = run_from_cli(rows, opts, quiet, ray_opts)
    except VoiceCloneError as e:
        raise _fail(e) from None
    if code:
        raise typer.Exit(code)


@app.command("merge-reports", cls=Command, short_help="Merge the shard reports of --shard runs into one report.")
def merge_reports(
    out: Path = typer.Argument(..., metavar="OUT", help="The --out folder the shards wrote into."),
    manifest: Path = typer.Option(..., metavar="FILE", help="The manifest the shards ran."),
    fmt: str | None = typer.Option(
        None, "--format", metavar="FORMAT", callback=_format_option, help="Manifest format: csv, tsv, jsonl or lst."
    ),
    limit: int | None = LIMIT_OPTION,
    ids: str | None = IDS_OPTION,
) -> None:
    """Write OUT/report.jsonl, report.csv and summary.json, in manifest order, from the shards' reports and journals.

    Exit 1 (writing nothing) while a row is not finished by any shard, or when a row failed."""
    from voiceclone import shards
    from voiceclone.io.manifest import load_manifest
    from voiceclone.io.subset import Subset, parse_ids

    try:
        if not out.is_dir():
            raise UsageError(f"{out}: not a folder")
        rows = Subset(limit, parse_ids(ids)).select(load_manifest(manifest, fmt))
        merged = shards.merge(out, rows)
    except VoiceCloneError as e:
        raise _fail(e) from None
    if merged.missing:
        typer.echo(f"error: {out}: {shards.missing_line(merged.missing)}; nothing written", err=True)
        raise typer.Exit(1)
    shards.write_merged(out, merged)
    s = merged.summary
    typer.echo(f"merged {s['rows']} rows ({s['ok']} ok, {s['failed']} failed) of {s['world_size']} shards -> {out}")
    if s["failed"]:
        raise typer.Exit(1)


@app.command("check-durations", cls=Command, short_help="Check the wavs of a synth run.")
def check_durations(
    out: Path = typer.Argument(..., metavar="OUT", help="The synth output folder."),
    manifest: Path | None = typer.Option(None, metavar="FILE", help="Expected rows (default: OUT/report.jsonl)."),
    fmt: str | None = typer.Option(
        None, "--format", metavar="FORMAT", callback=_format_option, help="Manifest format: csv, tsv, jsonl or lst."
    ),
    reference: Path | None = typer.Option(None, metavar="DIR", help="Folder of reference wavs named <id>.wav."),
    rel_tol: float = typer.Option(0.2, metavar="X", help="Allowed duration error relative to the reference."),
    abs_tol: float = typer.Option(0.3, metavar="SECONDS", help="Allowed duration error (the larger applies)."),
    sample_rate: int | None = typer.Option(None, metavar="HZ", help="Expected rate (default: from summary.json)."),
    json_path: Path | None = typer.Option(None, "--json", metavar="FILE", help="Write the results as JSON."),
    junit: Path | None = typer.Option(None, metavar="FILE", help="Write JUnit XML."),
    quiet: bool = typer.Option(False, "--quiet", help="No table; only the summary line."),
    limit: int | None = LIMIT_OPTION,
    ids: str | None = IDS_OPTION,
    tokens_from: Path | None = typer.Option(
        None, metavar="OTHER", help="A run folder or report.jsonl whose tokens must match."
    ),
    config: Path | None = CONFIG_OPTION,
) -> None:
    """Check every expected wav in OUT: there, whole, sane, the right length.

    Exit 0 when every row passes, 1 otherwise."""
    from voiceclone import durations
    from voiceclone.files import atomic_write_text, first_line
    from voiceclone.io.subset import Subset, parse_ids

    try:
        if rel_tol < 0 or abs_tol < 0:
            raise UsageError("--rel-tol and --abs-tol must not be negative")
        for flag, path in (("--json", json_path), ("--junit", junit)):
            if path is not None and not path.parent.is_dir():
                raise UsageError(f"{flag} {path}: the folder {path.parent} does not exist")
        if reference is not None and not reference.is_dir():
            raise UsageError(f"--reference {reference}: not a folder")
        subset = Subset(limit, parse_ids(ids))
        tol = durations.Tolerances(rel_tol=rel_tol, abs_tol=abs_tol)
        results = durations.check_durations(out, manifest, fmt, reference, tol, sample_rate, subset, tokens_from)
    except VoiceCloneError as e:
        raise _fail(e) from None
    settings = {"out": str(out), "manifest": str(manifest) if manifest else None}
    settings |= {"reference": str(reference) if reference else None, "rel_tol": rel_tol, "abs_tol": abs_tol}
    settings |= {"limit": limit, "ids": list(subset.ids) if subset.ids else None}
    settings["tokens_from"] = str(tokens_from) if tokens_from else None
    for flag, path, text in (
        ("--json", json_path, lambda: json.dumps(durations.results_json(results, settings), indent=2) + "\n"),
        ("--junit", junit, lambda: durations.junit_xml(results)),
    ):
        try:
            if path is not None:
                atomic_write_text(path, text())
        except OSError as e:
            raise _fail(UsageError(f"{flag} {path}: cannot write ({e.strerror or first_line(e)})")) from None
    if quiet:
        typer.echo(durations.summary_line(results))
    elif sys.stdout.isatty():
        from rich.console import Console

        durations.render_table(results, Console())
    else:
        typer.echo(durations.plain_table(results))
    if not all(r.passed for r in results):
        raise typer.Exit(1)


@app.command(cls=Command, short_help="Convert an official model to safetensors.")
def convert(
    src: Path = typer.Argument(..., metavar="SRC", help="Official CosyVoice3 model folder."),
    dst: Path = typer.Argument(..., metavar="DST", help="New folder for the converted (safetensors) model."),
    llm_file: str = typer.Option("llm.pt", metavar="FILE", help="LLM weights file to convert, e.g. llm.rl.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists."),
) -> None:
    """Convert an official model folder to safetensors (loads faster)."""
    from voiceclone.loading.convert import convert as convert_model

    try:
        convert_model(src, dst, llm_file=llm_file, overwrite=overwrite)
    except VoiceCloneError as e:
        raise _fail(e) from None
    typer.echo(f"converted {src} -> {dst}")


@app.command(cls=Command, short_help="Download a model into a hub cache.")
def download(
    repo_id: str = typer.Argument(..., metavar="ORG/NAME", help="Hub id, e.g. FunAudioLLM/Fun-CosyVoice3-0.5B-2512."),
    source: str | None = typer.Option(
        None, "--source", metavar="HUB", help="hf or modelscope (default: modelscope for iic/..., else hf)."
    ),
) -> None:
    """Download a model into the Hugging Face or ModelScope cache.

    `--model ORG/NAME` then finds it there."""
    from voiceclone.loading import hub

    try:
        model = hub.download(repo_id, source)
    except VoiceCloneError as e:
        raise _fail(e) from None
    typer.echo(f"downloaded {repo_id} from {model.source} (revision {model.revision or 'unknown'}) -> {model.path}")


@app.command(cls=Command, short_help="Describe a model folder as JSON.")
def inspect(
    model_dir: Path = typer.Argument(..., metavar="MODEL", help="Model folder, or a hub id ORG/NAME in a local cache."),
    llm_file: str = typer.Option("llm.pt", metavar="FILE", help="LLM weights file of an official folder."),
) -> None:
    """Describe a model folder as JSON; exit 3 when it has a problem.

    Family, format, config, networks, files, problems and notes."""
    from voiceclone.loading.convert import inspect as inspect_model

    try:
        info = inspect_model(model_dir, llm_file=llm_file)
    except VoiceCloneError as e:
        raise _fail(e) from None
    typer.echo(json.dumps(info, indent=2, default=str))
    if info["problems"]:
        typer.echo(f"error: {len(info['problems'])} problem(s) in {info['path']}: {info['problems'][0]}", err=True)
        raise typer.Exit(3)


def run_command(name: str, args: list[str], prog_name: str) -> int:
    """Run one command on its own (the old `check_audio_durations.py` script), with one-line usage errors."""
    command = typer.main.get_command(app).commands[name]
    return one_line_errors(lambda: command.main(args, prog_name, standalone_mode=False))


def main() -> None:
    """Console-script entry point: SIGTERM, like Ctrl-C, exits 130 (see `interrupts`)."""
    interrupts.install()
    try:
        app()
    except SystemExit:
        if interrupts.requested():  # the command has written what it keeps; exit 130, never -2 (see exit_now)
            interrupts.exit_now(EXIT_INTERRUPTED)
        raise
    except BaseException:  # KeyboardInterrupt, or a signal Python wrapped in another error while importing
        if not interrupts.requested():
            raise
        typer.echo("interrupted", err=True)
        interrupts.exit_now(EXIT_INTERRUPTED)
