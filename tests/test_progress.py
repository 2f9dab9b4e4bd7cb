"""Piped progress: a line every few seconds even while one long row runs, and an ETA that rows finishing together
in one batch do not inflate."""

from __future__ import annotations

import time

from voiceclone.io.report import ReportRow
from voiceclone.progress import LogLines, Progress


def made(row_id: str, synth_s: float, audio_s: float = 1.0) -> ReportRow:
    return ReportRow(id=row_id, status="ok", duration_s=audio_s, timings={"total": synth_s})


def test_a_line_comes_on_time_while_no_row_finishes(capsys):
    progress = LogLines(every_s=0.05)
    progress.start(3, [])
    deadline = time.monotonic() + 30
    seen = ""
    while time.monotonic() < deadline and seen.count("synth: 0/3 rows") < 2:
        time.sleep(0.01)
        seen += capsys.readouterr().err
    progress.close()
    assert seen.startswith("synth: 3 rows, 0 kept from an earlier run, 3 to do\n")
    assert seen.count("synth: 0/3 rows (0 failed), 0.0 s audio, RTF -, ETA -") >= 2  # no row finished, lines came
    assert not progress.timer.is_alive()


def test_eta_counts_the_work_already_done_on_rows_in_flight():
    now = [0.0]
    progress = Progress(clock=lambda: now[0])
    progress.start(8, [])
    now[0] = 9.0  # a batch of 4 rows took 10 s of engine time; the first finishes at 9 s, the others right after
    progress.row(made("a", 2.5))
    assert progress.eta() == "11 s"  # 8 rows x 2.5 s - 9 s; rows made / elapsed would say 63 s
    now[0] = 10.0
    for row_id in "bcd":
        progress.row(made(row_id, 2.5))
    assert progress.eta() == "10 s" and progress.line().endswith("RTF 2.50, ETA 10 s")


def test_rtf_includes_kept_rows_as_the_summary_does():
    progress = Progress(clock=lambda: 0.0)
    progress.start(2, [made("a", 1.0, audio_s=4.0)])
    progress.row(made("b", 3.0, audio_s=4.0))
    assert progress.rtf() == "0.50" and progress.done == 2 and progress.reused == 1
