"""Where a synthetic defect goes and what outline it has: a spot on the object, irregular blobs,
random paths and antialiased strokes along them.

Building blocks of the generators in data/defects.py; every random choice comes from the numpy
Generator passed in, so a defect depends on its seed only.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from sage_cli.data.foreground import erode
from sage_cli.data.noise import fractal, smoothstep
from sage_cli.errors import SageError


def pick_center(fg: np.ndarray, rng: np.random.Generator, radius: float) -> tuple[int, int]:
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


def window(shape: tuple[int, int], c: tuple[int, int], r: float) -> tuple[slice, slice]:
    h, w = shape
    r = int(math.ceil(r))
    return slice(max(0, c[0] - r), min(h, c[0] + r + 1)), slice(max(0, c[1] - r), min(w, c[1] + r + 1))


def blob(
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
    ys, xs = window((h, w), center, radius * 2.4 / max(aspect, 0.2) + 4)
    wy, wx = ys.stop - ys.start, xs.stop - xs.start
    yy, xx = np.mgrid[ys, xs]
    dy, dx = yy - center[0], xx - center[1]
    th = rng.uniform(0, np.pi)
    a = (dx * np.cos(th) + dy * np.sin(th)) * math.sqrt(aspect)
    b = (-dx * np.sin(th) + dy * np.cos(th)) / math.sqrt(aspect)
    rr = np.sqrt(a * a + b * b) / max(radius, 1.0)
    cells = max(wy, wx) / max(radius * 1.1, 2.0)
    level = 1 - rr + rough * fractal((wy, wx), rng, cells, octaves=3)
    inside = fg[ys, xs]
    vals = np.sort(level[inside])[::-1]
    if len(vals) == 0:
        return np.zeros((h, w))
    k = int(np.clip(round(area_px), 1, len(vals)))
    t = vals[k - 1]
    soft = min(soft, max((vals[0] - t) / 0.65 * 0.8, 0.02))  # the core always reaches full strength
    out = np.zeros((h, w))
    out[ys, xs] = smoothstep(t - soft * 0.35, t + soft * 0.65, level)
    return out


def stroke(shape: tuple[int, int], pts: np.ndarray, widths: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
    """Antialiased polyline [H, W] in 0..1 through ``pts`` (N, 2) as (x, y), width per vertex."""
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


def walk(
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


def line_through(center, angle, length, step, rng, fg, **kw) -> np.ndarray:
    """A path through ``center`` grown both ways, about ``length`` long, inside ``fg``."""
    n = max(2, int(length / step / 2))
    c = (float(center[1]), float(center[0]))
    a = walk(c, angle, n, step, rng, fg=fg, **kw)
    b = walk(c, angle + np.pi, n, step, rng, fg=fg, **kw)
    return np.concatenate([b[::-1], a[1:]])


def profile(n: int, rng: np.random.Generator, lo: float = 0.3) -> np.ndarray:
    """A smooth random 1-D profile in [lo, 1] along a path of n points, tapering at both ends."""
    t = np.linspace(0, 1, n)
    knots = rng.uniform(0.55, 1.0, 6)
    wobble = np.interp(t, np.linspace(0, 1, 6), knots)
    taper = np.sin(np.pi * np.clip(t, 0, 1)) ** 0.5 if n > 2 else np.ones(n)
    return lo + (1 - lo) * wobble * np.maximum(taper, 0.15)
