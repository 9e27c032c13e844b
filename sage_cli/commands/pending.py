"""Commands whose implementation lands with a later issue.

Each one already takes its real arguments, resolves its recipe (so `--print-config` works today),
then stops with one line naming the issue. Replace a function here when its issue lands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sage_cli.commands.recipe_opts import OVERRIDES, PRINT_CONFIG, recipe_option, resolve
from sage_cli.errors import PendingError

BENCH_FORMATS = ("manta", "mpdd", "mmad", "qa", "mvtec")


def train_sfe(
    overrides: list[str] | None = OVERRIDES,
    recipe: str = recipe_option("sage-smol"),
    print_config: bool = PRINT_CONFIG,
) -> None:
    """Stage 1, Self-Guided Fact Enhancement: cross-entropy on answers (lands with issue #5)."""
    resolve(recipe, "sfe", overrides, print_config)
    raise PendingError("sage train sfe", 5)


def train_edpo(
    overrides: list[str] | None = OVERRIDES,
    recipe: str = recipe_option("sage-smol"),
    print_config: bool = PRINT_CONFIG,
) -> None:
    """Stage 2, entropy-aware DPO from an SFE checkpoint (lands with issue #5)."""
    resolve(recipe, "edpo", overrides, print_config)
    raise PendingError("sage train edpo", 5)


def bench_command(fmt: str):
    def bench(root: Path = typer.Option(..., "--root", help="Benchmark root.")) -> None:
        raise PendingError(f"sage bench {fmt}", 6)

    bench.__doc__ = f"Benchmark on {fmt} data (lands with issue #6)."
    return bench
