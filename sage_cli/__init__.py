"""sage: a toolkit for SAGE, the anomaly-reasoning VLM (fact enhancement + entropy-aware DPO)."""

__version__ = "0.1.0"
