"""Synthetic defects on normal images, with exact masks (in the spirit of DRAEM, NSA, CutPaste).

Each generator takes a normal image ``img`` [H, W, 3] uint8, its foreground ``fg`` [H, W] bool, a
numpy Generator, a target ``size`` (fraction of the image area the defect spans: for blobs the area
they cover, for lines the square of their length over ~6) and a ``strength`` in 0..1, and returns
``(delta, soften)``: the change it draws, float [H, W, 3], and how much to soften it relative to the
photo's own blur. :func:`make_defect` applies that change with :func:`compose`, which returns the
defective image and a bool mask that is True exactly where it differs from ``img`` in any channel.
Defects stay on the object: every change is multiplied by a softened ``fg`` and the mask is cut to
``fg``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from sage_cli.data.foreground import estimate_blur, fill_holes
from sage_cli.data.noise import blur, fractal, shift
from sage_cli.data.shapes import blob, line_through, pick_center, profile, stroke, walk, window
from sage_cli.errors import SageError, did_you_mean

KINDS = ("scratch", "crack", "stain", "hole", "contamination", "cutpaste")

_MIN_STEP = 2.0  # a pixel is part of the defect when some channel moves by at least this much


# --------------------------------------------------------------------------- applying a change


def _light(rng: np.random.Generator) -> np.ndarray:
    """Unit (x, y) vector pointing towards the light: upper left, give or take."""
    a = -0.75 * np.pi + rng.normal(0, 0.35)
    return np.array([math.cos(a), math.sin(a)])


def _contrast(strength: float) -> float:
    """--strength 0..1 as a contrast factor 0.1..1 (0 is faint but still there)."""
    return 0.1 + 0.9 * float(strength)


def _scale(img: np.ndarray) -> float:
    return min(img.shape[:2]) / 256.0


def compose(
    img: np.ndarray, delta: np.ndarray, fg: np.ndarray, soften: float = 0.8, photo_blur: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a float change [H, W, 3] on the object; return (out, mask) with mask == (out != img).

    The change is first blurred by ``soften`` times the photo's own blur (a drawn line must not be
    sharper than the picture it is on; 0 leaves it as it is); ``photo_blur`` is that blur when the
    caller has it already (foreground.estimate_blur of ``img`` and ``fg``). The change fades over a
    pixel at the object's edge and stops there. Pixels whose largest channel change is under
    ``_MIN_STEP`` are left alone; holes inside the changed region are filled, and any masked pixel
    that rounding or clipping left unchanged is moved by one level, so the mask is exactly the set
    of changed pixels.
    """
    h, w = fg.shape
    nz = np.nonzero(np.abs(delta).max(axis=-1) > 0)
    if len(nz[0]) == 0:
        return img.copy(), np.zeros((h, w), dtype=bool)
    if soften > 0 and photo_blur is None:
        photo_blur = estimate_blur(img, fg)
    sigma = soften * photo_blur if soften > 0 else 0.0
    # Work inside the changed box, grown by what the blurs can reach.
    m = int(math.ceil(3 * max(sigma, 0.8 * max(_scale(img), 1.0)))) + 2
    ys = slice(max(0, nz[0].min() - m), min(h, nz[0].max() + m + 1))
    xs = slice(max(0, nz[1].min() - m), min(w, nz[1].max() + m + 1))
    d = delta[ys, xs].astype(np.float64, copy=True)
    if sigma >= 0.3:
        for c in range(3):
            d[..., c] = blur(d[..., c], sigma)
    fgw = fg[ys, xs]
    d *= (blur(fgw.astype(np.float64), 0.8 * max(_scale(img), 1.0)) * fgw)[..., None]
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
    center = pick_center(fg, rng, length * 0.12)
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
        pts = line_through(c, angle + rng.normal(0, 0.04), ln, step, rng, fg, turn=0.02, bend=bend)
        if len(pts) < 2:
            continue
        wid = rng.uniform(1.0, 2.0) * max(s, 0.6) * (1.0 if i == 0 else 0.7)
        widths = wid * profile(len(pts), rng, lo=0.35)
        core = np.maximum(core, stroke((h, w), pts, widths, profile(len(pts), rng, lo=0.35)))
    light = _light(rng)
    sh = max(1, int(round(s)))
    shadow = np.clip(shift(core, int(round(-light[1] * sh)), int(round(-light[0] * sh))) - core, 0, 1)
    # On a bright surface a lighter line hardly shows: scratches there are mostly dark grooves.
    lum = float(f[fg].mean()) if fg.any() else float(f.mean())
    if rng.random() < np.clip((190 - lum) / 120, 0.15, 0.85):  # abraded: lighter, darker groove wall
        lift = (np.minimum(255, f * 1.2 + 80) - f) * (0.9 * k)
        delta = lift * core[..., None] - f * (0.35 * k) * shadow[..., None]
    else:  # a dark groove with a bright lip
        delta = -f * (0.55 * k) * core[..., None] + (255 - f) * (0.35 * k) * shadow[..., None]
    return delta, 0.45


