"""What a defect mask says in numbers and words: bounding box, coarse location, area fraction."""

from __future__ import annotations

import numpy as np

# Rows then columns of a 3x3 grid over the image; the centre of the defect's box picks the cell.
_ROWS = ("upper", "middle", "lower")
_COLS = ("left", "center", "right")


def bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) of the non-zero pixels, x1/y1 exclusive; None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def grid_cell(cx: float, cy: float) -> tuple[int, int]:
    """(row, col) of the 3x3 grid cell holding the point (cx, cy), given as fractions of width and height."""
    return min(int(cy * 3), 2), min(int(cx * 3), 2)


def location_words(box: tuple[int, int, int, int], width: int, height: int) -> str:
    """Coarse words for where a box sits: "upper left", "center", "lower right", ..."""
    r, c = grid_cell((box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height)
    row, col = _ROWS[r], _COLS[c]
    if row == "middle" and col == "center":
        return "center"
    if row == "middle":
        return f"middle {col}"
    return f"{row} {col}"


def describe(mask: np.ndarray) -> tuple[tuple[int, int, int, int] | None, str | None, float]:
    """bbox, location words and area fraction of a bool/0-255 mask [H, W]."""
    m = np.asarray(mask) > 0
    box = bbox(m)
    area = float(m.mean()) if m.size else 0.0
    if box is None:
        return None, None, 0.0
    h, w = m.shape
    return box, location_words(box, w, h), area


def size_words(area_frac: float) -> str:
    """How an inspector would call the size of a defect covering ``area_frac`` of the image."""
    if area_frac < 0.005:
        return "tiny"
    if area_frac < 0.02:
        return "small"
    if area_frac < 0.08:
        return "medium-sized"
    return "large"
