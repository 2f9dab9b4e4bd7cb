"""`python -m voiceclone` runs the command line; SIGTERM, like Ctrl-C, exits 130 from the first instruction on."""

import sys

from voiceclone import interrupts

interrupts.install()
try:
    from voiceclone.cli import main
except BaseException:  # a signal can surface as another error (Python wraps it in __set_name__, for one)
    if not interrupts.requested():
        raise
    sys.stderr.write("interrupted\n")
    interrupts.exit_now(130)

main()
