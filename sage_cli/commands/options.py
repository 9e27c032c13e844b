"""Options that several commands share, declared once (typer's Annotated form): the model to load and where."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Checkpoint = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="A sage checkpoint directory, or sage-smol for the one shipped with sage (the default when "
                         "neither --checkpoint nor --backbone is given).")]
Backbone = Annotated[Optional[str], typer.Option(
    "--backbone", help="Backbone name or local VLM path, with untrained SAGE layers (no checkpoint).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Dtype = Annotated[str, typer.Option(
    "--dtype", help="auto (bf16 on a GPU, float32 on CPU), float32, bfloat16 or float16.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of anything random (untrained SAGE layers, choices of data).")]
