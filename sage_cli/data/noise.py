"""Array primitives for drawing on images: Gaussian blur, shifts, smoothstep, Perlin and fractal noise.

Pure functions of their arguments (noise draws from the numpy Generator it is given, made per item
by :func:`keyed_rng`), shared by the defect generators (data/defects.py) and the procedural normal
images (data/normals.py).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np


def blur(x: np.ndarray, sigma: float) -> np.ndarray:
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


def shift(x: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``x`` moved by (dy, dx) pixels, zeros shifted in."""
    out = np.zeros_like(x)
    h, w = x.shape[:2]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = x[ys, xs]
    return out


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
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


def keyed_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that depends on (seed, key) only: one per generated item, so no result depends on
    which other items a run makes, or in what order."""
    digest = hashlib.sha256(key.encode()).digest()
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()]))
