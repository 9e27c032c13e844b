"""`sage data synth`: synthetic defects on normal images."""

from pathlib import Path
from typing import Optional

import typer

_KINDS_HELP = "scratch, crack, stain, hole, contamination, cutpaste"


def synth(
    src: Path = typer.Option(..., "--from", help="Normal images: an MVTec-style root (CATEGORY/train/good), one category folder, or a plain folder of images."),
    out: Path = typer.Option(..., "--out", help="Where to write the MVTec-layout data set."),
    kinds: str = typer.Option("all", "--kinds", help=f"Comma-separated defect kinds, or 'all': {_KINDS_HELP}."),
    size: str = typer.Option("medium", "--size", help="Defect extent as a fraction of the image area: small (0.002-0.006), medium (0.006-0.02), large (0.02-0.06), a number (0.01) or a range (0.005-0.02)."),
    strength: float = typer.Option(0.7, "--strength", help="Contrast of the defects, 0 (faint) to 1 (bold)."),
    per_image: int = typer.Option(1, "--per-image", help="Defect images per normal image and kind."),
    seed: int = typer.Option(0, "--seed", help="Same seed and inputs give byte-identical output."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Resize so the longer side has this many pixels (e.g. 256 for fast toy runs); default keeps the originals' size."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many normal images per category."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate every file; also needed to reuse an --out written with other settings (its listed files are deleted first)."),
    preview: bool = typer.Option(False, "--preview", help="Also write OUT/preview.png: rows = kinds, each example with its mask outlined in red beside a zoom."),
) -> None:
    """Write an MVTec-layout data set of synthetic defects made on normal images.

    For each normal image, defects of each kind are drawn on the object itself (a foreground mask keeps them off the background): OUT/CATEGORY/test/KIND/NNN.png with its mask OUT/CATEGORY/ground_truth/KIND/NNN_mask.png, which is exactly the pixels that changed. The normal images are copied to train/good (held-out ones to test/good); OUT/synth.jsonl has one line per defect image (image, mask, kind, source, seed, size, strength, bbox).

    Resumable: files are written atomically, and a rerun with the same settings (kept in OUT/synth.json) skips every file already present. An OUT written with other settings, or a non-empty folder that is not a synth output, is refused unless --overwrite.
    """
    from sage_cli.data.synth import SynthOptions, parse_kinds, synthesize

    opts = SynthOptions(
        kinds=parse_kinds(kinds),
        size=size,
        strength=strength,
        per_image=per_image,
        seed=seed,
        image_size=image_size,
        limit=limit,
    ).check()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("synth"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task("synth", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = synthesize(src, out, opts, overwrite=overwrite, progress=progress)

    per_cat = ", ".join(f"{c}: {n}" for c, n in result.categories.items())
    typer.echo(
        f"{len(result.records)} defect images in {out} ({per_cat}); "
        f"{result.written} written, {result.skipped} already present"
    )
    if preview:
        import numpy as np

        from sage_cli.data.preview import synth_preview
        from sage_cli.data.synth import write_png

        sheet = synth_preview(out, result.records, opts.kinds)
        write_png(out / "preview.png", np.asarray(sheet))
        typer.echo(f"preview: {out / 'preview.png'}")
