"""Paths inside a dataset root: records may never point outside it."""

from __future__ import annotations

from pathlib import Path

from sage_cli.errors import SageError


def inside(root: Path, rel: str | Path) -> Path:
    """``root / rel`` resolved; SageError if it escapes ``root`` (``..``, absolute paths, links out)."""
    root_r = Path(root).resolve()
    p = (root_r / rel).resolve()
    if p != root_r and root_r not in p.parents:
        raise SageError(f"{rel}: path escapes the dataset root {root}")
    return p


def relative(root: Path, path: Path) -> str:
    """The POSIX path of ``path`` relative to ``root`` (both resolved)."""
    return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
