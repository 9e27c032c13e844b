"""Commands whose implementation lands with a later issue.

Each one already takes its real arguments, resolves its recipe (so `--print-config` works today),
then stops with one line naming the issue. Replace a function here when its issue lands.
"""

from __future__ import annotations

from pathlib import Path

import typer


from sage_cli.errors import PendingError

BENCH_FORMATS = ("manta", "mpdd", "mmad", "qa", "mvtec")


def bench_command(fmt: str):
    def bench(root: Path = typer.Option(..., "--root", help="Benchmark root.")) -> None:
        raise PendingError(f"sage bench {fmt}", 6)

    bench.__doc__ = f"Benchmark on {fmt} data (lands with issue #6)."
    return bench
