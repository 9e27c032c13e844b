"""Append-only JSON Lines: what every resumable command writes its results into.

A killed run leaves at worst one torn last line; readers skip unparsable lines and writers start a
fresh line after a torn one, so nothing already written is lost and nothing is merged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def append(path: Path | str, records: Iterable[dict | str]) -> int:
    """Append records (dicts, or ready JSON lines) to `path`, one flushed line each; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "ab") as f:
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":  # a torn line from a killed run stays one bad line
                    f.write(b"\n")
        for rec in records:
            line = rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False) + "\n"
            f.write(line.encode("utf-8"))
            f.flush()
            n += 1
        os.fsync(f.fileno())
    return n


def read(path: Path | str) -> Iterator[tuple[int, dict | None]]:
    """(line number, record) for each non-blank line; record is None where the line is not a JSON object."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                yield i, None
                continue
            yield i, d if isinstance(d, dict) else None
