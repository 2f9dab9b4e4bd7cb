"""`python -m voiceclone` runs the command line; SIGTERM, like Ctrl-C, exits 130 from the first instruction on."""

import sys

from voiceclone import interrupts

interrupts.install()
try:
    from voiceclone.cli import main
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    sys.exit(130)

main()
