"""`sage score mle`: MLE scores from an LLM judge, then entropy-based E-DPO pairs."""

from __future__ import annotations

from sage_cli.errors import PendingError


def mle() -> None:
    """Score ranked answers with an LLM judge and select E-DPO pairs (lands with issue #4)."""
    raise PendingError("sage score mle", 4)
