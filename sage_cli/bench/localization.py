"""Pixel-level anomaly metrics of the Eq. 1 map against ground-truth masks, as anomalib reports them.

Each one-shot item's anomaly map (1 - s over the patch grid, `Engine.anomaly`) is kept on its first
sample (``anomaly_map``, `AnomalyMap.rounded`: 4 decimals) so that a resumed run can recompute everything. At the
end, every item whose ground truth is known (a defect mask, or a normal image: an all-zero mask) is
scored at EVAL_SIDE x EVAL_SIDE pixels: the map upsampled bilinearly, the mask resized with nearest
neighbours (anomalib also evaluates at a fixed 256 px). Defective items without a mask add nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EVAL_SIDE = 256


def truth_mask(item) -> np.ndarray | None:
    """[EVAL_SIDE, EVAL_SIDE] bool ground truth of an item, or None when it is not known."""
    from PIL import Image

    if item.mask:
        with Image.open(Path(item.root) / item.mask) as im:
            small = im.convert("L").resize((EVAL_SIDE, EVAL_SIDE), Image.NEAREST)
        return np.asarray(small) > 0
    if item.defective is False:
        return np.zeros((EVAL_SIDE, EVAL_SIDE), dtype=bool)
    return None


def pixel_results(items: list, samples: list[dict]) -> dict | None:
    """{pixel_auroc, aupro, images, pixels, side} over the items that have a map and a known mask."""
    from sage_cli.bench.ad_metrics import pixel_metrics, upsample

    maps_by_id = {s["group_id"]: s["anomaly_map"] for s in samples if s.get("anomaly_map")}
    maps, masks = [], []
    for item in items:
        grid = maps_by_id.get(item.id)
        if grid is None:
            continue
        mask = truth_mask(item)
        if mask is None:
            continue
        maps.append(upsample(np.asarray(grid, dtype=np.float64), (EVAL_SIDE, EVAL_SIDE)))  # [S, S]
        masks.append(mask)
    if not maps or not any(m.any() for m in masks):
        return None
    out = pixel_metrics(maps, masks)
    out["side"] = EVAL_SIDE
    return out
