"""Train/validation split by test image: every group of one image lands on the same side.

An image goes to validation when a hash of (seed, test image path) falls below ``val_frac``. The hash
looks at that one image only, so adding or removing images never moves another image across, and a
model is never validated on an image it was trained on, even when several groups share the image
(MANTA has one group per level for some pairs).
"""

from __future__ import annotations

from collections.abc import Iterable

from sage_cli.data.categories import stable_score
from sage_cli.data.records import QAGroup


def is_val(seed: int, image: str, val_frac: float) -> bool:
    return stable_score("split", seed, image) < val_frac


def split_groups(groups: Iterable[QAGroup], seed: int, val_frac: float) -> tuple[list[QAGroup], list[QAGroup]]:
    """(train, val), each in the order given."""
    train, val = [], []
    for g in groups:
        (val if is_val(seed, g.test_image, val_frac) else train).append(g)
    return train, val
