"""Bad input in a data set: stop at the first problem (--strict) or skip it and count."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sage_cli.errors import SageError


@dataclass
class Problems:
    strict: bool = False
    items: list[str] = field(default_factory=list)

    def report(self, where: Path | str, message: str) -> None:
        """Record a problem with one file or record; in strict mode it is fatal."""
        line = f"{where}: {message}"
        if self.strict:
            raise SageError(line)
        self.items.append(line)

    def __len__(self) -> int:
        return len(self.items)

    def summary(self) -> str:
        return f"skipped {len(self.items)} item(s) with problems (use --strict to stop at the first)"
