"""`sage prefs build`: AD-PL-style QA groups with four ranked answers per question."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def build(
    src: Path = typer.Option(..., "--from", help="Dataset root in any layout `sage data ls` reads (MVTec/MPDD, VisA, MANTA, MPDD-QA, AD-PL in MANTA's schema, MMAD, sage-qa .jsonl)."),
    out: Path = typer.Option(..., "--out", help="Folder for train.jsonl, val.jsonl and prefs.json."),
    seed: int = typer.Option(0, "--seed", help="Seed for references, wording and the split; the same seed gives the same bytes."),
    val_frac: float = typer.Option(0.2, "--val-frac", help="Share of test images that go to val.jsonl (split by image, never by question)."),
    normal_share: Optional[float] = typer.Option(None, "--normal-share", help="Add normal groups until they are this share of each category's groups (e.g. 0.5): train/good images as tests, each against another normal reference. Synthetic sets hold several defects per normal photo; trained on them as they are, a model learns to always answer yes."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many test images (QA groups for QA formats) per category."),
    categories: Optional[str] = typer.Option(None, "--categories", help="Only these categories, comma-separated (e.g. bottle,screw)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="mvtec, visa, manta, mmad or qa (default: detect from the layout)."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first problem in the data instead of skipping it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a build made with other settings in --out."),
    paraphrase_endpoint: Optional[str] = typer.Option(None, "--paraphrase-endpoint", help="OpenAI-compatible URL of an LLM that rewords every answer option, keeping its facts (optional; default: offline templates only)."),
    paraphrase_model: Optional[str] = typer.Option(None, "--paraphrase-model", help="Model name at --paraphrase-endpoint (default: the one it serves)."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the endpoint's API key."),
) -> None:
    """Build QA groups with four ranked answers per question (AD-PL / MANTA shape) from a data set.

    Image data sets (MVTec AD, MPDD, VisA): one group per test image, normal ones included: the test image, a normal reference, and 5 yes/no questions (2 standard comparison, 2 defect identification, 1 deep diagnosis), each with four answers ranked from expert (type, place, size, cause, consequence from the annotation) to wrong. QA data sets (MANTA, MPDD-QA, AD-PL, MMAD, sage-qa) are converted to the same shape.

    Writes OUT/train.jsonl and OUT/val.jsonl (sage-qa/1) and OUT/prefs.json. Image paths in the records are relative to the dataset root named in prefs.json: pass that root to the train and bench commands (--root / data.root).
    """
    from sage_cli.data.categories import parse_categories
    from sage_cli.prefs.pipeline import PrefsOptions, build_prefs

    opts = PrefsOptions(
        src=src, out=out, seed=seed, val_frac=val_frac, normal_share=normal_share, limit=limit, categories=parse_categories(categories),
        fmt=fmt, strict=strict, overwrite=overwrite,
    )
    rewrite = None
    if paraphrase_endpoint or paraphrase_model:
        if not paraphrase_endpoint:
            from sage_cli.errors import SageError

            raise SageError("--paraphrase-model needs --paraphrase-endpoint")
        from sage_cli.prefs.paraphrase import Paraphraser

        para = Paraphraser.connect(paraphrase_endpoint, paraphrase_model, api_key_env)
        opts.paraphrase = {"endpoint": para.endpoint.url, "model": para.endpoint.model}
        rewrite = para.groups
    result = build_prefs(opts.check(), paraphrase=rewrite)
    _print(result)
    if rewrite is not None:
        typer.echo(f"paraphrased {para.replaced} option(s) with {para.endpoint.describe()}; "
                   f"{para.kept} kept as written (reply unusable or facts changed)")


def _print(result) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console(highlight=False)
    t = Table(caption="Std/Ident/Diag: questions per level")
    for i, col in enumerate(("Split", "Groups", "Images", "Questions", "Std", "Ident", "Diag", "Yes/No")):
        t.add_column(col, justify="left" if i == 0 else "right")
    for name in ("train", "val", "total"):
        c = result.manifest["counts"][name]
        lv = c["levels"]
        t.add_row(name, *map(str, (c["groups"], c["images"], c["questions"], lv["standard"], lv["identification"],
                                   lv["diagnosis"])), f"{c['yes']}/{c['no']}")
    con.print(t)
    for key in ("train", "val", "manifest"):
        con.print(f"wrote {escape(str(result.paths[key]))}", soft_wrap=True)
    con.print(f"image paths are relative to {escape(str(result.root))} (pass it as --root / data.root)", soft_wrap=True)
    if result.problems:
        con.print(f"[yellow]skipped {len(result.problems)} item(s) with problems (use --strict to stop at the first; "
                  f"prefs.json lists up to 20)[/]", soft_wrap=True)
        for line in result.problems[:5]:
            con.print(f"  {escape(line)}", soft_wrap=True)
