"""`sage data ls ROOT`: what a dataset root holds."""

from pathlib import Path

import typer

from sage_cli.errors import PendingError


def ls(root: Path = typer.Argument(..., help="Dataset root.")) -> None:
    """Print what a dataset root holds: format, categories, counts per split and defect type, masks."""
    raise PendingError("sage data ls", 2)
