"""`python -m sage_cli` is the same as the `sage` command."""

from sage_cli.cli import main

main()
