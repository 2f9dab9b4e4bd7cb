#!/usr/bin/env python3
"""The old script name: `python check_audio_durations.py OUT [opts]` is `voiceclone check-durations OUT [opts]`."""

import sys

from voiceclone.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("check-durations", sys.argv[1:], prog_name="check_audio_durations.py"))
