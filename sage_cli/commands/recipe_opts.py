"""The recipe options every recipe-driven command shares: --recipe, key=value overrides, --print-config."""

from __future__ import annotations

import typer

OVERRIDES = typer.Argument(None, help="Recipe overrides, e.g. train.batch_size=8 optim.lr=2e-6.", show_default=False)
PRINT_CONFIG = typer.Option(False, "--print-config", help="Print the resolved recipe and exit.")


def recipe_option(default: str):
    return typer.Option(default, "--recipe", "-r", help="Recipe name (see `sage recipes ls`) or YAML path.")


def resolve(recipe: str, kind: str, overrides: list[str] | None, print_config: bool):
    """Load + validate the recipe; with --print-config print it and exit 0."""
    from sage_cli.config import load_recipe, to_yaml

    cfg = load_recipe(recipe, kind, overrides or [])
    if print_config:
        typer.echo(to_yaml(cfg), nl=False)
        raise typer.Exit(0)
    return cfg
