"""`sage data normals`: normal images of extra categories (procedural and CC0 photo crops) in MVTec layout."""

from pathlib import Path

import typer


def normals(
    out: Path = typer.Option(..., "--out", help="Where to write the MVTec-layout root (CATEGORY/train/good, CATEGORY/test/good)."),
    categories: str = typer.Option("all", "--categories", help="'all', 'procedural' (numpy only) or comma-separated names: brushed_metal, woven_fabric, wood_plank, ceramic_tile, washer, gear, brick, grass, gravel (the last three need scikit-image)."),
    count: int = typer.Option(24, "--count", help="train/good images per category."),
    test_count: int = typer.Option(4, "--test-count", help="Held-out test/good images per category."),
    image_size: int = typer.Option(256, "--image-size", help="Side of the square images in pixels."),
    seed: int = typer.Option(0, "--seed", help="Same seed and settings give byte-identical files."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate every file; also needed to reuse an --out written with other settings (its listed images are deleted first)."),
) -> None:
    """Write defect-free images of new categories for `sage data synth --from OUT`.

    Procedural categories (CC0, numpy): textures brushed_metal, woven_fabric, wood_plank, ceramic_tile and parts on a plain mat, washer and gear; every image has its own texture phase, orientation, colours, lighting and pose. Photo categories brick, grass, gravel are random crops (position, flips, 90° turns, scale) of scikit-image's bundled CC0 photos. OUT/normals.json records the settings and each category's files, source and licence.

    Resumable: files are written atomically and a rerun with the same settings skips those present. An OUT written with other settings, or a non-empty folder that is not a normals output, is refused unless --overwrite.
    """
    from sage_cli.data.categories import parse_categories
    from sage_cli.data.normals import CATEGORIES, GROUPS, NormalsOptions, write_normals

    opts = NormalsOptions(
        categories=tuple(parse_categories(categories, CATEGORIES, GROUPS)), count=count, test_count=test_count,
        image_size=image_size, seed=seed,
    ).check()

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("normals"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True, console=Console(stderr=True)
    ) as bar:
        task = bar.add_task("normals", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = write_normals(out, opts, overwrite=overwrite, progress=progress)

    per_cat = ", ".join(f"{c}: {n}" for c, n in result.categories.items())
    typer.echo(
        f"{sum(result.categories.values())} normal images in {out} ({per_cat}); "
        f"{result.written} written, {result.skipped} already present"
    )
