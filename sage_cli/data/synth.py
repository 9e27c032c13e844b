"""Synthetic defects on normal images, with exact masks (in the spirit of DRAEM, NSA, CutPaste).

Each generator takes a normal image ``img`` [H, W, 3] uint8, its foreground ``fg`` [H, W] bool, a
numpy Generator, a target ``size`` (fraction of the image area the defect spans: for blobs the area
they cover, for lines the square of their length over ~6) and a ``strength`` in 0..1, and returns
``(out, mask)``: the defective image and a bool mask that is True exactly where ``out != img`` in
any channel. Defects stay on the object: every change is multiplied by a softened ``fg`` and the
mask is cut to ``fg``.

:func:`synthesize` is the driver behind ``sage data synth``: it writes an MVTec-layout data set
(``<category>/train/good``, ``test/<kind>/NNN.png``, ``ground_truth/<kind>/NNN_mask.png``,
``test/good``), ``synth.json`` (the settings) and ``synth.jsonl`` (one line per defect image).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sage_cli.atomic import replacing, write_text
from sage_cli.data._common import other_settings, read_manifest
from sage_cli.data.foreground import erode, estimate_blur, estimate_foreground, fill_holes
from sage_cli.data.images import IMAGE_SUFFIXES, load_rgb
from sage_cli.data.masks import describe
from sage_cli.errors import SageError

KINDS = ("scratch", "crack", "stain", "hole", "contamination", "cutpaste")
# Area fraction of the image a defect spans, sampled log-uniformly in the range.
SIZES = {"small": (0.002, 0.006), "medium": (0.006, 0.02), "large": (0.02, 0.06)}
SYNTH_FORMAT = "sage-synth/1"  # written into synth.json; bump when the generators change output

_MIN_STEP = 2.0  # a pixel is part of the defect when some channel moves by at least this much


# --------------------------------------------------------------------------- small image tools


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a 2-D float array (edges repeated)."""
    if sigma < 0.3:
        return x.astype(np.float64)
    r = int(math.ceil(3 * sigma))
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma * sigma))
    k /= k.sum()
    h, w = x.shape
    p = np.pad(x.astype(np.float64), ((r, r), (0, 0)), mode="edge")
    y = sum(k[i] * p[i : i + h] for i in range(2 * r + 1))
    p = np.pad(y, ((0, 0), (r, r)), mode="edge")
    return sum(k[i] * p[:, i : i + w] for i in range(2 * r + 1))


def _shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``x`` moved by (dy, dx) pixels, zeros shifted in."""
    out = np.zeros_like(x)
    h, w = x.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = x[ys, xs]
    return out


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / max(e1 - e0, 1e-9), 0, 1)
    return t * t * (3 - 2 * t)


def perlin(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-1, 1] with ``res`` lattice cells along (y, x)."""
    h, w = shape
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    ang = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    gy, gx = np.sin(ang), np.cos(ang)
    ys = np.arange(h) * ry / h
    xs = np.arange(w) * rx / w
    y0 = ys.astype(int)[:, None]
    x0 = xs.astype(int)[None, :]
    fy = (ys - ys.astype(int))[:, None]
    fx = (xs - xs.astype(int))[None, :]

    def corner(oy: int, ox: int) -> np.ndarray:
        return gy[y0 + oy, x0 + ox] * (fy - oy) + gx[y0 + oy, x0 + ox] * (fx - ox)

    u = fx**3 * (fx * (fx * 6 - 15) + 10)
    v = fy**3 * (fy * (fy * 6 - 15) + 10)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bot = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return np.sqrt(2) * (top + v * (bot - top))


def fractal(shape: tuple[int, int], rng: np.random.Generator, cells: float, octaves: int = 3) -> np.ndarray:
    """Sum of Perlin octaves (each twice as fine, half as strong), about [-1, 1]."""
    h, w = shape
    total = np.zeros(shape)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        c = cells * 2**o
        total += amp * perlin(shape, (max(1, round(c * h / max(h, w))), max(1, round(c * w / max(h, w)))), rng)
        norm += amp
        amp *= 0.5
    return total / norm


def _pick_center(fg: np.ndarray, rng: np.random.Generator, radius: float) -> tuple[int, int]:
    """A (y, x) inside ``fg`` at least about ``radius`` from its edge (closer when it must)."""
    r = int(radius)
    while True:
        ok = erode(fg, r) if r > 0 else fg
        ys, xs = np.nonzero(ok)
        if len(ys):
            i = int(rng.integers(len(ys)))
            return int(ys[i]), int(xs[i])
        if r == 0:
            raise SageError("no foreground to place a defect on")
        r //= 2


def _window(shape: tuple[int, int], c: tuple[int, int], r: float) -> tuple[slice, slice]:
    h, w = shape
    r = int(math.ceil(r))
    return slice(max(0, c[0] - r), min(h, c[0] + r + 1)), slice(max(0, c[1] - r), min(w, c[1] + r + 1))


