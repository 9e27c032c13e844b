"""Image bytes from a request -> RGB PIL images, refusing decompression bombs before decoding."""

from __future__ import annotations

import io

from sage_cli.serve.protocol import ApiError, Limits

# The formats `sage infer` reads; other PIL decoders (EPS, PSD, ...) are no input for an inspection model.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")


def open_image(data: bytes, limits: Limits, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            # The header gives the size: a small file may still decode into gigabytes.
            w, h = im.size
            if w * h > limits.max_image_pixels:
                raise ApiError(413, f"{where}: the image is {w}x{h} pixels, more than {limits.max_image_pixels:,} "
                               "(--max-image-pixels)", where, "request_too_large")
            im.load()
            return im.convert("RGB")
    except Image.DecompressionBombError:
        raise ApiError(413, f"{where}: the image has too many pixels", where, "request_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise ApiError(400, f"{where}: not a readable image (PNG, JPEG, BMP, TIFF or WebP)", where,
                       "invalid_image") from None


def open_pair(images: list[bytes], limits: Limits) -> tuple:
    """The test image and the reference (or None); a reference must have the test image's size, as in `sage infer`."""
    if not images:
        return None, None
    test = open_image(images[0], limits, "test image (first image_url)")
    ref = open_image(images[1], limits, "reference image (second image_url)") if len(images) > 1 else None
    if ref is not None and ref.size != test.size:
        raise ApiError(400, f"the reference is {ref.size[0]}x{ref.size[1]} but the test image is "
                       f"{test.size[0]}x{test.size[1]}; send a reference taken like the test image",
                       "messages", "invalid_image")
    return test, ref
