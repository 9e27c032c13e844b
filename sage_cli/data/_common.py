"""Small pieces every dataset reader shares: checked relative paths, JSON loading, reference choice."""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import Path

from sage_cli.data.paths import inside
from sage_cli.data.problems import Problems
from sage_cli.errors import SageError

_FAILED = object()  # what load_json returns when the file could not be used (the problem is already reported)


def choose_reference(normals: Iterable[str], seed: int, key: str) -> str | None:
    """A normal image for ``key`` (a test image path), the same on every run for the same seed.

    Rendezvous hashing: each candidate gets the score hash(seed, key, candidate) and the highest wins.
    Adding or removing unrelated images changes no choice, and adding a normal image changes only the
    few choices it now wins (about 1/N of them), where "hash mod N" would reshuffle almost all.
    """
    best, best_score = None, b""
    prefix = f"{int(seed)}\0{key}\0".encode()
    for cand in normals:
        score = hashlib.blake2b(prefix + cand.encode(), digest_size=8).digest()
        if best is None or score > best_score or (score == best_score and cand < best):
            best, best_score = cand, score
    return best


def checked_rel(
    root: Path,
    rel: object,
    problems: Problems,
    where: str,
    what: str = "image",
    bases: Sequence[str] = ("",),
    must_exist: bool = True,
) -> str | None:
    """``rel`` as a normalised POSIX path relative to ``root``, or None after reporting why not.

    ``bases`` are folders (relative to root) to try in turn, for formats whose records are relative to
    some sub-folder; the first under which the file exists wins. A path that escapes the root under
    any base is a problem (``../../etc/passwd``, ``/etc/passwd``).
    """
    if not isinstance(rel, str) or not rel.strip():
        problems.report(where, f"{what} path is empty or not a string ({rel!r})")
        return None
    rel = rel.strip().replace("\\", "/")
    tried: list[str] = []
    escaped = False
    for base in bases:
        cand = posixpath.normpath(posixpath.join(base, rel) if base else rel)
        try:
            p = inside(root, cand)
        except SageError:
            escaped = True  # never used; another base may still hold the file inside the root
            continue
        if not must_exist or p.is_file():
            return cand
        tried.append(cand)
    if escaped:
        problems.report(where, f"{what} path {rel!r} escapes the dataset root")
    elif len(tried) == 1:
        problems.report(where, f"{what} {tried[0]} not found")
    else:
        problems.report(where, f"{what} {rel} not found (looked for {', '.join(tried)})")
    return None


def load_json(path: Path, problems: Problems, where: str):
    """Parsed JSON, or ``_FAILED`` after reporting one line naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        problems.report(where, f"cannot read ({e.strerror or e})")
    except UnicodeDecodeError:
        problems.report(where, "not UTF-8 text")
    except json.JSONDecodeError as e:
        problems.report(where, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
    return _FAILED


def failed(value) -> bool:
    return value is _FAILED


def json_records(data, problems: Problems, where: str) -> list[tuple[int, str | None, object]] | None:
    """(index, id-or-None, record) for a JSON file that is a list of records or a dict keyed by id."""
    if isinstance(data, list):
        return [(i, None, r) for i, r in enumerate(data)]
    if isinstance(data, dict):
        values = list(data.values())
        if len(values) == 1 and isinstance(values[0], list):  # {"data": [...]} and the like
            return [(i, None, r) for i, r in enumerate(values[0])]
        return [(i, str(k), r) for i, (k, r) in enumerate(data.items())]
    problems.report(where, f"expected a list of records or an object keyed by id, got {type(data).__name__}")
    return None


def record_where(file_rel: str, index: int, rid: str | None) -> str:
    return f"{file_rel} record {index}" + (f" (id {rid!r})" if rid is not None else "")


def reason(e: SageError, path: Path) -> str:
    """The message of an images.load_* error without its leading ``PATH: `` (the caller names the file)."""
    msg = str(e)
    prefix = f"{path}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header only; SageError naming the file if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise SageError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SageError(f"{path}: unreadable image ({e})") from None


def verify_image(root: Path, rel: str, problems: Problems) -> tuple[int, int] | None:
    """Open an image fully (images.load_rgb): its (width, height), or None after reporting the file."""
    from sage_cli.data.images import load_rgb

    p = root / rel
    try:
        return load_rgb(p).size
    except SageError as e:
        problems.report(rel, reason(e, p))
        return None


def describe_mask(root: Path, image_rel: str, mask_rel: str, problems: Problems, image_known_size=None):
    """(bbox, location, area_frac) of a defect image's mask, or None after reporting a pairing problem.

    Checks: the mask is readable, has the image's size, and is not empty.
    """
    from sage_cli.data.images import load_mask
    from sage_cli.data.masks import describe

    mp = root / mask_rel
    try:
        mask = load_mask(mp)
    except SageError as e:
        problems.report(mask_rel, reason(e, mp))
        return None
    ip = root / image_rel
    if image_known_size is None:
        try:
            image_known_size = image_size(ip)
        except SageError as e:
            problems.report(image_rel, reason(e, ip))
            return None
    h, w = mask.shape
    if (w, h) != tuple(image_known_size):
        iw, ih = image_known_size
        problems.report(mask_rel, f"mask is {w}x{h} but its image {image_rel} is {iw}x{ih}")
        return None
    box, location, area = describe(mask)
    if box is None:
        problems.report(mask_rel, f"mask of defect image {image_rel} is empty (no defect pixels)")
        return None
    return box, location, area