def _blob(
    fg: np.ndarray,
    rng: np.random.Generator,
    center: tuple[int, int],
    area_px: float,
    rough: float,
    soft: float,
    aspect: float = 1.0,
) -> np.ndarray:
    """A soft irregular blob [H, W] in 0..1 around ``center`` covering about ``area_px`` of ``fg``.

    Radial falloff plus fractal noise, thresholded at the level that gives the area: an organic
    outline (no circles, no rectangles) whose roughness grows with ``rough``.
    """
    h, w = fg.shape
    radius = math.sqrt(area_px / math.pi)
    ys, xs = _window((h, w), center, radius * 2.4 / max(aspect, 0.2) + 4)
    wy, wx = ys.stop - ys.start, xs.stop - xs.start
    yy, xx = np.mgrid[ys, xs]
    dy, dx = yy - center[0], xx - center[1]
    th = rng.uniform(0, np.pi)
    a = (dx * np.cos(th) + dy * np.sin(th)) * math.sqrt(aspect)
    b = (-dx * np.sin(th) + dy * np.cos(th)) / math.sqrt(aspect)
    rr = np.sqrt(a * a + b * b) / max(radius, 1.0)
    cells = max(wy, wx) / max(radius * 1.1, 2.0)
    field_ = 1 - rr + rough * fractal((wy, wx), rng, cells, octaves=3)
    inside = fg[ys, xs]
    vals = np.sort(field_[inside])[::-1]
    if len(vals) == 0:
        return np.zeros((h, w))
    k = int(np.clip(round(area_px), 1, len(vals)))
    t = vals[k - 1]
    soft = min(soft, max((vals[0] - t) / 0.65 * 0.8, 0.02))  # the core always reaches full strength
    out = np.zeros((h, w))
    out[ys, xs] = _smoothstep(t - soft * 0.35, t + soft * 0.65, field_)
    return out


