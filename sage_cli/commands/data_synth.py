"""`sage data synth`: synthetic defects on normal images."""

from pathlib import Path

import typer

from sage_cli.errors import PendingError


def synth(src: Path = typer.Option(..., "--from", help="Root with normal images.")) -> None:
    """Write an MVTec-layout data set of synthetic defects made on normal images."""
    raise PendingError("sage data synth", 2)
