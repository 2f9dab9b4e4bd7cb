"""The real `synth` run behind the command line: one process, this rank of a torchrun job, or a Ray driver; with
progress, SIGTERM as Ctrl-C, the closing line and the exit code."""

from __future__ import annotations

import sys
from pathlib import Path

from voiceclone import interrupts
from voiceclone.loading.families import demo_family, family
from voiceclone.usage import EXIT_INTERRUPTED

DEMO_NOTICE = "note: --model {} has random weights: its audio is noise (durations and files are real)"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _demo_notice(loaded) -> None:
    _say(DEMO_NOTICE.format(family(loaded.config.family).demo))


def run_from_cli(rows: list, opts, quiet: bool, ray_opts=None) -> int:
    """Run the rows and say how it went; the exit code: 0, 1 when a row failed or was lost, 130 when interrupted.
    A VoiceCloneError propagates for the caller's one line."""
    from voiceclone.distributed import RankStopped, launch_from_env, run_ranked
    from voiceclone.progress import progress_for
    from voiceclone.synth import Interrupted, run_synth

    launch = launch_from_env()
    quiet = quiet or (launch is not None and launch.rank != 0)  # rank 0 speaks for the job
    progress = progress_for(quiet)
    previous = interrupts.install()
    try:
        on_model = _demo_notice if demo_family(opts.model) and not quiet else (lambda loaded: None)
        callbacks = {"on_start": progress.start, "on_row": progress.row, "on_model": on_model}
        if ray_opts is not None:
            from voiceclone.raybackend import run_ray

            outcome = run_ray(rows, opts, ray_opts, progress.start, progress.row)
        elif launch is not None:
            outcome = run_ranked(rows, opts, launch, **callbacks)
        else:
            outcome = run_synth(rows, opts, **callbacks)
    except RankStopped as e:
        return e.exit_code
    except Interrupted:
        _say(f"interrupted: finished rows are kept in {opts.out}; run again with --resume to continue")
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    finally:
        progress.close()
        interrupts.restore(previous)
    if not quiet:
        _say(closing_line(outcome.summary, opts.out))
    if outcome.stopped:
        _say(f"error: the run stopped: {outcome.stopped}; fix that and run again with --resume")
    elif outcome.summary["skipped"]:
        _say(f"error: {outcome.summary['skipped']} rows were lost with their rank; run again with --resume")
    return 1 if outcome.failed or outcome.summary["skipped"] else 0


def closing_line(s: dict, out: Path) -> str:
    """`done: ...`: the counts and audio of every row in the report, its RTF, and this run's wall time."""
    rtf = "-" if s["rtf"] is None else f"{s['rtf']:.2f}"
    subset = f" (a subset: {s['subset']['rows']} of {s['subset']['of']} rows)" if s.get("subset") else ""
    return (
        f"done: {s['ok']} ok, {s['failed']} failed, {s['reused']} kept from an earlier run{subset}; "
        f"{s['audio_seconds']:.1f} s audio, RTF {rtf}; {s['wall_seconds']:.1f} s wall -> {out}"
    )
