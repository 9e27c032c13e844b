"""The anomaly map drawn on the test image: a colour overlay plus outlines of the K patches SAGE reads."""

from __future__ import annotations

from pathlib import Path

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # suffix -> what `save` writes


def check_suffix(path: str | Path) -> str:
    """The format a heatmap path's suffix picks; SageError (one line) for any other suffix."""
    from sage_cli.errors import SageError

    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise SageError(f"{path}: the heatmap must be .png, .jpg or .webp")
    return fmt


# Anchors of a dark-to-bright colour ramp (black, purple, red, orange, pale yellow): low = normal.
_RAMP = ((0.0, (0, 0, 4)), (0.25, (87, 16, 110)), (0.5, (188, 55, 84)), (0.75, (249, 142, 9)),
         (1.0, (252, 255, 164)))


def colourise(values):
    """[h, w] floats in 0..1 -> [h, w, 3] uint8 along the ramp."""
    import numpy as np

    xs = np.array([a for a, _ in _RAMP])
    cols = np.array([c for _, c in _RAMP], dtype=np.float32)  # [5, 3]
    v = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.interp(v, xs, cols[:, c]) for c in range(3)], axis=-1)
    return rgb.astype(np.uint8)


def render(image, amap, selected: list[int], grid: tuple[int, int], alpha: float = 0.75):
    """Overlay `amap` [h, w] (higher = more anomalous) on a PIL `image`, outline the `selected` patch indices.

    The map is min-max scaled for display; the patch grid covers the whole image (the backbone
    stretches images to its input size), so each patch maps to an image rectangle.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    img = image.convert("RGB")
    w, h = img.size
    a = np.asarray(amap, dtype=np.float32)
    span = float(a.max() - a.min())
    a = (a - a.min()) / span if span > 0 else np.zeros_like(a)
    small = Image.fromarray((a * 255).astype(np.uint8), mode="L")
    smooth = np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0  # [H, W]
    over = np.asarray(colourise(smooth), dtype=np.float32)  # [H, W, 3]
    # Opacity follows the map, so normal regions keep the photo as it is and hot spots stand out.
    a_px = (alpha * smooth)[..., None]  # [H, W, 1]
    mixed = (1 - a_px) * np.asarray(img, dtype=np.float32) + a_px * over
    out = Image.fromarray(mixed.round().astype(np.uint8))
    draw = ImageDraw.Draw(out)
    gh, gw = grid
    line = max(1, round(min(w, h) / 200))
    for i in selected:
        r, c = divmod(int(i), gw)
        box = (c * w / gw, r * h / gh, (c + 1) * w / gw - 1, (r + 1) * h / gh - 1)
        draw.rectangle(box, outline=(0, 255, 255), width=line)
    return out


def save(image, path: str | Path) -> Path:
    """Write a PIL image atomically; the suffix picks the format (PNG recommended)."""
    from sage_cli.atomic import replacing
    from sage_cli.errors import SageError

    path = Path(path)
    fmt = check_suffix(path)
    try:
        with replacing(path) as tmp:
            image.save(tmp, format=fmt)
    except OSError as e:
        raise SageError(f"{path}: cannot write the heatmap ({e.strerror or e})") from None
    return path


def render_map(image, amap, alpha: float = 0.75):
    """`render` for an engine.AnomalyMap (map [h, w], selected patches, grid)."""
    import numpy as np

    return render(image, np.asarray(amap.map, dtype=np.float32), amap.selected, tuple(amap.grid), alpha)
