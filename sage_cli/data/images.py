"""Reading images safely: every failure is one line naming the file."""

from __future__ import annotations

from pathlib import Path

from sage_cli.errors import SageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def load_rgb(path: Path):
    """Open an image fully (so truncated files fail here, not later) and return it as RGB PIL.

    16-bit and float images (industrial cameras write them) are scaled to 8 bits first: PIL's own
    conversion would clip them to white.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return _to_8bit(im).convert("RGB")
    except FileNotFoundError:
        raise SageError(f"{path}: image not found") from None
    except Image.DecompressionBombError as e:
        raise SageError(f"{path}: refused, too many pixels ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SageError(f"{path}: unreadable or truncated image ({e})") from None


def _to_8bit(im):
    """Single-channel 16/32-bit integer or float images -> mode L, keeping their contrast."""
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    import numpy as np
    from PIL import Image

    a = np.asarray(im, dtype=np.float32)
    if im.mode == "F" and a.size and a.max() <= 1.0:
        a = a * 255.0  # floats in 0..1
    elif a.size and a.max() > 255:
        a = a / (257.0 if a.max() <= 65535 else a.max() / 255.0)  # 16-bit range, or wider: to 0..255
    return Image.fromarray(np.clip(a, 0, 255).round().astype(np.uint8), mode="L")


def load_mask(path: Path):
    """A defect mask as a bool array [H, W] (any non-zero pixel is defect)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("L")) > 0
    except FileNotFoundError:
        raise SageError(f"{path}: mask not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SageError(f"{path}: unreadable or truncated mask ({e})") from None
