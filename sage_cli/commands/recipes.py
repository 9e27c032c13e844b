"""`sage recipes ls|show|validate|cp`: find, read, check and copy the YAML recipes."""

from __future__ import annotations

from pathlib import Path

import typer


def ls() -> None:
    """List the shipped recipes with their kind and description."""
    from rich.console import Console
    from rich.table import Table

    from sage_cli.config import list_recipes, load_yaml

    table = Table(title="recipes")
    for col in ("name", "kind", "description"):
        table.add_column(col)
    for name, path in list_recipes().items():
        data = load_yaml(path)
        table.add_row(name, str(data.get("kind", "")), str(data.get("description", "")))
    Console().print(table)


def show(
    name: str = typer.Argument(..., help="Recipe name or path."),
    resolved: bool = typer.Option(False, "--resolved", help="Print with every default filled in."),
) -> None:
    """Print a recipe: the file as written, or resolved with defaults. A short name that several kinds
    share (sage-smol: sfe/sage-smol and edpo/sage-smol) prints each, under a comment naming it."""
    from sage_cli.config import find_recipe, list_recipes, load_recipe, short_name_matches, to_yaml

    matches = short_name_matches(name) if name not in list_recipes() else []
    paths = [(m, list_recipes()[m]) for m in matches] if len(matches) > 1 else [(None, find_recipe(name))]
    for i, (label, path) in enumerate(paths):
        if label:
            typer.echo(("\n" if i else "") + f"# --- {label} ---")
        typer.echo(to_yaml(load_recipe(str(path))) if resolved else path.read_text(encoding="utf-8"), nl=False)


def validate(names: list[str] | None = typer.Argument(None, help="Recipe names or paths (default: all).")) -> None:
    """Check recipes against their schema; exit 1 if any fails."""
    from sage_cli.config import list_recipes, load_recipe
    from sage_cli.errors import SageError

    from sage_cli.config import short_name_matches

    targets = names or [str(p) for p in list_recipes().values()]
    targets = [m for t in targets for m in (short_name_matches(t) if len(short_name_matches(t)) > 1 else [t])]
    failed = 0
    for t in targets:
        try:
            load_recipe(t)
            typer.echo(f"ok      {t}")
        except SageError as e:
            failed += 1
            typer.echo(f"invalid {e}")
    if failed:
        raise SageError(f"{failed} of {len(targets)} recipe(s) invalid")


def cp(
    name: str = typer.Argument(..., help="Recipe name."),
    dest: Path = typer.Argument(..., help="Where to write the copy (a file or a directory)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Copy a shipped recipe to edit it for your own data."""
    from sage_cli.config import find_recipe
    from sage_cli.errors import SageError

    src = find_recipe(name)
    target = dest / src.name if dest.is_dir() else dest
    if target.exists() and not force:
        raise SageError(f"{target} exists (use --force to overwrite)")
    target.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    typer.echo(f"wrote {target}")
