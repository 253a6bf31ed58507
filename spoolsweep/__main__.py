"""`python -m spoolsweep` runs the command line."""

from spoolsweep.cli import main

main()
