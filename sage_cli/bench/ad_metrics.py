"""Anomaly-detection metrics as anomalib and the MVTec AD evaluation report them (numpy only).

* Image level: AUROC (`auroc`, the rank formula) and F1-max, the best F1 over all thresholds, with its threshold.
* Pixel level: pixel AUROC over every pixel of every image, and AUPRO (area under the per-region
  overlap curve up to a false-positive rate of 0.3, divided by 0.3).

Maps are float arrays [H, W]; masks are bool or 0/1 arrays of the same shape (all zero for a normal
image: its pixels are negatives). A pixel or image is predicted anomalous when its score is >= the
threshold. A metric that needs both classes is None when one is missing.
"""

from __future__ import annotations

import numpy as np

from sage_cli.bench.auroc import auroc



def _curve(scores: np.ndarray, weights: list[np.ndarray], thresholds: np.ndarray | None = None):
    """(thresholds descending, [sum of each weight over the pixels with score >= t, per threshold]).

    One sort, then cumulative sums from the top score down. thresholds None: every distinct score, so
    tied scores enter together (one point per tie group, as sklearn's roc_curve).
    """
    order = np.argsort(scores)[::-1]  # the order inside a tie group does not matter
    desc = scores[order]
    if thresholds is None:
        n_ge = np.flatnonzero(np.append(desc[1:] != desc[:-1], True)) + 1  # pixels up to each group's end
        thresholds = desc[n_ge - 1]
    else:
        thresholds = np.sort(np.asarray(thresholds, dtype=np.float64))[::-1]
        n_ge = desc.size - np.searchsorted(desc[::-1], thresholds, side="left")  # pixels with score >= t
    return thresholds, [np.append(0.0, np.cumsum(w[order], dtype=np.float64))[n_ge] for w in weights]


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)) if x.size > 1 else 0.0


def _finite(a: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} hold NaN or infinite values")
    return a


def _prepare(maps, masks) -> tuple[np.ndarray, list[np.ndarray]]:
    """(every map's pixels as one float64 vector, the masks as bool arrays), after the shape checks."""
    maps, masks = list(maps), list(masks)
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} maps but {len(masks)} masks")
    flat, bools = [], []
    for i, (m, k) in enumerate(zip(maps, masks)):
        m, k = np.asarray(m, dtype=np.float64), np.asarray(k)
        if m.ndim != 2 or m.shape != k.shape:
            raise ValueError(f"image {i}: map shape {m.shape} and mask shape {k.shape} differ or are not "
                             "[H, W] (upsample the map to the mask's size first)")
        if k.dtype != bool and not np.all((k == 0) | (k == 1)):
            raise ValueError(f"image {i}: the mask holds values other than 0/1 (binarise it, e.g. mask > 0)")
        flat.append(_finite(m, "maps").ravel())
        bools.append(k.astype(bool))
    return (np.concatenate(flat) if flat else np.zeros(0)), bools


def label_regions(mask) -> tuple[np.ndarray, int]:
    """(labels int32 [H, W], number of regions): 8-connected components of a 2-D mask, 0 = background.

    Same result as ``scipy.ndimage.label(mask, np.ones((3, 3)))`` (regions numbered in raster order of
    their first pixel) without scipy: runs of each row are joined to the runs of the next row that
    touch them (diagonals included) with a union-find over runs.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be [H, W], got shape {mask.shape}")
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]  # exclusive; row-major order pairs each start with its end
    parent = list(range(rows.size))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))  # runs of row r: first[r]:first[r+1]
    for r in range(mask.shape[0] - 1):
        i, i_end, j, j_end = first[r], first[r + 1], first[r + 1], first[r + 2]
        while i < i_end and j < j_end:
            if starts[j] <= ends[i] and starts[i] <= ends[j]:  # columns overlap or touch diagonally
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if ends[i] < ends[j]:
                i += 1
            else:
                j += 1
    roots = [find(i) for i in range(rows.size)]
    number: dict[int, int] = {}
    run_label = np.array([number.setdefault(root, len(number) + 1) for root in roots], dtype=np.int32)
    labels = np.zeros(mask.shape, dtype=np.int32)
    for r, s, e, lab in zip(rows, starts, ends, run_label):
        labels[r, s:e] = lab
    return labels, len(number)


def _flat(bools: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([b.ravel() for b in bools]) if bools else np.zeros(0, dtype=bool)


def _roc_area(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int) -> float:
    return _trapezoid(np.append(0.0, fp / n_neg), np.append(0.0, tp / n_pos))


def pixel_auroc(maps, masks) -> float | None:
    """ROC AUC over all pixels of all images (defect pixels positive); tied scores form one ROC point,
    so the value equals sklearn's roc_auc_score. None when only one class is present."""
    scores, bools = _prepare(maps, masks)
    positive = _flat(bools)
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.size:
        return None
    _, (tp, fp) = _curve(scores, [positive, ~positive])
    return _roc_area(tp, fp, n_pos, positive.size - n_pos)


