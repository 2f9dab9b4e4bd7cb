"""Progress of a `synth` run on stderr: rich's progress bar on a terminal, a plain line every 10 s otherwise (CI
logs), nothing with `--quiet`."""

from __future__ import annotations

import sys
import time

import typer

from voiceclone.io.report import ReportRow


class Progress:
    """Counts rows and audio as a run reports them; shows nothing (`--quiet`). Subclasses show the counts."""

    def __init__(self) -> None:
        self.total = self.done = self.reused = self.failed = 0
        self.audio_s = 0.0
        self.started = time.monotonic()

    def start(self, total: int, reused: int) -> None:
        """The run starts: `total` rows, of which `reused` are kept from an earlier run."""
        self.total, self.done, self.reused = total, reused, reused
        self.started = time.monotonic()
        self.show_start()

    def row(self, entry: ReportRow) -> None:
        """One more row is finished (or failed)."""
        self.done += 1
        self.failed += entry.status == "failed"
        self.audio_s += entry.duration_s or 0.0
        self.show_row()

    def rtf(self) -> str:
        """Wall seconds per second of audio made so far, or "-"."""
        return f"{(time.monotonic() - self.started) / self.audio_s:.2f}" if self.audio_s else "-"

    def show_start(self) -> None:
        pass

    def show_row(self) -> None:
        pass

    def close(self) -> None:
        pass


class LogLines(Progress):
    """A line when the run starts, then one every `every_s` seconds and at the end, for logs that are not a terminal."""

    def __init__(self, every_s: float = 10.0):
        super().__init__()
        self.every_s, self.last = every_s, self.started

    def show_start(self) -> None:
        self.last = self.started
        total, reused = self.total, self.reused
        typer.echo(f"synth: {total} rows, {reused} kept from an earlier run, {total - reused} to do", err=True)

    def show_row(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done == self.total:
            self.last = now
            made = self.done - self.reused
            eta = f"{(now - self.started) / made * (self.total - self.done):.0f} s" if made else "-"
            typer.echo(
                f"synth: {self.done}/{self.total} rows ({self.failed} failed), {self.audio_s:.1f} s audio, "
                f"RTF {self.rtf()}, ETA {eta}",
                err=True,
            )


class Bar(Progress):
    """rich's progress bar on a terminal: rows, audio seconds, RTF, time remaining."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("synth"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[audio]} audio, RTF {task.fields[rtf]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.task = None

    def show_start(self) -> None:
        self.bar.start()
        self.task = self.bar.add_task("synth", total=self.total, completed=self.reused, audio="0.0 s", rtf="-")

    def show_row(self) -> None:
        self.bar.update(self.task, advance=1, audio=f"{self.audio_s:.1f} s", rtf=self.rtf())

    def close(self) -> None:
        self.bar.stop()


def progress_for(quiet: bool) -> Progress:
    """Nothing with `--quiet`; the bar on a terminal; log lines otherwise."""
    if quiet:
        return Progress()
    return Bar() if sys.stderr.isatty() else LogLines()
