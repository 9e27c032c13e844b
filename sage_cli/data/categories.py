"""``--categories`` and ``--limit``: the one parser of category lists, the check of a list against a data set,
and the stable choice of at most N items per category."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from sage_cli.errors import SageError, did_you_mean


def parse_categories(
    text: str | None, known: Iterable[str] | None = None, groups: Mapping[str, Sequence[str]] | None = None
) -> list[str] | None:
    """``--categories`` text as category names; None when the option was not given (every category).

    Without ``known`` the names are kept as written, sorted and without repeats: a data set's
    categories are only known once it is read (then :func:`check_categories` them). With ``known``, a
    fixed catalogue, every name must be in it (case does not matter) and they come back in its
    order; ``groups`` are words that stand for several (``all``, ``procedural``).
    """
    if text is None:
        return None
    groups = {k.lower(): v for k, v in (groups or {}).items()}
    t = text.strip()
    if t.lower() in groups:
        return list(groups[t.lower()])
    catalogue = None if known is None else list(known)
    names = [w.strip() for w in t.split(",") if w.strip()]
    if not names:
        hint = f"known: {', '.join(catalogue)}" if catalogue else "give names separated by commas, e.g. bottle,screw"
        raise SageError(f"--categories names no category; {hint}")
    if catalogue is None:
        return sorted(set(names))
    by_lower = {k.lower(): k for k in catalogue}
    for n in names:
        if n.lower() not in by_lower:
            also = ", or " + " / ".join(repr(g) for g in groups) if groups else ""
            raise SageError(f"unknown category {n!r}{did_you_mean(n.lower(), catalogue)}; known: {', '.join(catalogue)}{also}")
    chosen = {by_lower[n.lower()] for n in names}
    return [k for k in catalogue if k in chosen]


def stable_score(purpose: str, seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (purpose, seed, key): the same on every machine and run (the --limit
    choice here, the train/val split in prefs/split.py)."""
    digest = hashlib.blake2b(f"{purpose}\0{int(seed)}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def more_references(pool: Iterable[str], exclude: Iterable[str], test: str, n: int, seed: int) -> list[str]:
    """n normal references for `test` from `pool` (never one in `exclude`), in a seeded order fixed per test
    image: `sage bench --shots` and `sage calibrate --shots` draw the same ones."""
    skip = set(exclude)
    cands = sorted((r for r in pool if r not in skip),
                   key=lambda r: (-stable_score("references", seed, f"{test}\0{r}"), r))
    return cands[:max(n, 0)]


def check_categories(found: set[str], wanted: Iterable[str] | None) -> None:
    """Refuse wanted categories that the data set (with categories ``found``) does not have."""
    if wanted is None:
        return
    missing = [c for c in wanted if c not in found]
    if missing:
        raise SageError(f"no such category: {', '.join(missing)} (this data set has: {', '.join(sorted(found)) or 'none'})")


def limit_per_category(items: list, key, category, seed: int, limit: int | None) -> list:
    """At most ``limit`` items per category: those with the lowest hash of (seed, key), in input order."""
    if limit is None:
        return items
    by_cat: dict[str, list] = {}
    for it in items:
        by_cat.setdefault(category(it), []).append(it)
    keep = set()
    for members in by_cat.values():
        ranked = sorted(members, key=lambda it: (stable_score("limit", seed, key(it)), key(it)))
        keep.update(id(it) for it in ranked[:limit])
    return [it for it in items if id(it) in keep]