def _regions(bools: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """(per-pixel weight 1 / (size of its region), 0 outside regions; number of regions)."""
    weights, n_regions = [], 0
    for b in bools:
        labels, n = label_regions(b)
        sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
        weights.append(np.where(labels > 0, 1.0 / sizes[labels], 0.0).ravel())
        n_regions += n
    return (np.concatenate(weights) if weights else np.zeros(0)), n_regions


def _check_limit(fpr_limit: float) -> None:
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")


def _pro_area(fp: np.ndarray, overlap: np.ndarray, n_normal: int, n_regions: int, fpr_limit: float) -> float:
    fpr = np.append(0.0, np.minimum(fp / n_normal, 1.0))
    pro = np.append(0.0, np.minimum(overlap / n_regions, 1.0))
    k = int(np.searchsorted(fpr, fpr_limit, side="right"))  # fpr[:k] <= fpr_limit (fpr is non-decreasing)
    area = _trapezoid(fpr[:k], pro[:k])
    if k < fpr.size and fpr[k - 1] < fpr_limit:  # the partial segment up to exactly fpr_limit
        y = pro[k - 1] + (pro[k] - pro[k - 1]) * (fpr_limit - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        area += (fpr_limit - fpr[k - 1]) * (pro[k - 1] + y) / 2
    return float(area / fpr_limit)


def aupro(maps, masks, fpr_limit: float = 0.3, num_thresholds: int | None = None) -> float | None:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit (1.0 = perfect).

    Definition (the MVTec AD evaluation code's; anomalib's AUPRO approximates the same curve):

    * regions: 8-connected components of each mask (``label_regions``, equal to scipy.ndimage.label
      with a 3x3 structure, as the MVTec script; anomalib's cv2.connectedComponents is 8-connected too);
    * at threshold t a pixel is positive when its score >= t; PRO(t) = mean over all regions of all
      images of (region pixels positive / region size); FPR(t) = positive pixels outside every region
      (normal images' pixels included) / all such pixels;
    * thresholds: num_thresholds None (default) takes every distinct score (exact curve, one point per
      tie group, like the MVTec script); an int n takes n thresholds evenly spaced from the smallest to
      the largest score (as anomalib's binned mode for scores in [0, 1]): a coarser curve, same cost;
    * the curve starts at (0, 0); its (FPR, PRO) points are joined by straight lines, the PRO at exactly
      fpr_limit is interpolated linearly between the two neighbouring points, and the area up to there
      is taken with the trapezoid rule.

    None when there is no defect region or no normal pixel.
    """
    _check_limit(fpr_limit)
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError("num_thresholds must be None or >= 2")
    scores, bools = _prepare(maps, masks)
    normal = ~_flat(bools)
    overlap, n_regions = _regions(bools)
    n_normal = int(normal.sum())
    if n_regions == 0 or n_normal == 0:
        return None
    grid = None if num_thresholds is None else np.linspace(scores.min(), scores.max(), int(num_thresholds))
    _, (fp, ov) = _curve(scores, [normal, overlap], grid)
    return _pro_area(fp, ov, n_normal, n_regions, fpr_limit)


def f1_max(labels, scores) -> tuple[float, float] | tuple[None, None]:
    """(best F1, its threshold) over every distinct score t, predicting positive when score >= t.

    F1 = 2 TP / (2 TP + FP + FN). Among equal best F1 the highest threshold is returned.
    (None, None) when labels hold only one class (or none).
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = _finite(np.asarray(scores, dtype=np.float64).ravel(), "scores")
    if y.size != s.size:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return None, None
    thresholds, (tp, fp) = _curve(s, [y, ~y])
    f1 = 2 * tp / (tp + fp + n_pos)  # tp + fp + n_pos = 2 TP + FP + FN
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def _axis(n_in: int, n_out: int):
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(src.astype(np.int64), n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1), src - lo


def upsample(map_hw, size_hw) -> np.ndarray:
    """Bilinear resize of a 2-D map (e.g. a 16x16 patch grid) to size_hw = (H, W), as float64.

    Same as torch's F.interpolate(x[None, None], size=(H, W), mode="bilinear", align_corners=False):
    output pixel i samples input coordinate (i + 0.5) * in / out - 0.5 (pixel centres aligned),
    clamped at 0 below and to the last pixel above (edges repeat); no antialiasing when shrinking.
    """
    m = _finite(np.asarray(map_hw, dtype=np.float64), "the map")
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"map must be a non-empty [h, w] array, got shape {m.shape}")
    h, w = (int(v) for v in size_hw)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {tuple(size_hw)}")
    r0, r1, fr = _axis(m.shape[0], h)
    c0, c1, fc = _axis(m.shape[1], w)
    rows = m[r0] * (1 - fr)[:, None] + m[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc) + rows[:, c1] * fc


def image_metrics(labels, scores) -> dict:
    """{auroc, f1_max, f1_threshold, n, n_pos} of image-level (defective?, score) pairs."""
    y = [bool(v) for v in labels]
    s = [float(v) for v in scores]
    f1, thr = f1_max(y, s)
    return {"auroc": auroc(y, s), "f1_max": f1, "f1_threshold": thr, "n": len(y), "n_pos": sum(y)}


def pixel_metrics(maps, masks, fpr_limit: float = 0.3) -> dict:
    """{pixel_auroc, aupro, images, pixels} of anomaly maps against masks of the same size (one sort
    serves both metrics; AUPRO over every distinct score, as ``aupro`` by default)."""
    _check_limit(fpr_limit)
    scores, bools = _prepare(maps, masks)
    positive = _flat(bools)
    overlap, n_regions = _regions(bools)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    out = {"pixel_auroc": None, "aupro": None, "images": len(bools), "pixels": int(scores.size)}
    if n_pos and n_neg:  # a defect pixel means a region; normal pixels are the negatives
        _, (tp, fp, ov) = _curve(scores, [positive, ~positive, overlap])
        out["pixel_auroc"] = _roc_area(tp, fp, n_pos, n_neg)
        out["aupro"] = _pro_area(fp, ov, n_neg, n_regions, fpr_limit)
    return out
