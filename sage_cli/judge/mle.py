"""Eqs. 3-5 of the paper as pure functions: MLE score, per-answer entropy, ΔH_min / ΔH_max pairs.

Ranks are 0-based here (option 0 = a_1, the experts' best answer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Entropy differences closer than this are ties (the scores are means of small integers, so equal
# differences can come out a rounding error apart); a tie goes to the better-ranked pair.
TIE = 1e-12


def mle_score(type_: float, location: float, logic: float) -> float:
    """Eq. 3: S = (type + location + logic) / 3."""
    return (type_ + location + logic) / 3.0


def softmax(scores: list[float]) -> list[float]:
    m = max(scores)  # shifted by the max so exp never overflows
    e = [math.exp(s - m) for s in scores]
    z = sum(e)
    return [v / z for v in e]


def entropies(scores: list[float]) -> list[float]:
    """Eq. 4, per answer: p = softmax(S_1..S_L), H_i = -p_i log p_i (natural log; the i-th term of the sum)."""
    if not scores:
        raise ValueError("entropies of no scores")
    return [-p * math.log(p) if p > 0 else 0.0 for p in softmax(scores)]


@dataclass(frozen=True)
class Pair:
    kind: str  # "min" (ΔH_min, adjacent ranks) or "max" (ΔH_max, a_1 vs a_L)
    chosen_rank: int  # 0-based; always the better-ranked answer
    rejected_rank: int
    chosen: str
    rejected: str
    delta_h: float  # |H(chosen) - H(rejected)|


def select_pairs(options_ranked: list[str], scores: list[float]) -> list[Pair]:
    """Eq. 5: the ΔH_min pair (adjacent ranks with the smallest |H_i - H_i+1|) and the ΔH_max pair (a_1, a_L).

    With two options both pairs are (a_1, a_2). The winner is the better-ranked answer whatever its score:
    the experts' ranking is the preference, the scores only pick which pairs to learn from.
    """
    n = len(options_ranked)
    if n != len(scores):
        raise ValueError(f"{n} options but {len(scores)} scores")
    if n < 2:
        raise ValueError("pair selection needs at least two ranked options")
    h = entropies(scores)
    best = 0
    for i in range(1, n - 1):
        if abs(h[i] - h[i + 1]) < abs(h[best] - h[best + 1]) - TIE:
            best = i

    def pair(kind: str, w: int, loser: int) -> Pair:
        return Pair(kind, w, loser, options_ranked[w], options_ranked[loser], abs(h[w] - h[loser]))

    return [pair("min", best, best + 1), pair("max", 0, n - 1)]
