"""Progress of a `synth` run on stderr: rich's progress bar on a terminal, a plain line every 10 s otherwise (CI
logs), nothing with `--quiet`.

RTF is the one the report and summary use (`io.report.rtf`: synthesis seconds per audio second over every ok row,
kept or made). ETA: the rows left times the mean synthesis seconds of the rows made so far, less the time already
spent on rows still in flight (rows finish in batches, so time spent is not all in finished rows)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import typer

from voiceclone.io.report import ReportRow, synthesis_seconds


class Progress:
    """Counts rows, audio and synthesis time as a run reports them; shows nothing (`--quiet`). Subclasses show it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.total = self.done = self.reused = self.failed = 0
        self.audio_s = self.synth_s = self.made_s = 0.0
        self.started = clock()

    def start(self, total: int, kept: list[ReportRow]) -> None:
        """The run starts: `total` rows, of which `kept` are kept from an earlier run."""
        self.total, self.done, self.reused = total, len(kept), len(kept)
        for entry in kept:
            self._add(entry)
        self.started = self.clock()
        self.show_start()

    def row(self, entry: ReportRow) -> None:
        """One more row is finished (or failed)."""
        self.done += 1
        self.failed += entry.status == "failed"
        self.made_s += synthesis_seconds(entry)
        self._add(entry)
        self.show_row()

    def _add(self, entry: ReportRow) -> None:
        if entry.status == "ok":
            self.audio_s += entry.duration_s or 0.0
            self.synth_s += synthesis_seconds(entry)

    def rtf(self) -> str:
        """Synthesis seconds per second of audio over the rows so far, or "-"."""
        return f"{self.synth_s / self.audio_s:.2f}" if self.audio_s else "-"

    def eta(self) -> str:
        """Seconds left: rows to make times the mean synthesis seconds of rows made, less the time spent since."""
        made = self.done - self.reused
        if not made:
            return "-"
        left = (self.total - self.reused) * self.made_s / made - (self.clock() - self.started)
        return f"{max(left, 0.0):.0f} s"

    def line(self) -> str:
        return (
            f"synth: {self.done}/{self.total} rows ({self.failed} failed), {self.audio_s:.1f} s audio, "
            f"RTF {self.rtf()}, ETA {self.eta()}"
        )

    def show_start(self) -> None:
        pass

    def show_row(self) -> None:
        pass

    def close(self) -> None:
        pass


class LogLines(Progress):
    """A line when the run starts, then one every `every_s` seconds (from a timer, so also while one long row runs)
    and at the end, for logs that are not a terminal."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__(clock)
        self.every_s, self.last = every_s, self.started
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.timer = threading.Thread(target=self._tick, name="voiceclone-progress", daemon=True)

    def show_start(self) -> None:
        self.last = self.started
        total, reused = self.total, self.reused
        typer.echo(f"synth: {total} rows, {reused} kept from an earlier run, {total - reused} to do", err=True)
        if self.done < self.total:
            self.timer.start()

    def row(self, entry: ReportRow) -> None:
        with self.lock:
            super().row(entry)

    def show_row(self) -> None:
        if self.clock() - self.last >= self.every_s or self.done == self.total:
            self._print()

    def _tick(self) -> None:
        while not self.stop.wait(self.every_s / 10):
            with self.lock:
                if self.clock() - self.last >= self.every_s:
                    self._print()

    def _print(self) -> None:
        self.last = self.clock()
        typer.echo(self.line(), err=True)

    def close(self) -> None:
        self.stop.set()
        if self.timer.is_alive():
            self.timer.join()


class Bar(Progress):
    """rich's progress bar on a terminal: rows, audio seconds, RTF, time remaining."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("synth"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[audio]} audio, RTF {task.fields[rtf]}, ETA {task.fields[eta]}"),
            console=Console(stderr=True),
        )
        self.task = None

    def show_start(self) -> None:
        self.bar.start()
        audio = f"{self.audio_s:.1f} s"
        self.task = self.bar.add_task(
            "synth", total=self.total, completed=self.reused, audio=audio, rtf=self.rtf(), eta="-"
        )

    def show_row(self) -> None:
        self.bar.update(self.task, advance=1, audio=f"{self.audio_s:.1f} s", rtf=self.rtf(), eta=self.eta())

    def close(self) -> None:
        self.bar.stop()


def progress_for(quiet: bool) -> Progress:
    """Nothing with `--quiet`; the bar on a terminal; log lines otherwise."""
    if quiet:
        return Progress()
    return Bar() if sys.stderr.isatty() else LogLines()