def _stroke(shape: tuple[int, int], pts: np.ndarray, widths: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """Antialiased polyline [H, W] in 0..1 through ``pts`` (N, 2) as (x, y), width per vertex."""
    from PIL import Image, ImageDraw

    h, w = shape
    ss = 4  # supersampling
    if values is None:
        values = np.ones(len(pts))
    pad = float(widths.max()) + 2
    x0 = max(0, int(math.floor(pts[:, 0].min() - pad)))
    y0 = max(0, int(math.floor(pts[:, 1].min() - pad)))
    x1 = min(w, int(math.ceil(pts[:, 0].max() + pad)) + 1)
    y1 = min(h, int(math.ceil(pts[:, 1].max() + pad)) + 1)
    out = np.zeros((h, w))
    if x1 <= x0 or y1 <= y0:
        return out
    canvas = Image.new("L", ((x1 - x0) * ss, (y1 - y0) * ss), 0)
    draw = ImageDraw.Draw(canvas)
    p = (pts - [x0, y0]) * ss
    for i in range(len(p)):
        v = int(round(255 * float(np.clip(values[i], 0, 1))))
        r = widths[i] * ss / 2
        if i + 1 < len(p):
            wd = max(1, int(round((widths[i] + widths[i + 1]) / 2 * ss)))
            draw.line([tuple(p[i]), tuple(p[i + 1])], fill=v, width=wd)
        draw.ellipse([p[i][0] - r, p[i][1] - r, p[i][0] + r, p[i][1] + r], fill=v)
    small = canvas.reduce(ss)
    out[y0:y1, x0:x1] = np.asarray(small, dtype=np.float64) / 255.0
    return out


def _walk(
    start: tuple[float, float],
    angle: float,
    steps: int,
    step: float,
    rng: np.random.Generator,
    turn: float,
    bend: float = 0.0,
    revert: float = 0.0,
    fg: np.ndarray | None = None,
    jitter: float = 0.0,
) -> np.ndarray:
    """A random path (N, 2) of (x, y) points from ``start``; stops where it leaves ``fg``.

    ``turn``: random change of heading per step (radians); ``bend``: a steady curvature per step;
    ``revert`` > 0 pulls the heading back towards ``angle`` (a jagged line that keeps its course);
    ``jitter`` varies the step length by up to that fraction.
    """
    pts = [np.array(start, dtype=np.float64)]
    heading, dev = angle, 0.0
    for i in range(steps):
        if revert > 0:
            dev = dev * (1 - revert) + rng.normal(0, turn)
            heading = angle + dev + bend * i
        else:
            heading += bend + rng.normal(0, turn)
        ln = step * (1 + rng.uniform(-jitter, jitter)) if jitter else step
        nxt = pts[-1] + ln * np.array([math.cos(heading), math.sin(heading)])
        if fg is not None:
            yi, xi = int(round(nxt[1])), int(round(nxt[0]))
            if not (0 <= yi < fg.shape[0] and 0 <= xi < fg.shape[1]) or not fg[yi, xi]:
                break
        pts.append(nxt)
    return np.array(pts)


def _line_through(center, angle, length, step, rng, fg, **kw) -> np.ndarray:
    """A path through ``center`` grown both ways, about ``length`` long, inside ``fg``."""
    n = max(2, int(length / step / 2))
    c = (float(center[1]), float(center[0]))
    a = _walk(c, angle, n, step, rng, fg=fg, **kw)
    b = _walk(c, angle + np.pi, n, step, rng, fg=fg, **kw)
    return np.concatenate([b[::-1], a[1:]])


def _profile(n: int, rng: np.random.Generator, lo: float = 0.3) -> np.ndarray:
    """A smooth random 1-D profile in [lo, 1] along a path of n points, tapering at both ends."""
    t = np.linspace(0, 1, n)
    knots = rng.uniform(0.55, 1.0, 6)
    wobble = np.interp(t, np.linspace(0, 1, 6), knots)
    taper = np.sin(np.pi * np.clip(t, 0, 1)) ** 0.5 if n > 2 else np.ones(n)
    return lo + (1 - lo) * wobble * np.maximum(taper, 0.15)


def _light(rng: np.random.Generator) -> np.ndarray:
    """Unit (x, y) vector pointing towards the light: upper left, give or take."""
    a = -0.75 * np.pi + rng.normal(0, 0.35)
    return np.array([math.cos(a), math.sin(a)])


def _contrast(strength: float) -> float:
    """--strength 0..1 as a contrast factor 0.1..1 (0 is faint but still there)."""
    return 0.1 + 0.9 * float(strength)


def _scale(img: np.ndarray) -> float:
    return min(img.shape[:2]) / 256.0


_BLUR_CACHE: dict[bytes, float] = {}


def _photo_blur(img: np.ndarray, fg: np.ndarray) -> float:
    """estimate_blur, remembered for the last few images (every defect on one image asks again)."""
    key = hashlib.sha1(img.tobytes() + np.packbits(fg).tobytes()).digest()
    if key not in _BLUR_CACHE:
        if len(_BLUR_CACHE) > 8:
            _BLUR_CACHE.clear()
        _BLUR_CACHE[key] = estimate_blur(img, fg)
    return _BLUR_CACHE[key]


def _compose(img: np.ndarray, delta: np.ndarray, fg: np.ndarray, soften: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """Apply a float change [H, W, 3] on the object; return (out, mask) with mask == (out != img).

    The change is first blurred by ``soften`` times the photo's own blur (a drawn line must not be
    sharper than the picture it is on; 0 leaves it as it is). The change fades over a pixel at the
    object's edge and stops there. Pixels whose largest channel change is under ``_MIN_STEP`` are
    left alone; holes inside the changed region are filled, and any masked pixel that rounding or
    clipping left unchanged is moved by one level, so the mask is exactly the set of changed pixels.
    """
    h, w = fg.shape
    nz = np.nonzero(np.abs(delta).max(axis=-1) > 0)
    if len(nz[0]) == 0:
        return img.copy(), np.zeros((h, w), dtype=bool)
    sigma = soften * _photo_blur(img, fg) if soften > 0 else 0.0
    # Work inside the changed box, grown by what the blurs can reach.
    m = int(math.ceil(3 * max(sigma, 0.8 * max(_scale(img), 1.0)))) + 2
    ys = slice(max(0, nz[0].min() - m), min(h, nz[0].max() + m + 1))
    xs = slice(max(0, nz[1].min() - m), min(w, nz[1].max() + m + 1))
    d = delta[ys, xs].astype(np.float64, copy=True)
    if sigma >= 0.3:
        for c in range(3):
            d[..., c] = _blur(d[..., c], sigma)
    fgw = fg[ys, xs]
    d *= (_blur(fgw.astype(np.float64), 0.8 * max(_scale(img), 1.0)) * fgw)[..., None]
    delta = np.zeros((h, w, 3))
    delta[ys, xs] = d
    mask = (np.abs(delta).max(axis=-1) >= _MIN_STEP) & fg
    mask = fill_holes(mask) & fg
    f = img.astype(np.float64)
    out = np.where(mask[..., None], np.clip(np.rint(f + delta), 0, 255), f).astype(np.uint8)
    same = mask & np.all(out == img, axis=-1)
    if same.any():
        ys, xs = np.nonzero(same)
        d = delta[ys, xs]
        c = np.argmax(np.abs(d), axis=1)
        step = np.where(d[np.arange(len(c)), c] < 0, -1, 1)
        v = img[ys, xs, c].astype(int)
        step = np.where((v + step < 0) | (v + step > 255), -step, step)
        out[ys, xs, c] = (v + step).astype(np.uint8)
    return out, mask


# --------------------------------------------------------------------------- the generators


def scratch(img, fg, rng, size, strength):
    """Thin curved line(s), lighter (abraded) or darker than the surface, with a groove shadow."""
    h, w = fg.shape
    s = _scale(img)
    f = img.astype(np.float64)
    k = _contrast(strength)
    length = 2.5 * math.sqrt(size * h * w)
    center = _pick_center(fg, rng, length * 0.12)
    angle = rng.uniform(0, 2 * np.pi)
    bend = rng.normal(0, 0.012)
    step = max(1.0, 1.5 * s)
    n_strands = int(rng.choice([1, 1, 1, 2, 2, 3]))
    core = np.zeros((h, w))
    normal = np.array([-math.sin(angle), math.cos(angle)])
    for i in range(n_strands):
        off = 0 if i == 0 else rng.uniform(2.0, 6.0) * s * rng.choice([-1, 1])
        c = (int(round(center[0] + normal[1] * off)), int(round(center[1] + normal[0] * off)))
        c = (min(max(c[0], 0), h - 1), min(max(c[1], 0), w - 1))
        if not fg[c]:
            continue
        ln = length * (1.0 if i == 0 else rng.uniform(0.35, 0.8))
        pts = _line_through(c, angle + rng.normal(0, 0.04), ln, step, rng, fg, turn=0.02, bend=bend)
        if len(pts) < 2:
            continue
        wid = rng.uniform(1.0, 2.0) * max(s, 0.6) * (1.0 if i == 0 else 0.7)
        widths = wid * _profile(len(pts), rng, lo=0.35)
        core = np.maximum(core, _stroke((h, w), pts, widths, _profile(len(pts), rng, lo=0.35)))
    light = _light(rng)
    sh = max(1, int(round(s)))
    shadow = np.clip(_shift(core, int(round(-light[1] * sh)), int(round(-light[0] * sh))) - core, 0, 1)
    # On a bright surface a lighter line hardly shows: scratches there are mostly dark grooves.
    lum = float(f[fg].mean()) if fg.any() else float(f.mean())
    if rng.random() < np.clip((190 - lum) / 120, 0.15, 0.85):  # abraded: lighter, darker groove wall
        lift = (np.minimum(255, f * 1.2 + 80) - f) * (0.9 * k)
        delta = lift * core[..., None] - f * (0.35 * k) * shadow[..., None]
    else:  # a dark groove with a bright lip
        delta = -f * (0.55 * k) * core[..., None] + (255 - f) * (0.35 * k) * shadow[..., None]
    return _compose(img, delta, fg, soften=0.45)


def crack(img, fg, rng, size, strength):
    """A dark jagged line with branches, widest in the middle, a shaded halo and a lit edge."""
    h, w = fg.shape
    s = _scale(img)
    f = img.astype(np.float64)
    k = _contrast(strength)
    length = 2.3 * math.sqrt(size * h * w)
    center = _pick_center(fg, rng, length * 0.15)
    angle = rng.uniform(0, 2 * np.pi)
    step = max(2.0, 3.0 * s)
    # Zig-zag on a steady course: each segment deviates afresh, the course bends only slowly.
    jag = dict(turn=0.5, revert=0.75, jitter=0.5)
    main = _line_through(center, angle, length, step, rng, fg, bend=rng.normal(0, 0.015), **jag)
    wmax = rng.uniform(1.3, 2.4) * max(s, 0.6)
    t = np.linspace(0, 1, len(main))
    widths = wmax * (0.2 + 0.8 * np.sin(np.pi * t) ** 0.7) * rng.uniform(0.75, 1.2, len(main))
    core = _stroke((h, w), main, widths)
    for _ in range(int(rng.integers(1, 4))):
        if len(main) < 6:
            break
        i = int(rng.integers(len(main) // 6, len(main) - len(main) // 6))
        d = main[min(i + 1, len(main) - 1)] - main[max(i - 1, 0)]
        a0 = math.atan2(d[1], d[0]) + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
        br = _walk(tuple(main[i]), a0, max(2, int(length * rng.uniform(0.12, 0.35) / step)), step, rng,
                   fg=fg, **jag)
        if len(br) < 2:
            continue
        bw = widths[i] * 0.65 * np.linspace(1, 0.3, len(br))
        core = np.maximum(core, _stroke((h, w), br, bw))
    halo = np.clip(_blur(core, 1.3 * max(s, 0.7)) * 1.6, 0, 1) * (1 - core)
    light = _light(rng)
    sh = max(1, int(round(s)))
    lip = np.clip(_shift(core, int(round(light[1] * sh)), int(round(light[0] * sh))) - core, 0, 1) * (1 - halo * 0.5)
    dark = 0.3 + 0.55 * k  # fraction of brightness lost in the gap
    tint = np.array([1.0, 0.82, 0.64])  # dark brown, not black
    gap = f * (1 - dark) * tint - f
    delta = gap * core[..., None] - f * (0.18 * k) * halo[..., None] + (255 - f) * (0.18 * k) * lip[..., None]
    return _compose(img, delta, fg, soften=0.55)


_STAIN_TINTS = (
    (0.80, 0.64, 0.46),  # brown
    (0.66, 0.60, 0.56),  # dark, oily
    (0.92, 0.60, 0.42),  # rust
    (0.78, 0.86, 0.60),  # greenish mould
    (0.84, 0.66, 0.82),  # purple-ish
)


def stain(img, fg, rng, size, strength):
    """A discoloured patch with a soft, natural outline, uneven inside, sometimes a darker rim."""
    h, w = fg.shape
    f = img.astype(np.float64)
    k = _contrast(strength)
    area = size * h * w
    center = _pick_center(fg, rng, math.sqrt(area / math.pi) * 0.7)
    alpha = _blob(fg, rng, center, area, rough=0.6, soft=0.8, aspect=rng.uniform(0.5, 1.0))
    ys, xs = _window((h, w), center, math.sqrt(area / math.pi) * 3 + 4)
    inner = np.ones((h, w))
    inner[ys, xs] = 0.65 + 0.35 * fractal((ys.stop - ys.start, xs.stop - xs.start), rng, 5, octaves=3)
    a = alpha * inner
    if rng.random() < 0.5:  # a tide mark: the edge darker than the middle
        a = a + 1.2 * alpha * (1 - alpha) * 1.0
    a = np.clip(a, 0, 1.3)
    lum = float(f[fg].mean()) if fg.any() else float(f.mean())
    if lum < 160 and rng.random() < 0.25:  # bleached: paler and greyer (shows on darker surfaces)
        grey = f.mean(axis=-1, keepdims=True)
        target = np.minimum(255, grey * 1.2 + 40)
        delta = (target - f) * (0.9 * k) * a[..., None]
    else:
        tint = np.array(_STAIN_TINTS[int(rng.integers(len(_STAIN_TINTS)))])
        tint = tint * rng.uniform(0.93, 1.05)
        delta = f * (tint - 1) * (0.3 + 1.1 * k) * a[..., None]
    return _compose(img, delta, fg)


def hole(img, fg, rng, size, strength):
    """A missing piece: a dark cavity shaded like a bowl, with a lit rim on the light side."""
    h, w = fg.shape
    s = _scale(img)
    f = img.astype(np.float64)
    k = _contrast(strength)
    area = size * h * w
    radius = math.sqrt(area / math.pi)
    center = _pick_center(fg, rng, radius * 1.3)
    a = _blob(fg, rng, center, area, rough=0.3, soft=0.12, aspect=rng.uniform(0.55, 1.0))
    ys, xs = _window((h, w), center, radius * 3 + 6)
    sub = a[ys, xs]
    depth = _blur(sub, max(radius * 0.3, 0.8))
    depth = depth / max(depth.max(), 1e-6)
    gy, gx = np.gradient(depth)
    light = _light(rng)
    g = np.maximum(np.sqrt(gx * gx + gy * gy).max(), 1e-6)
    shade = (gx * light[0] + gy * light[1]) / g  # > 0: far inner wall, facing the light
    lit = np.maximum(shade, 0) ** 0.6
    # The near wall shades the floor next to it: the cavity, moved towards the light, stays dark.
    sh = max(1, int(round(radius * 0.35)))
    cast = np.clip(sub - _shift(sub, int(round(-light[1] * sh)), int(round(-light[0] * sh))), 0, 1)
    cast = _blur(cast, max(radius * 0.15, 0.7))  # 1 where the floor lies in the near wall's shadow
    fs = f[ys, xs]
    mean = fs[sub > 0.5].mean(axis=0) if (sub > 0.5).any() else fs.reshape(-1, 3).mean(axis=0)
    base = mean * (0.3 + 0.3 * (1 - k)) * np.array([0.95, 0.8, 0.62])
    tex = 0.8 + 0.4 * fractal(sub.shape, rng, max(sub.shape) / max(radius * 0.35, 2), octaves=3)
    light_f = (1 + 1.8 * lit) * (1 - 0.55 * np.maximum(-shade, 0)) * (1 - 0.3 * depth) * (1 - 0.5 * cast)
    cav = base * (light_f * tex)[..., None]
    # Rim: a band just outside the cut, lit where it faces the light, darker where it faces away.
    outer = _blur(sub, 1.0 * max(s, 0.8) + radius * 0.1)
    band = np.clip(outer - sub, 0, 1)
    band = band / max(band.max(), 1e-6)
    ogy, ogx = np.gradient(outer)
    on = np.maximum(np.sqrt(ogx * ogx + ogy * ogy), 1e-6)
    facing = -(ogx * light[0] + ogy * light[1]) / on  # outward normal . light
    fc = facing[..., None]
    rim = (np.maximum(fc, 0) * (255 - fs) * 0.3 - np.maximum(-fc, 0) * fs * 0.2 - fs * 0.08) * k
    delta = np.zeros_like(f)
    delta[ys, xs] = (cav - fs) * sub[..., None] + rim * (band * (1 - sub))[..., None]
    return _compose(img, delta, fg, soften=0.6)


_FOREIGN = (
    (34, 30, 28),  # black
    (58, 46, 36),  # dark brown dirt
    (236, 234, 228),  # white
    (128, 128, 132),  # grey
    (112, 66, 44),  # rust
    (78, 96, 60),  # green
    (70, 92, 140),  # blue
)


def contamination(img, fg, rng, size, strength):
    """A foreign fibre (thin, curly) or particle (textured, shaded, with a drop shadow) on the surface."""
    h, w = fg.shape
    s = _scale(img)
    f = img.astype(np.float64)
    k = _contrast(strength)
    light = _light(rng)
    surf = f[fg].mean(axis=0) if fg.any() else f.reshape(-1, 3).mean(axis=0)
    picks = rng.choice(len(_FOREIGN), 3, replace=False)
    col = np.array(max((_FOREIGN[i] for i in picks), key=lambda c: np.abs(np.array(c) - surf).sum()), dtype=np.float64)
    opacity = 0.45 + 0.55 * k
    if rng.random() < 0.45:  # fibre
        length = 3.0 * math.sqrt(size * h * w)
        center = _pick_center(fg, rng, length * 0.1)
        step = max(1.0, 1.5 * s)
        pts = _line_through(center, rng.uniform(0, 2 * np.pi), length, step, rng, fg, turn=0.13, bend=rng.normal(0, 0.05))
        widths = rng.uniform(0.8, 1.4) * max(s, 0.6) * _profile(len(pts), rng, lo=0.6)
        core = _stroke((h, w), pts, widths)
        var = 0.85 + 0.3 * _profile(len(pts), rng, lo=0.0)
        shade = _stroke((h, w), pts, widths, var) / np.maximum(core, 1e-6)
        sh = max(1, int(round(1.5 * s)))
        shadow = np.clip(_shift(core, int(round(-light[1] * sh)), int(round(-light[0] * sh))) - core, 0, 1)
        target = np.clip(col * np.clip(shade, 0.7, 1.3)[..., None], 0, 255)
        delta = (target - f) * (opacity * core)[..., None] - f * (0.25 * k) * shadow[..., None]
        return _compose(img, delta, fg)
    # particle, sometimes with a few crumbs around it
    area = size * h * w
    radius = math.sqrt(area / math.pi)
    center = _pick_center(fg, rng, radius)
    a = _blob(fg, rng, center, area * 0.8, rough=0.6, soft=0.08, aspect=rng.uniform(0.5, 1.0))
    for _ in range(int(rng.integers(0, 4))):
        off = rng.normal(0, radius * 1.3, 2)
        c = (int(np.clip(center[0] + off[0], 0, h - 1)), int(np.clip(center[1] + off[1], 0, w - 1)))
        if fg[c]:
            a = np.maximum(a, _blob(fg, rng, c, max(area * rng.uniform(0.03, 0.1), 3), rough=0.5, soft=0.1))
    ys, xs = _window((h, w), center, radius * 4 + 6)
    sub = a[ys, xs]
    height = _blur(sub, max(radius * 0.25, 0.7))
    gy, gx = np.gradient(height)
    g = max(float(np.sqrt(gx * gx + gy * gy).max()), 1e-6)
    lit = -(gx * light[0] + gy * light[1]) / g  # > 0 where the bump faces the light
    grain = fractal(sub.shape, rng, max(sub.shape) / max(radius * 0.15, 1.2), octaves=2)
    lumps = fractal(sub.shape, rng, max(sub.shape) / max(radius * 0.5, 2.0), octaves=1)
    tex = 0.8 + 0.3 * grain + 0.2 * lumps
    body = col * (tex * (1 + 0.7 * lit))[..., None]
    gloss = (np.clip((lit - 0.45) * 2, 0, 1) ** 2 * 0.45)[..., None]  # a dull sheen on the lit flank
    target = np.clip(body + (255 - body) * gloss, 0, 255)
    off = max(1, int(round(radius * 0.3)))
    drop = np.clip(_shift(_blur(sub, max(radius * 0.25, 0.8)), int(round(-light[1] * off)), int(round(-light[0] * off))) - sub, 0, 1)
    fs = f[ys, xs]
    delta = np.zeros_like(f)
    delta[ys, xs] = (target - fs) * (opacity * sub)[..., None] - fs * (0.45 * k) * drop[..., None]
    return _compose(img, delta, fg)


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    y = np.clip(y, 0, h - 1)
    x = np.clip(x, 0, w - 1)
    y0 = np.floor(y).astype(int)
    x0 = np.floor(x).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (y - y0)[..., None]
    wx = (x - x0)[..., None]
    f = img.astype(np.float64)
    top = f[y0, x0] * (1 - wx) + f[y0, x1] * wx
    bot = f[y1, x0] * (1 - wx) + f[y1, x1] * wx
    return top * (1 - wy) + bot * wy


def cutpaste(img, fg, rng, size, strength):
    """A piece of the same object, cut from elsewhere, turned, and pasted with a feathered edge."""
    h, w = fg.shape
    f = img.astype(np.float64)
    area = size * h * w
    radius = math.sqrt(area / math.pi)
    dst = _pick_center(fg, rng, radius)
    a = _blob(fg, rng, dst, area, rough=0.3, soft=0.2, aspect=rng.uniform(0.3, 1.0))
    ys, xs = _window((h, w), dst, radius * 3.5 + 4)
    yy, xx = np.mgrid[ys, xs]
    best, best_score = None, -1.0
    sel = a[ys, xs] > 0.5
    for _ in range(6):
        src = _pick_center(fg, rng, radius * 1.2)
        far = math.hypot(src[0] - dst[0], src[1] - dst[1]) >= 1.5 * radius
        th = rng.uniform(0, 2 * np.pi)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        dy, dx = yy - dst[0], (xx - dst[1]) * flip
        sy = src[0] + dy * math.cos(th) - dx * math.sin(th)
        sx = src[1] + dy * math.sin(th) + dx * math.cos(th)
        patch = _bilinear(img, sy, sx)
        score = float(np.abs(patch - f[ys, xs])[sel].mean()) if sel.any() else 0.0
        score += 1000.0 * far  # any far source beats any near one
        if score > best_score:
            best, best_score = patch, score
    gain = 1 + rng.normal(0, 0.05) * (0.5 + strength)
    patch = np.clip(best * gain, 0, 255)
    delta = np.zeros_like(f)
    delta[ys, xs] = (patch - f[ys, xs]) * a[ys, xs][..., None]
    return _compose(img, delta, fg, soften=0)  # the patch is already as sharp as the photo


GENERATORS: dict[str, Callable] = {
    "scratch": scratch,
    "crack": crack,
    "stain": stain,
    "hole": hole,
    "contamination": contamination,
    "cutpaste": cutpaste,
}


def make_defect(
    img: np.ndarray, fg: np.ndarray, kind: str, rng: np.random.Generator, size: float, strength: float
) -> tuple[np.ndarray, np.ndarray]:
    """One defect of ``kind`` on ``img``: (out, mask), mask == (out != img).any(-1), mask inside ``fg``."""
    if kind not in GENERATORS:
        raise SageError(f"unknown defect kind {kind!r}{_did_you_mean(kind, KINDS)}")
    fg_frac = float(fg.mean())
    size = min(size, 0.35 * fg_frac)  # the defect has to fit on the object
    min_px = max(4, int(0.15 * size * fg.size))
    for _ in range(8):
        out, mask = GENERATORS[kind](img, fg, rng, size, strength)
        if mask.sum() >= min_px:
            return out, mask
    if mask.any():
        return out, mask
    raise SageError(f"could not place a {kind} on the object (is it too small at this image size?)")


# --------------------------------------------------------------------------- options and inputs


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_kinds(text: str | None) -> tuple[str, ...]:
    """``"scratch,crack"`` → ("scratch", "crack"); empty or ``all`` → every kind."""
    if text is None or text.strip().lower() in ("", "all"):
        return KINDS
    out: list[str] = []
    for raw in text.split(","):
        k = raw.strip().lower()
        if not k:
            continue
        if k not in KINDS:
            raise SageError(f"unknown defect kind {k!r}{_did_you_mean(k, KINDS)}; kinds are: {', '.join(KINDS)}")
        if k not in out:
            out.append(k)
    if not out:
        raise SageError(f"--kinds names no kind; kinds are: {', '.join(KINDS)}")
    return tuple(out)


def parse_size(text: str) -> tuple[float, float]:
    """``small|medium|large``, one area fraction (``0.01``) or a range (``0.005-0.02``)."""
    t = str(text).strip().lower()
    if t in SIZES:
        return SIZES[t]
    parts = t.replace(":", "-").replace(",", "-").split("-") if not t.startswith("-") else [t]
    try:
        vals = [float(p) for p in parts if p != ""]
    except ValueError:
        vals = []
    if len(vals) not in (1, 2):
        raise SageError(
            f"bad --size {text!r}{_did_you_mean(t, SIZES)}: use small, medium, large, "
            "an area fraction like 0.01 or a range like 0.005-0.02"
        )
    lo, hi = vals[0], vals[-1]
    if not (0 < lo <= hi <= 0.5):
        raise SageError(f"bad --size {text!r}: area fractions must satisfy 0 < low <= high <= 0.5")
    return lo, hi


@dataclass(frozen=True)
class Normal:
    """A normal image to copy and to make defects on."""

    category: str
    split: str  # "train" or "test": where its copy goes (OUT/<category>/<split>/good/<name>.png)
    path: Path
    name: str  # file stem in OUT


def _images_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def _named(paths: list[Path]) -> list[tuple[Path, str]]:
    """(path, stem) with stems made unique (a.jpg and a.png become a_jpg and a_png)."""
    stems: dict[str, int] = {}
    for p in paths:
        stems[p.stem] = stems.get(p.stem, 0) + 1
    return [(p, p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix.lower().lstrip('.')}") for p in paths]


def _split_limit(train: list, test: list, limit: int | None) -> tuple[list, list]:
    if limit is None or limit >= len(train) + len(test):
        return train, test
    n_test = min(len(test), round(limit * len(test) / (len(train) + len(test))))
    if test and limit >= 2:
        n_test = max(n_test, 1)
    n_train = min(len(train), limit - n_test)
    n_test = min(len(test), limit - n_train)
    return train[:n_train], test[:n_test]


def find_normals(root: Path, limit: int | None = None) -> dict[str, list[Normal]]:
    """Normal images per category under ``root``, at most ``limit`` per category.

    An MVTec-style root (``<category>/train/good``) gives each category's ``train/good`` images
    (copied to train/good) and ``test/good`` images (copied to test/good); a single category folder
    (``root/train/good``) the same for one category; a plain folder of images is one category named
    after the folder, whose every fifth image is held out for test/good.
    """
    root = Path(root)
    if not root.exists():
        raise SageError(f"{root}: no such folder (--from)")
    if not root.is_dir():
        raise SageError(f"{root}: not a folder (--from wants a dataset root or a folder of images)")
    cats: list[tuple[str, Path]] = []
    if (root / "train" / "good").is_dir():
        cats = [(root.resolve().name, root)]
    else:
        cats = [(d.name, d) for d in sorted(root.iterdir()) if d.is_dir() and (d / "train" / "good").is_dir()]
    found: dict[str, list[Normal]] = {}
    if cats:
        for name, d in cats:
            train, test = _split_limit(_images_in(d / "train" / "good"), _images_in(d / "test" / "good"), limit)
            items = [Normal(name, "train", p, n) for p, n in _named(train)]
            items += [Normal(name, "test", p, n) for p, n in _named(test)]
            if items:
                found[name] = items
    else:
        imgs = _images_in(root)
        if limit is not None:
            imgs = imgs[:limit]
        named = _named(imgs)
        held = {i for i in range(len(named)) if i % 5 == 4} if len(named) >= 5 else ({len(named) - 1} if len(named) >= 2 else set())
        if named:
            found[root.resolve().name] = [Normal(root.resolve().name, "test" if i in held else "train", p, n) for i, (p, n) in enumerate(named)]
    if not found:
        raise SageError(
            f"{root}: no normal images found (looked for <category>/train/good/*, train/good/* and "
            f"images directly in the folder; suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    return found


# --------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class SynthOptions:
    kinds: tuple[str, ...] = KINDS
    size: str = "medium"  # a SIZES name or area fractions; see parse_size
    strength: float = 0.7
    per_image: int = 1  # defect images per normal image and kind
    seed: int = 0
    image_size: int | None = None  # longer side in pixels; None keeps the originals' size
    limit: int | None = None  # normal images per category

    def check(self) -> "SynthOptions":
        if not self.kinds:
            raise SageError(f"no defect kinds given; kinds are: {', '.join(KINDS)}")
        for k in self.kinds:
            if k not in KINDS:
                raise SageError(f"unknown defect kind {k!r}{_did_you_mean(k, KINDS)}; kinds are: {', '.join(KINDS)}")
        parse_size(self.size)
        if not (0.0 <= float(self.strength) <= 1.0) or math.isnan(float(self.strength)):
            raise SageError(f"bad --strength {self.strength}: it must be between 0 and 1")
        if self.per_image < 1:
            raise SageError(f"bad --per-image {self.per_image}: it must be at least 1")
        if self.image_size is not None and self.image_size < 32:
            raise SageError(f"bad --image-size {self.image_size}: it must be at least 32 pixels")
        if self.limit is not None and self.limit < 1:
            raise SageError(f"bad --limit {self.limit}: it must be at least 1")
        return self


@dataclass
class SynthResult:
    out: Path
    records: list[dict] = field(default_factory=list)
    written: int = 0  # defect images written this run
    skipped: int = 0  # defect images already present (resumed)
    categories: dict[str, int] = field(default_factory=dict)  # defect images per category


def item_rng(seed: int, category: str, source: str, kind: str, index: int) -> np.random.Generator:
    """The generator for one defect: depends on these values only, never on run order."""
    key = hashlib.sha256(f"{category}\0{source}\0{kind}\0{index}".encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *np.frombuffer(key[:16], dtype=np.uint32).tolist()]))


def _load(path: Path, image_size: int | None) -> np.ndarray:
    from PIL import Image

    im = load_rgb(path)
    if image_size is not None and max(im.size) != image_size:
        w, h = im.size
        sc = image_size / max(w, h)
        im = im.resize((max(1, round(w * sc)), max(1, round(h * sc))), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def write_png(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as PNG atomically with fixed settings."""
    from PIL import Image

    with replacing(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=3, optimize=False)  # fast, ~8% bigger than 6


def _settings(src: Path, opts: SynthOptions) -> dict:
    d = asdict(opts)
    d["kinds"] = list(opts.kinds)
    d["size_range"] = list(parse_size(opts.size))
    return {"format": SYNTH_FORMAT, "from": str(Path(src).resolve()), **d}


def _remove_previous(out: Path) -> None:
    """Delete the files a previous run listed in synth.jsonl (and nothing outside ``out``)."""
    listing = out / "synth.jsonl"
    if not listing.is_file():
        return
    root = out.resolve()
    for line in listing.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        for key in ("image", "mask", "source"):
            rel = rec.get(key)
            if not isinstance(rel, str):
                continue
            p = (root / rel).resolve()
            if root in p.parents and p.is_file():
                p.unlink()
    listing.unlink()


def synthesize(
    src: Path,
    out: Path,
    opts: SynthOptions,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write the synthetic data set for ``src`` into ``out``; see the module docstring.

    Resuming: ``out/synth.json`` holds the settings. A rerun with the same settings skips every
    file already present (files are written atomically, so a present file is complete) and
    rewrites synth.jsonl; different settings are refused unless ``overwrite``, which first deletes
    the files the previous run listed. A non-empty ``out`` without synth.json is refused unless
    ``overwrite``.
    """
    opts.check()
    size_lo, size_hi = parse_size(opts.size)
    normals = find_normals(src, opts.limit)
    out = Path(out)
    settings = _settings(src, opts)
    manifest = out / "synth.json"
    if out.exists() and not out.is_dir():
        raise SageError(f"{out}: exists and is not a folder (--out)")
    if manifest.is_file():
        if other_settings(out, read_manifest(manifest), settings, overwrite):
            _remove_previous(out)
    elif out.is_dir() and any(out.iterdir()) and not overwrite:
        raise SageError(f"{out}: not empty and not a synth output (no synth.json); choose another --out or pass --overwrite")
    write_text(manifest, json.dumps(settings, indent=2, sort_keys=True) + "\n")
    for stale in out.rglob(".*.tmp"):  # left by a run that was killed mid-write
        if stale.is_file():
            stale.unlink()

    result = SynthResult(out=out)
    total = sum(len(v) for v in normals.values()) * len(opts.kinds) * opts.per_image
    done = 0
    for cat, items in normals.items():
        width = max(3, len(str(len(items) * opts.per_image - 1)))
        for si, nm in enumerate(items):
            copy_rel = f"{cat}/{nm.split}/good/{nm.name}.png"
            img = fg = None

            def ensure():
                nonlocal img, fg
                if img is None:
                    img = _load(nm.path, opts.image_size)
                    fg = estimate_foreground(img)

            if overwrite or not (out / copy_rel).is_file():
                ensure()
                write_png(out / copy_rel, img)
            try:
                src_rel = nm.path.resolve().relative_to(Path(src).resolve()).as_posix()
            except ValueError:
                src_rel = str(nm.path)
            for kind in opts.kinds:
                for j in range(opts.per_image):
                    num = f"{si * opts.per_image + j:0{width}d}"
                    img_rel = f"{cat}/test/{kind}/{num}.png"
                    mask_rel = f"{cat}/ground_truth/{kind}/{num}_mask.png"
                    rng = item_rng(opts.seed, cat, f"{nm.split}/{nm.name}", kind, j)
                    target = float(math.exp(rng.uniform(math.log(size_lo), math.log(size_hi))))
                    if not overwrite and (out / img_rel).is_file() and (out / mask_rel).is_file():
                        from PIL import Image

                        with Image.open(out / mask_rel) as m:
                            mask = np.asarray(m.convert("L")) > 0
                        result.skipped += 1
                    else:
                        ensure()
                        dimg, mask = make_defect(img, fg, kind, rng, target, float(opts.strength))
                        write_png(out / mask_rel, (mask * 255).astype(np.uint8))
                        write_png(out / img_rel, dimg)
                        result.written += 1
                    box, where, frac = describe(mask)
                    result.records.append(
                        {
                            "image": img_rel,
                            "mask": mask_rel,
                            "category": cat,
                            "kind": kind,
                            "source": copy_rel,
                            "source_image": src_rel,
                            "seed": opts.seed,
                            "index": j,
                            "size": opts.size,
                            "size_target": round(target, 6),
                            "strength": float(opts.strength),
                            "bbox": list(box) if box else None,
                            "location": where,
                            "area_frac": round(frac, 6),
                        }
                    )
                    result.categories[cat] = result.categories.get(cat, 0) + 1
                    done += 1
                    if progress is not None:
                        progress(done, total)
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in result.records)
    write_text(out / "synth.jsonl", lines)
    return result
