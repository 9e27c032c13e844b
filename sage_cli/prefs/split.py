"""Train/validation split by test image: every group of one image lands on the same side.

An image goes to validation when a hash of (seed, test image path) falls below ``val_frac``. The hash
looks at that one image only, so adding or removing images never moves another image across, and a
model is never validated on an image it was trained on, even when several groups share the image
(MANTA has one group per level for some pairs).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sage_cli.data.records import QAGroup


def stable_score(purpose: str, seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (purpose, seed, key): the same on every machine and run."""
    digest = hashlib.blake2b(f"{purpose}\0{int(seed)}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_val(seed: int, image: str, val_frac: float) -> bool:
    return stable_score("split", seed, image) < val_frac


def split_groups(groups: Iterable[QAGroup], seed: int, val_frac: float) -> tuple[list[QAGroup], list[QAGroup]]:
    """(train, val), each in the order given."""
    train, val = [], []
    for g in groups:
        (val if is_val(seed, g.test_image, val_frac) else train).append(g)
    return train, val
