"""Reading images safely: every failure is one line naming the file."""

from __future__ import annotations

from pathlib import Path

from sage_cli.errors import SageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def load_rgb(path: Path):
    """Open an image fully (so truncated files fail here, not later) and return it as RGB PIL."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise SageError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SageError(f"{path}: unreadable or truncated image ({e})") from None


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
