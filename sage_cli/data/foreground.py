"""Where the object is: a foreground mask from how pixels differ from the border's colour statistics.

An object photographed on a plain background (MVTec's hazelnut, screw, bottle...) differs from the
colours along the image border; a full-frame texture (carpet, wood) does not, and then the whole
image is foreground. numpy + PIL only; the work is done at a reduced resolution and scaled back.
"""

from __future__ import annotations

from collections import deque

import numpy as np

_WORK_SIDE = 128  # the estimate is made on an image whose longer side is this many pixels


def box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean of ``x`` [H, W] over a (2r+1)^2 box around each pixel (edges padded by reflection)."""
    if r <= 0:
        return x.astype(np.float64)
    p = np.pad(x.astype(np.float64), r, mode="reflect" if min(x.shape) > r else "edge")
    c = np.cumsum(np.cumsum(p, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0)))
    k = 2 * r + 1
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return s / (k * k)


def erode(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion of ``mask`` by a square of radius ``r`` (outside the image counts as set)."""
    if r <= 0:
        return mask.copy()
    return box_mean(mask.astype(np.float64), r) > 1 - 1e-9


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of ``mask`` by a square of radius ``r``."""
    if r <= 0:
        return mask.copy()
    return box_mean(mask.astype(np.float64), r) > 1e-9


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256)
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centers)
    mt = m0[-1]
    w1 = 1 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * w0 - m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    return float(centers[int(np.argmax(between))])


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected component labels (0 = background) of a small bool mask."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    n = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        n += 1
        labels[y0, x0] = n
        q = deque([(y0, x0)])
        while q:
            y, x = q.popleft()
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    q.append((yy, xx))
    return labels, n


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every unset pixel that cannot reach the border through unset pixels set."""
    from PIL import Image, ImageDraw

    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask.copy()
    # Holes lie inside the mask's box: flood the outside of that box only (PIL's fill is slow).
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    a = np.ascontiguousarray(np.pad(mask[y0:y1, x0:x1], 1).astype(np.uint8) * 255)
    pad = Image.frombytes("L", (a.shape[1], a.shape[0]), a.tobytes())  # a copy PIL may write to
    ImageDraw.floodfill(pad, (0, 0), 128)  # the outside, reached through unset pixels
    out = mask.copy()
    out[y0:y1, x0:x1] = np.asarray(pad)[1:-1, 1:-1] != 128
    return out


def _fill_object_holes(m: np.ndarray, d: np.ndarray, t: float) -> np.ndarray:
    """``m`` with its holes filled, except holes through which the background shows (a washer's bore).

    A hole is kept open when it is more than a speck and its pixels look like the border: median
    distance ``d`` under half the threshold ``t``. Other holes (a highlight, a dark spot on the part)
    are the object's own pixels that missed the threshold.
    """
    holes = fill_holes(m) & ~m
    labels, n = _components(holes)
    out = m | holes
    for i in range(1, n + 1):
        hole = labels == i
        if hole.sum() >= 0.002 * m.size and float(np.median(d[hole])) < 0.5 * t:
            out &= ~hole
    return out


