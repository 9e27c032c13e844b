"""``sage data synth``: an MVTec-layout data set of synthetic defects made on normal images.

:func:`synthesize` finds the normal images under ``--from`` (:func:`find_normals`), copies them to
``<category>/train/good`` (held-out ones to ``test/good``) and draws defects on them
(data/defects.py): ``test/<kind>/NNN.png`` with its exact mask ``ground_truth/<kind>/NNN_mask.png``.
``synth.json`` holds the settings (the folder's manifest, see runfolder.py) and ``synth.jsonl`` one
line per defect image. Every defect has its own random generator (:func:`item_rng`), so the same
seed gives the same bytes whatever else the run makes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from sage_cli import runfolder
from sage_cli.atomic import replacing, write_text
from sage_cli.data.defects import KINDS, make_defect
from sage_cli.data.defects import compose as _compose  # noqa: F401  (tests/test_synth.py imports it from here)
from sage_cli.data.foreground import estimate_blur, estimate_foreground
from sage_cli.data.images import IMAGE_SUFFIXES, load_rgb
from sage_cli.data.masks import describe
from sage_cli.data.noise import keyed_rng
from sage_cli.errors import SageError, did_you_mean

# Area fraction of the image a defect spans, sampled log-uniformly in the range.
SIZES = {"small": (0.002, 0.006), "medium": (0.006, 0.02), "large": (0.02, 0.06)}
SYNTH_FORMAT = "sage-synth/1"  # written into synth.json; bump when the generators change output
MANIFEST, LISTING = "synth.json", "synth.jsonl"


# --------------------------------------------------------------------------- options


def _unknown_kind(kind: str) -> SageError:
    return SageError(f"unknown defect kind {kind!r}{did_you_mean(kind, KINDS)}; kinds are: {', '.join(KINDS)}")


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
            raise _unknown_kind(k)
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
            f"bad --size {text!r}{did_you_mean(t, SIZES)}: use small, medium, large, "
            "an area fraction like 0.01 or a range like 0.005-0.02"
        )
    lo, hi = vals[0], vals[-1]
    if not (0 < lo <= hi <= 0.5):
        raise SageError(f"bad --size {text!r}: area fractions must satisfy 0 < low <= high <= 0.5")
    return lo, hi


@dataclass(frozen=True)
class SynthOptions:
    kinds: tuple[str, ...] = KINDS
    size: str = "medium"  # a SIZES name or area fractions; see parse_size
    strength: float = 0.7
    per_image: int = 1  # defect images per normal image and kind
    seed: int = 0
    image_size: int | None = None  # longer side in pixels; None keeps the originals' size
    limit: int | None = None  # normal images per category

    def check(self) -> SynthOptions:
        if not self.kinds:
            raise SageError(f"no defect kinds given; kinds are: {', '.join(KINDS)}")
        for k in self.kinds:
            if k not in KINDS:
                raise _unknown_kind(k)
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


# --------------------------------------------------------------------------- inputs


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


def _plain_folder(root: Path, limit: int | None) -> list[Normal]:
    """A folder of images as one category, every fifth image held out for test/good."""
    imgs = _images_in(root)
    if limit is not None:
        imgs = imgs[:limit]
    named = _named(imgs)
    held = {i for i in range(len(named)) if i % 5 == 4} if len(named) >= 5 else ({len(named) - 1} if len(named) >= 2 else set())
    name = root.resolve().name
    return [Normal(name, "test" if i in held else "train", p, n) for i, (p, n) in enumerate(named)]


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
    if (root / "train" / "good").is_dir():
        cats = [(root.resolve().name, root)]
    else:
        cats = [(d.name, d) for d in sorted(root.iterdir()) if d.is_dir() and (d / "train" / "good").is_dir()]
    found: dict[str, list[Normal]] = {}
    for name, d in cats:
        train, test = _split_limit(_images_in(d / "train" / "good"), _images_in(d / "test" / "good"), limit)
        items = [Normal(name, "train", p, n) for p, n in _named(train)]
        items += [Normal(name, "test", p, n) for p, n in _named(test)]
        if items:
            found[name] = items
    if not cats:
        items = _plain_folder(root, limit)
        if items:
            found[items[0].category] = items
    if not found:
        raise SageError(
            f"{root}: no normal images found (looked for <category>/train/good/*, train/good/* and "
            f"images directly in the folder; suffixes {', '.join(IMAGE_SUFFIXES)})"
        )
    return found


def _load(path: Path, image_size: int | None) -> np.ndarray:
    im = load_rgb(path)
    if image_size is not None and max(im.size) != image_size:
        w, h = im.size
        sc = image_size / max(w, h)
        im = im.resize((max(1, round(w * sc)), max(1, round(h * sc))), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


@dataclass
class _Source:
    """One normal image and what every defect drawn on it shares. The pixels are loaded, and their
    foreground and blur estimated, once and only when a file must be drawn (a resumed run reads
    nothing it skips); the writer drops it when it moves on to the next image."""

    normal: Normal
    copy_rel: str  # its copy in OUT
    source_rel: str  # where it came from: relative to --from, or the path as found
    image_size: int | None

    @cached_property
    def img(self) -> np.ndarray:
        return _load(self.normal.path, self.image_size)

    @cached_property
    def fg(self) -> np.ndarray:
        return estimate_foreground(self.img)

    @cached_property
    def blur(self) -> float:
        return estimate_blur(self.img, self.fg)


# --------------------------------------------------------------------------- the writer


@dataclass
class SynthResult:
    out: Path
    records: list[dict] = field(default_factory=list)
    written: int = 0  # defect images written this run
    skipped: int = 0  # defect images already present (resumed)
    categories: dict[str, int] = field(default_factory=dict)  # defect images per category


def item_rng(seed: int, category: str, source: str, kind: str, index: int) -> np.random.Generator:
    """The generator for one defect: depends on these values only, never on run order."""
    return keyed_rng(seed, f"{category}\0{source}\0{kind}\0{index}")


def write_png(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as PNG atomically with fixed settings."""
    with replacing(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=3, optimize=False)  # fast, ~8% bigger than 6


