"""`sage data export FILE --format hf|parquet --out DIR`: QA groups or preference pairs as a Hugging Face dataset."""

from pathlib import Path
from typing import Optional

import typer


def export(
    src: Path = typer.Argument(..., help="A sage-qa/1 (`sage prefs build`) or sage-pairs/1 (`sage score mle`) .jsonl file, or a folder of them: one split per file (train.jsonl, val.jsonl)."),
    fmt: str = typer.Option(..., "--format", "-f", help="hf: `Dataset.save_to_disk` (a `DatasetDict` when there are several splits); parquet: OUT/SPLIT.parquet per file."),
    out: Path = typer.Option(..., "--out", help="The folder to write (built beside it, then renamed into place)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Data set root the image paths are relative to (default: the one prefs.json / score.json beside FILE records, else its folder)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
) -> None:
    """Export QA groups or preference pairs as a self-contained dataset (images embedded as `datasets.Image`).

    Pairs get TRL's vision preference columns (`images` = [test, reference], `prompt`, `chosen`, `rejected` as chat turns) plus sage's `group_id`, `q`, `kind`, `delta_h` and the scores; QA groups one row per group (`questions` a list of structs) plus `images`. `sage train sfe|edpo --train DIR` (a save_to_disk folder or a parquet file) reads both back.
    """
    from sage_cli.data.hf_datasets import export as run_export

    done = run_export(src, out, fmt, root=root, overwrite=overwrite)
    splits = ", ".join(f"{name} {n}" for name, n in done["splits"].items())
    kind = "QA groups" if done["kind"] == "qa" else "preference pairs"
    typer.echo(f"wrote {done['out']} ({done['format']}): {kind}, {splits}")
