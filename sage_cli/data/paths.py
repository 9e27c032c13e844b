"""Paths inside a dataset root: records may never point outside it."""

from __future__ import annotations

import os
from pathlib import Path

from sage_cli.errors import SageError


def inside(root: Path, rel: str | Path) -> Path:
    """``root / rel``; SageError if ``rel`` is absolute or climbs out of ``root`` with ``..``.

    The check is lexical on purpose: data sets are often assembled from symbolic links (MMAD's
    instructions do that), and a link the user made is theirs to trust; a record's text is not.
    """
    rel_s = os.fspath(rel)
    norm = os.path.normpath(rel_s)
    if os.path.isabs(rel_s) or norm == ".." or norm.startswith(".." + os.sep):
        raise SageError(f"{rel}: path escapes the dataset root {root}")
    return Path(root) / norm