def _settings(src: Path, opts: SynthOptions) -> dict:
    d = asdict(opts)
    d["kinds"] = list(opts.kinds)
    d["size_range"] = list(parse_size(opts.size))
    return {"format": SYNTH_FORMAT, "from": str(Path(src).resolve()), **d}


def _prepare(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse an OUT that holds something else; with ``overwrite``, first delete what an earlier run
    with other settings listed (nothing else), then record the new settings."""
    found = runfolder.check(out, MANIFEST, settings, overwrite=overwrite, what="synth output")
    listing = out / LISTING
    if found.changed and listing.is_file():
        rels = []
        for line in listing.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            rels += [rec.get(key) for key in ("image", "mask", "source")] if isinstance(rec, dict) else []
        runfolder.remove_files(out, rels)
        listing.unlink()
    runfolder.write_manifest(out / MANIFEST, settings, sort_keys=True)
    runfolder.sweep_temporaries(out)


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as m:
        return np.asarray(m.convert("L")) > 0


def _defect(out: Path, src: _Source, kind: str, j: int, num: str, opts: SynthOptions, overwrite: bool) -> tuple[dict, bool]:
    """Draw (or, resuming, find) defect ``j`` of ``kind`` on ``src``: its synth.jsonl record, and
    whether it was written now."""
    nm = src.normal
    img_rel = f"{nm.category}/test/{kind}/{num}.png"
    mask_rel = f"{nm.category}/ground_truth/{kind}/{num}_mask.png"
    rng = item_rng(opts.seed, nm.category, f"{nm.split}/{nm.name}", kind, j)
    lo, hi = parse_size(opts.size)
    target = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    written = overwrite or not ((out / img_rel).is_file() and (out / mask_rel).is_file())
    if written:
        dimg, mask = make_defect(src.img, src.fg, kind, rng, target, float(opts.strength), src.blur)
        write_png(out / mask_rel, (mask * 255).astype(np.uint8))
        write_png(out / img_rel, dimg)
    else:
        mask = _read_mask(out / mask_rel)
    box, where, frac = describe(mask)
    record = {
        "image": img_rel, "mask": mask_rel, "category": nm.category, "kind": kind, "source": src.copy_rel,
        "source_image": src.source_rel, "seed": opts.seed, "index": j, "size": opts.size,
        "size_target": round(target, 6), "strength": float(opts.strength), "bbox": list(box) if box else None,
        "location": where, "area_frac": round(frac, 6),
    }
    return record, written


def _sources(src: Path, items: list[Normal], image_size: int | None):
    for nm in items:
        try:
            rel = nm.path.resolve().relative_to(Path(src).resolve()).as_posix()
        except ValueError:
            rel = str(nm.path)
        yield _Source(nm, f"{nm.category}/{nm.split}/good/{nm.name}.png", rel, image_size)


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
    normals = find_normals(src, opts.limit)
    out = Path(out)
    _prepare(out, _settings(src, opts), overwrite)
    result = SynthResult(out=out)
    total = sum(len(v) for v in normals.values()) * len(opts.kinds) * opts.per_image
    for cat, items in normals.items():
        width = max(3, len(str(len(items) * opts.per_image - 1)))
        for si, source in enumerate(_sources(src, items, opts.image_size)):
            if overwrite or not (out / source.copy_rel).is_file():
                write_png(out / source.copy_rel, source.img)
            for kind in opts.kinds:
                for j in range(opts.per_image):
                    record, written = _defect(out, source, kind, j, f"{si * opts.per_image + j:0{width}d}", opts, overwrite)
                    result.records.append(record)
                    result.written += written
                    result.skipped += not written
                    result.categories[cat] = result.categories.get(cat, 0) + 1
                    if progress is not None:
                        progress(len(result.records), total)
    write_text(out / LISTING, "".join(json.dumps(r, sort_keys=True) + "\n" for r in result.records))
    return result
