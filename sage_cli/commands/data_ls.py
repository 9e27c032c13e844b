"""`sage data ls ROOT`: what a dataset root holds."""

from pathlib import Path
from typing import Optional

import typer

SHOW_PROBLEMS = 5  # problem lines shown under the table; --json lists all


def ls(
    root: Path = typer.Argument(..., help="Dataset root (or one sage-qa .jsonl file)."),
    fmt: Optional[str] = typer.Option(
        None, "--format", "-f", help="mvtec, visa, manta, mmad or qa (default: detect from the layout)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first problem instead of skipping it."),
    check: bool = typer.Option(
        False, "--check", help="Open every image fully to find unreadable or truncated files (slow)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for choosing the reference (normal) image of each test image."),
) -> None:
    """Print what a dataset root holds: format, categories, counts per split and defect type, masks."""
    from sage_cli.data.formats import open_dataset

    ds = open_dataset(root, fmt=fmt, strict=strict, seed=seed, check_images=check)
    summary = ds.summary()
    summary["seed"] = seed
    summary["checked_images"] = check
    if as_json:
        import json

        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
        return
    _print(ds, summary)


def _types(counter: dict, skip: str | None = None) -> str:
    """Counts as words, most frequent first: "colour 17, crack 1"."""
    items = sorted(((k, v) for k, v in counter.items() if k != skip), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v}" for k, v in items) or "-"


def _print(ds, s: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console(highlight=False)
    head = f"[bold]{escape(s['root'])}[/]  format [bold]{s['format']}[/]"
    if s["benchmark"]:
        head += f" (categories of {escape(s['benchmark'])})"
    head += f"  {s['records']} record{'' if s['records'] == 1 else 's'}"
    con.print(head, soft_wrap=True)

    cats = s["categories"]
    if ds.kind == "image":
        t = Table(show_footer=True)
        cols = ("Category", "Train", "Test good", "Test defect", "Masks", "Defect types (test)")
        tot = [0, 0, 0, 0]
        rows = []
        for name, c in cats.items():
            train = sum(c["train"].values())
            good = c["test"].get("good", 0)
            bad = sum(c["test"].values()) - good
            for i, v in enumerate((train, good, bad, c["masks"])):
                tot[i] += v
            rows.append((escape(name), train, good, bad, c["masks"], escape(_types(c["test"], skip="good"))))
        foot = ("total", *tot, "")
        for i, col in enumerate(cols):
            justify = "left" if i in (0, 5) else "right"
            t.add_column(col, footer=str(foot[i]), justify=justify, overflow="fold", no_wrap=i == 0)
        for r in rows:
            t.add_row(*map(str, r))
    elif ds.kind == "qa":
        t = Table(caption="Std/Ident/Diag: standard/identification/diagnosis; 1-shot: with a reference; Qs: questions")
        for i, col in enumerate(("Category", "Groups", "Std", "Ident", "Diag", "1-shot", "0-shot", "Qs", "Yes/No")):
            t.add_column(col, justify="left" if i == 0 else "right", overflow="fold", no_wrap=i == 0)
        for name, c in cats.items():
            pt = c["pair_types"]
            t.add_row(
                escape(name),
                *map(str, (c["groups"], pt.get("standard", 0), pt.get("identification", 0), pt.get("diagnosis", 0))),
                *map(str, (c["one_shot"], c["zero_shot"], c["questions"])),
                f"{c['yes']}/{c['no']}",
            )
    else:
        t = Table()
        for i, col in enumerate(("Dataset/category", "Images", "Questions", "With mask", "Question types")):
            t.add_column(col, justify="left" if i in (0, 4) else "right", overflow="fold", no_wrap=i == 0)
        for name, c in cats.items():
            counts = (str(c["images"]), str(c["questions"]), str(c["with_mask"]))
            t.add_row(escape(name), *counts, escape(_types(c["question_types"])))
    con.print(t)

    items = s["problems"]["items"]
    if not items:
        lazy = "" if s["checked_images"] else " (images not opened; --check opens every one)"
        con.print("no problems found" + lazy)
        return
    con.print(f"[yellow]{escape(ds.problems.summary())}[/]")
    for line in items[:SHOW_PROBLEMS]:
        con.print(f"  {escape(line)}", soft_wrap=True)
    if len(items) > SHOW_PROBLEMS:
        con.print(f"  ... and {len(items) - SHOW_PROBLEMS} more (--json lists them all)")