def estimate_foreground(img: np.ndarray) -> np.ndarray:
    """A bool mask [H, W] of the object in ``img`` [H, W, 3] uint8; all True for full-frame textures.

    Pixels are compared with the border's median colour, in chromaticity (so the object's cast
    shadow, darker but the same hue as the background, stays background) and, more weakly, in
    brightness; Otsu's threshold splits the distances, and the largest component with its holes
    filled (except holes showing the background) is the object. When the border is not a plain
    background, or no compact object stands out from it, the whole frame is returned.
    """
    from PIL import Image

    h, w = img.shape[:2]
    scale = _WORK_SIDE / max(h, w)
    if scale < 1:
        small = np.asarray(
            Image.fromarray(img).resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BILINEAR)
        )
    else:
        small = img
    x = small.astype(np.float64)
    x = np.stack([box_mean(x[..., c], 1) for c in range(3)], axis=-1)
    sh, sw = x.shape[:2]
    b = max(2, round(min(sh, sw) * 0.04))
    border = np.concatenate(
        [x[:b].reshape(-1, 3), x[-b:].reshape(-1, 3), x[:, :b].reshape(-1, 3), x[:, -b:].reshape(-1, 3)]
    )
    lum = x.mean(axis=-1)
    chroma = x / (x.sum(axis=-1, keepdims=True) + 6.0)
    b_lum = border.mean(axis=-1)
    b_chroma = border / (border.sum(axis=-1, keepdims=True) + 6.0)
    ref_c = np.median(b_chroma, axis=0)
    ref_l = float(np.median(b_lum))
    # Robust spread of the border; floors keep a perfectly flat background from dividing by ~0.
    sc = max(float(np.median(np.linalg.norm(b_chroma - ref_c, axis=1))) * 1.5, 0.004)
    sl = max(float(np.median(np.abs(b_lum - ref_l))) * 1.5, 3.0)
    dc = np.linalg.norm(chroma - ref_c, axis=-1) / sc
    dl = np.abs(lum - ref_l) / sl
    d = np.sqrt(dc**2 + (0.35 * dl) ** 2)
    # On a coloured background the object's cast shadow is darker and at least as saturated, with
    # the same hue: its chromaticity lies on the ray from grey through the background's. Such
    # pixels count as background unless they are far off it.
    rv = ref_c - 1 / 3
    rn = float(np.linalg.norm(rv))
    if rn > 0.05:
        u = rv / rn
        cv = chroma - 1 / 3
        along = cv @ u
        across = np.linalg.norm(cv - along[..., None] * u, axis=-1)
        shadow = (lum < ref_l) & (along > 0.85 * rn) & (across < 0.1 * rn)
        d = np.where(shadow, 0.25 * dc, d)

    full = np.ones((h, w), dtype=bool)
    # A border that is itself busy (a texture running off every edge) has no background to compare with.
    border_d = np.concatenate([d[:b].ravel(), d[-b:].ravel(), d[:, :b].ravel(), d[:, -b:].ravel()])
    if float(np.mean(border_d > 4)) > 0.15:
        return full
    # Otsu on log distances: a few vivid pixels (paint, a label) must not pull the split up.
    t = max(float(np.expm1(_otsu(np.log1p(d)))), 4.0)
    m = d > t
    # Open then close (small squares) to drop speckle and join the object's parts.
    m = dilate(erode(m, 1), 1)
    m = erode(dilate(m, 2), 2)
    labels, n = _components(m)
    if n == 0:
        return full
    sizes = np.bincount(labels.ravel())[1:]
    m = labels == (int(np.argmax(sizes)) + 1)
    m = _fill_object_holes(m, d, t)
    frac = float(m.mean())
    if frac < 0.01 or frac > 0.92:
        return full
    # A "background" is plain: the object must stand out clearly, not just pass the threshold.
    if float(np.median(d[m])) < 2 * t and float(np.median(d[~m])) > 0.5 * t:
        return full
    if scale < 1:
        up = Image.fromarray((m * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        m = np.asarray(up) >= 128
    return m


def estimate_blur(img: np.ndarray, fg: np.ndarray | None = None) -> float:
    """How soft the photo is: the Gaussian sigma (pixels) of its strongest edges, at least 0.3.

    Re-blur test: blurring an edge already soft by s0 with s1 lowers its peak gradient by
    s0 / sqrt(s0^2 + s1^2); the ratio at the image's strongest edges gives s0. Synthetic defects
    are softened by this much so that they are no sharper than the photo around them.
    """
    g = img.astype(np.float64).mean(axis=-1)
    # Work at <= 256 px (averaging f x f blocks): sensor and JPEG noise in big photos would pass
    # for sharp edges; the answer is scaled back by f.
    f = max(1, int(min(g.shape) // 256))
    if f > 1:
        h, w = (g.shape[0] // f) * f, (g.shape[1] // f) * f
        g = g[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
        if fg is not None:
            fg = fg[:h, :w].reshape(h // f, f, w // f, f).all(axis=(1, 3))

    def grad(x: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(x)
        return np.sqrt(gx * gx + gy * gy)

    def gauss(x: np.ndarray, sigma: float) -> np.ndarray:
        r = int(np.ceil(3 * sigma))
        k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma * sigma))
        k /= k.sum()
        h, w = x.shape
        p = np.pad(x, ((r, r), (0, 0)), mode="edge")
        y = sum(k[i] * p[i : i + h] for i in range(2 * r + 1))
        p = np.pad(y, ((0, 0), (r, r)), mode="edge")
        return sum(k[i] * p[:, i : i + w] for i in range(2 * r + 1))

    s1 = 2.0
    g0 = grad(g)
    g1 = grad(gauss(g, s1))
    sel = g0 >= np.quantile(g0, 0.995)
    if fg is not None and (sel & fg).sum() >= 20:
        sel &= fg
    if sel.sum() < 5 or g0[sel].mean() < 4:
        return 1.0
    r = float(np.clip(g1[sel].mean() / g0[sel].mean(), 0.05, 0.97))
    s0 = s1 * r / np.sqrt(1 - r * r)
    # Finite differences alone read as about 0.6 px of blur; take that out.
    return float(np.clip(f * np.sqrt(max(s0 * s0 - 0.36, 0.0)), 0.3, 4.0 * f))
