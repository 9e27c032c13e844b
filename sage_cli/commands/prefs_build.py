"""`sage prefs build`: AD-PL-style QA groups with four ranked answers per question."""

from __future__ import annotations

from sage_cli.errors import PendingError


def build() -> None:
    """Build AD-PL-style QA groups with four ranked answers per question (lands with issue #4)."""
    raise PendingError("sage prefs build", 4)
