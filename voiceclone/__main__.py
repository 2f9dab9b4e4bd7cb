"""`python -m voiceclone` runs the command line."""

from voiceclone.cli import main

main()
