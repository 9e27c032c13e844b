"""Contact sheets: rows of labelled examples, each the image with its mask outlined in red beside a zoom."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from sage_cli.data.foreground import dilate, erode

RED = (255, 0, 0)
_LABEL_W = 120
_GAP = 4


def _as_rgb(x) -> np.ndarray:
    from PIL import Image

    if isinstance(x, (str, Path)):
        with Image.open(x) as im:
            return np.asarray(im.convert("RGB"))
    return np.asarray(x, dtype=np.uint8)


def _as_mask(x) -> np.ndarray:
    from PIL import Image

    if isinstance(x, (str, Path)):
        with Image.open(x) as im:
            return np.asarray(im.convert("L")) > 0
    return np.asarray(x) > 0


def _fit(img: np.ndarray, side: int, resample) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    sc = side / max(h, w)
    size = (max(1, round(w * sc)), max(1, round(h * sc)))
    return np.asarray(Image.fromarray(img).resize(size, resample))


def outlined(img: np.ndarray, mask: np.ndarray, side: int) -> np.ndarray:
    """``img`` scaled to ``side`` with a red line just outside the mask (so the defect stays visible)."""
    from PIL import Image

    small = _fit(img, side, Image.BILINEAR).copy()
    m = _fit((mask * 255).astype(np.uint8), side, Image.BILINEAR) >= 64
    if m.any():
        grown = dilate(m, 2)
        line = grown & ~erode(grown, 1)
        small[line] = RED
    return small


def zoom(img: np.ndarray, mask: np.ndarray, side: int) -> np.ndarray:
    """A square crop around the mask's box (with margin), scaled to ``side``, no outline."""
    from PIL import Image

    h, w = img.shape[:2]
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return _fit(img, side, Image.BICUBIC)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) * 0.8 + 8
    half = min(max(half, min(h, w) / 8), min(h, w) / 2)
    y0 = int(np.clip(round(cy - half), 0, max(0, h - 2 * half)))
    x0 = int(np.clip(round(cx - half), 0, max(0, w - 2 * half)))
    n = int(round(2 * half))
    crop = img[y0 : y0 + n, x0 : x0 + n]
    return _fit(np.ascontiguousarray(crop), side, Image.BICUBIC)


def contact_sheet(rows: Sequence[tuple[str, Sequence[tuple[object, object]]]], cell: int = 160):
    """A PIL image: one row per (label, [(image, mask), ...]); images/masks are arrays or paths.

    Each example takes two cells: the whole image with the mask outlined in red, then a zoom on
    the defect without the outline.
    """
    from PIL import Image, ImageDraw, ImageFont

    ncols = max((len(ex) for _, ex in rows), default=0)
    width = _LABEL_W + max(ncols, 1) * (2 * cell + _GAP) + _GAP
    height = max(len(rows), 1) * (cell + _GAP) + _GAP
    sheet = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, (label, examples) in enumerate(rows):
        y = _GAP + r * (cell + _GAP)
        draw.text((8, y + cell // 2 - 6), str(label), fill=(235, 235, 235), font=font)
        for c, (im, mk) in enumerate(examples):
            img, mask = _as_rgb(im), _as_mask(mk)
            x = _LABEL_W + c * (2 * cell + _GAP)
            a = outlined(img, mask, cell)
            b = zoom(img, mask, cell)
            sheet.paste(Image.fromarray(a), (x, y))
            sheet.paste(Image.fromarray(b), (x + cell, y))
    return sheet


def synth_preview(out_root: Path, records: Sequence[dict], kinds: Sequence[str], columns: int = 4, cell: int = 160):
    """The contact sheet of a synth run: rows = kinds, ``columns`` examples spread over each kind."""
    out_root = Path(out_root)
    rows = []
    for kind in kinds:
        recs = [r for r in records if r["kind"] == kind]
        if not recs:
            continue
        idx = sorted({round(i * (len(recs) - 1) / max(columns - 1, 1)) for i in range(min(columns, len(recs)))})
        rows.append((kind, [(out_root / recs[i]["image"], out_root / recs[i]["mask"]) for i in idx]))
    return contact_sheet(rows, cell=cell)
