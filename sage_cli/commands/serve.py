"""`sage serve`: an OpenAI-compatible HTTP server over a sage checkpoint or a packaged LLM."""

from __future__ import annotations

from sage_cli.errors import PendingError


def serve() -> None:
    """Serve a sage model over an OpenAI-compatible HTTP API (lands with issue #4)."""
    raise PendingError("sage serve", 4)
