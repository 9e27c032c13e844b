"""Append-only JSON Lines: what every resumable command writes its results into.

A killed run leaves at worst one torn last line; readers skip unparsable lines and writers start a
fresh line after a torn one, so nothing already written is lost and nothing is merged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


class Appender:
    """An open JSON Lines file taking one record at a time, each flushed and fsync'd before the next: a
    kill loses at most the line being written. A torn last line of an earlier run is closed off first."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "ab")
        if self._f.tell() > 0:
            with open(self.path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":  # a torn line from a killed run stays one bad line
                    self._write(b"\n")

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self._f.flush()
        os.fsync(self._f.fileno())

    def write(self, record: dict | str) -> None:
        """A dict, or a ready JSON line."""
        line = record if isinstance(record, str) else json.dumps(record, ensure_ascii=False) + "\n"
        self._write(line.encode("utf-8"))

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "Appender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def append(path: Path | str, records: Iterable[dict | str]) -> int:
    """Append records (dicts, or ready JSON lines) to `path`; returns the count."""
    n = 0
    with Appender(path) as out:
        for rec in records:
            out.write(rec)
            n += 1
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
