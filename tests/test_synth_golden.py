"""Exact outputs for a seed: `sage data synth` and `sage data normals` must keep producing the same pixels.

The digests were recorded before synth.py was split into noise / defects / writer modules; a change
in them means the generators' output changed (then bump SYNTH_FORMAT / NORMALS_FORMAT and re-record).
Pixels are hashed after decoding, so a different zlib (PNG compression) does not count as a change.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from sage_cli.data import normals as N
from sage_cli.data.synth import KINDS, SynthOptions, synthesize

SYNTH_DIGEST = "626004a004c891de8568cc28c99f5c2782cd79abdfb8890ef1965f8471fe617b"
NORMALS_DIGEST = "493bf8e45716315155022983ad15d4478a67a9542b2e81bae6793db4b4649dc5"


def _object(rng: np.random.Generator, side: int = 80) -> np.ndarray:
    """A shaded, noisy pale ellipse on a yellow background."""
    yy, xx = np.mgrid[0:side, 0:side] / side
    cy, cx = 0.5 + rng.uniform(-0.05, 0.05, 2)
    obj = ((yy - cy) / 0.3) ** 2 + ((xx - cx) / 0.36) ** 2 <= 1
    img = np.empty((side, side, 3))
    img[:] = (225, 212, 70)
    img[obj] = np.array([205, 185, 140]) * (1 - 0.25 * (yy - cy + xx - cx))[obj][:, None]
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _digest(root: Path) -> str:
    """sha256 over every file: decoded pixels for PNGs, bytes for the rest (minus synth.json's absolute path)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.name == "synth.json":
            continue
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        if p.suffix == ".png":
            with Image.open(p) as im:
                a = np.asarray(im)
            h.update(f"{a.shape}{a.dtype}".encode() + a.tobytes())
        else:
            h.update(p.read_bytes())
    return h.hexdigest()


def synth_digest(tmp: Path) -> str:
    rng = np.random.default_rng(123)
    for split, i in (("train", 0), ("train", 1), ("test", 0)):
        path = tmp / "src" / "widget" / split / "good" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_object(rng)).save(path)
    synthesize(tmp / "src", tmp / "synth", SynthOptions(kinds=KINDS, seed=11, per_image=2, size="0.004-0.03"))
    return _digest(tmp / "synth")


def normals_digest(tmp: Path) -> str:
    N.write_normals(tmp / "normals", N.NormalsOptions(categories=N.PROCEDURAL, count=1, test_count=1, image_size=48, seed=3))
    return _digest(tmp / "normals")


def test_synth_output_for_a_seed_is_unchanged(tmp_path):
    assert synth_digest(tmp_path) == SYNTH_DIGEST


def test_normals_output_for_a_seed_is_unchanged(tmp_path):
    assert normals_digest(tmp_path) == NORMALS_DIGEST