def crack(img, fg, rng, size, strength):
    """A dark jagged line with branches, widest in the middle, a shaded halo and a lit edge."""
    h, w = fg.shape
    s = _scale(img)
    f = img.astype(np.float64)
    k = _contrast(strength)
    length = 2.3 * math.sqrt(size * h * w)
    center = pick_center(fg, rng, length * 0.15)
    angle = rng.uniform(0, 2 * np.pi)
    step = max(2.0, 3.0 * s)
    # Zig-zag on a steady course: each segment deviates afresh, the course bends only slowly.
    jag = dict(turn=0.5, revert=0.75, jitter=0.5)
    main = line_through(center, angle, length, step, rng, fg, bend=rng.normal(0, 0.015), **jag)
    wmax = rng.uniform(1.3, 2.4) * max(s, 0.6)
    t = np.linspace(0, 1, len(main))
    widths = wmax * (0.2 + 0.8 * np.sin(np.pi * t) ** 0.7) * rng.uniform(0.75, 1.2, len(main))
    core = stroke((h, w), main, widths)
    for _ in range(int(rng.integers(1, 4))):
        if len(main) < 6:
            break
        i = int(rng.integers(len(main) // 6, len(main) - len(main) // 6))
        d = main[min(i + 1, len(main) - 1)] - main[max(i - 1, 0)]
        a0 = math.atan2(d[1], d[0]) + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
        br = walk(tuple(main[i]), a0, max(2, int(length * rng.uniform(0.12, 0.35) / step)), step, rng,
                   fg=fg, **jag)
        if len(br) < 2:
            continue
        bw = widths[i] * 0.65 * np.linspace(1, 0.3, len(br))
        core = np.maximum(core, stroke((h, w), br, bw))
    halo = np.clip(blur(core, 1.3 * max(s, 0.7)) * 1.6, 0, 1) * (1 - core)
    light = _light(rng)
    sh = max(1, int(round(s)))
    lip = np.clip(shift(core, int(round(light[1] * sh)), int(round(light[0] * sh))) - core, 0, 1) * (1 - halo * 0.5)
    dark = 0.3 + 0.55 * k  # fraction of brightness lost in the gap
    tint = np.array([1.0, 0.82, 0.64])  # dark brown, not black
    gap = f * (1 - dark) * tint - f
    delta = gap * core[..., None] - f * (0.18 * k) * halo[..., None] + (255 - f) * (0.18 * k) * lip[..., None]
    return delta, 0.55


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
    center = pick_center(fg, rng, math.sqrt(area / math.pi) * 0.7)
    alpha = blob(fg, rng, center, area, rough=0.6, soft=0.8, aspect=rng.uniform(0.5, 1.0))
    ys, xs = window((h, w), center, math.sqrt(area / math.pi) * 3 + 4)
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
    return delta, 0.8


def hole(img, fg, rng, size, strength):
    """A missing piece: a dark cavity shaded like a bowl, with a lit rim on the light side."""
    h, w = fg.shape
    s = _scale(img)
    f = img.astype(np.float64)
    k = _contrast(strength)
    area = size * h * w
    radius = math.sqrt(area / math.pi)
    center = pick_center(fg, rng, radius * 1.3)
    a = blob(fg, rng, center, area, rough=0.3, soft=0.12, aspect=rng.uniform(0.55, 1.0))
    ys, xs = window((h, w), center, radius * 3 + 6)
    sub = a[ys, xs]
    depth = blur(sub, max(radius * 0.3, 0.8))
    depth = depth / max(depth.max(), 1e-6)
    gy, gx = np.gradient(depth)
    light = _light(rng)
    g = np.maximum(np.sqrt(gx * gx + gy * gy).max(), 1e-6)
    shade = (gx * light[0] + gy * light[1]) / g  # > 0: far inner wall, facing the light
    lit = np.maximum(shade, 0) ** 0.6
    # The near wall shades the floor next to it: the cavity, moved towards the light, stays dark.
    sh = max(1, int(round(radius * 0.35)))
    cast = np.clip(sub - shift(sub, int(round(-light[1] * sh)), int(round(-light[0] * sh))), 0, 1)
    cast = blur(cast, max(radius * 0.15, 0.7))  # 1 where the floor lies in the near wall's shadow
    fs = f[ys, xs]
    mean = fs[sub > 0.5].mean(axis=0) if (sub > 0.5).any() else fs.reshape(-1, 3).mean(axis=0)
    base = mean * (0.3 + 0.3 * (1 - k)) * np.array([0.95, 0.8, 0.62])
    tex = 0.8 + 0.4 * fractal(sub.shape, rng, max(sub.shape) / max(radius * 0.35, 2), octaves=3)
    light_f = (1 + 1.8 * lit) * (1 - 0.55 * np.maximum(-shade, 0)) * (1 - 0.3 * depth) * (1 - 0.5 * cast)
    cav = base * (light_f * tex)[..., None]
    # Rim: a band just outside the cut, lit where it faces the light, darker where it faces away.
    outer = blur(sub, 1.0 * max(s, 0.8) + radius * 0.1)
    band = np.clip(outer - sub, 0, 1)
    band = band / max(band.max(), 1e-6)
    ogy, ogx = np.gradient(outer)
    on = np.maximum(np.sqrt(ogx * ogx + ogy * ogy), 1e-6)
    facing = -(ogx * light[0] + ogy * light[1]) / on  # outward normal . light
    fc = facing[..., None]
    rim = (np.maximum(fc, 0) * (255 - fs) * 0.3 - np.maximum(-fc, 0) * fs * 0.2 - fs * 0.08) * k
    delta = np.zeros_like(f)
    delta[ys, xs] = (cav - fs) * sub[..., None] + rim * (band * (1 - sub))[..., None]
    return delta, 0.6


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
        center = pick_center(fg, rng, length * 0.1)
        step = max(1.0, 1.5 * s)
        pts = line_through(center, rng.uniform(0, 2 * np.pi), length, step, rng, fg, turn=0.13, bend=rng.normal(0, 0.05))
        widths = rng.uniform(0.8, 1.4) * max(s, 0.6) * profile(len(pts), rng, lo=0.6)
        core = stroke((h, w), pts, widths)
        var = 0.85 + 0.3 * profile(len(pts), rng, lo=0.0)
        shade = stroke((h, w), pts, widths, var) / np.maximum(core, 1e-6)
        sh = max(1, int(round(1.5 * s)))
        shadow = np.clip(shift(core, int(round(-light[1] * sh)), int(round(-light[0] * sh))) - core, 0, 1)
        target = np.clip(col * np.clip(shade, 0.7, 1.3)[..., None], 0, 255)
        delta = (target - f) * (opacity * core)[..., None] - f * (0.25 * k) * shadow[..., None]
        return delta, 0.8
    # particle, sometimes with a few crumbs around it
    area = size * h * w
    radius = math.sqrt(area / math.pi)
    center = pick_center(fg, rng, radius)
    a = blob(fg, rng, center, area * 0.8, rough=0.6, soft=0.08, aspect=rng.uniform(0.5, 1.0))
    for _ in range(int(rng.integers(0, 4))):
        off = rng.normal(0, radius * 1.3, 2)
        c = (int(np.clip(center[0] + off[0], 0, h - 1)), int(np.clip(center[1] + off[1], 0, w - 1)))
        if fg[c]:
            a = np.maximum(a, blob(fg, rng, c, max(area * rng.uniform(0.03, 0.1), 3), rough=0.5, soft=0.1))
    ys, xs = window((h, w), center, radius * 4 + 6)
    sub = a[ys, xs]
    height = blur(sub, max(radius * 0.25, 0.7))
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
    drop = np.clip(shift(blur(sub, max(radius * 0.25, 0.8)), int(round(-light[1] * off)), int(round(-light[0] * off))) - sub, 0, 1)
    fs = f[ys, xs]
    delta = np.zeros_like(f)
    delta[ys, xs] = (target - fs) * (opacity * sub)[..., None] - fs * (0.45 * k) * drop[..., None]
    return delta, 0.8


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
    dst = pick_center(fg, rng, radius)
    a = blob(fg, rng, dst, area, rough=0.3, soft=0.2, aspect=rng.uniform(0.3, 1.0))
    ys, xs = window((h, w), dst, radius * 3.5 + 4)
    yy, xx = np.mgrid[ys, xs]
    best, best_score = None, -1.0
    sel = a[ys, xs] > 0.5
    for _ in range(6):
        src = pick_center(fg, rng, radius * 1.2)
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
    return delta, 0  # the patch is already as sharp as the photo


GENERATORS: dict[str, Callable[..., tuple[np.ndarray, float]]] = {  # kind -> generator
    "scratch": scratch,
    "crack": crack,
    "stain": stain,
    "hole": hole,
    "contamination": contamination,
    "cutpaste": cutpaste,
}


def make_defect(
    img: np.ndarray,
    fg: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    size: float,
    strength: float,
    photo_blur: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One defect of ``kind`` on ``img``: (out, mask), mask == (out != img).any(-1), mask inside ``fg``.

    ``photo_blur``: foreground.estimate_blur(img, fg), when the caller keeps it for many defects on
    one image; otherwise it is estimated here.
    """
    if kind not in GENERATORS:
        raise SageError(f"unknown defect kind {kind!r}{did_you_mean(kind, KINDS)}")
    fg_frac = float(fg.mean())
    size = min(size, 0.35 * fg_frac)  # the defect has to fit on the object
    min_px = max(4, int(0.15 * size * fg.size))
    if photo_blur is None:
        photo_blur = estimate_blur(img, fg)
    for _ in range(8):
        delta, soften = GENERATORS[kind](img, fg, rng, size, strength)
        out, mask = compose(img, delta, fg, soften, photo_blur)
        if mask.sum() >= min_px:
            return out, mask
    if mask.any():
        return out, mask
    raise SageError(f"could not place a {kind} on the object (is it too small at this image size?)")
