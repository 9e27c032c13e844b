"""AUROC by the rank formula (pure Python): the one both the paper's metrics and the anomaly-detection
metrics use."""

from __future__ import annotations


def auroc(labels: list[bool], scores: list[float]) -> float | None:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting one half.

    Rank formula: (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with tied
    scores given the mean of the ranks they span.
    """
    if len(labels) != len(scores):
        raise ValueError("labels and scores differ in length")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        mid = (i + j) / 2 + 1  # ranks are 1-based
        for k in range(i, j + 1):
            ranks[order[k]] = mid
        i = j + 1
    pos_ranks = sum(r for r, y in zip(ranks, labels) if y)
    return (pos_ranks - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
