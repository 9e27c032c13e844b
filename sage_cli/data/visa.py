"""VisA (Visual Anomaly): 12 objects, images listed in ``split_csv/1cls.csv``.

Licence: CC BY 4.0 (the data; the spot-diff code is Apache-2.0), https://github.com/amazon-science/spot-diff
Citation: Y. Zou, J. Jeong, L. Pemula, D. Zhang, O. Dabeer. "SPot-the-Difference Self-Supervised
Pre-training for Anomaly Detection and Segmentation". ECCV 2022, pp. 392-408.

Layout: the downloaded ``VisA`` folder (``<object>/Data/Images/{Normal,Anomaly}/*.JPG``,
``<object>/Data/Masks/Anomaly/*.png``, ``<object>/image_anno.csv``) with the split file from the
spot-diff repository copied to ``<root>/split_csv/1cls.csv``. Its columns are
``object,split,label,image,mask``; ``label`` is ``normal`` or ``anomaly``; paths are relative to root.

The split file carries no defect type. When ``<object>/image_anno.csv`` (shipped with the data) names
one for the image (e.g. "chunk of wax missing"), that is the type; otherwise it is ``anomaly``.
VisA masks are multi-class index images (0 = background); any non-zero pixel counts as defect.
A VisA copy reorganised into the MVTec layout (``prepare_data.py`` → ``VisA_pytorch/1cls``) is read by
the mvtec reader instead. Nothing is downloaded.
"""

from __future__ import annotations

import csv
import posixpath
from collections.abc import Iterator
from pathlib import Path

from sage_cli.data.reader import Reader
from sage_cli.data._common import checked_rel, choose_reference, describe_mask, verify_image
from sage_cli.data.images import is_image
from sage_cli.data.problems import Problems
from sage_cli.data.records import Defect, ImageRecord
from sage_cli.errors import SageError

CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)

SPLIT_CSV = "split_csv/1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
DEFAULT_TYPE = "anomaly"
_LABELS = {"normal": "good", "anomaly": "anomaly"}


def looks_like_visa(root: Path) -> bool:
    return (Path(root) / SPLIT_CSV).is_file()


def _read_csv(path: Path, problems: Problems, where: str) -> list[dict] | None:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        problems.report(where, f"cannot read the csv ({e})")
        return None
    missing = [c for c in COLUMNS if c not in fields]
    if missing:
        problems.report(where, f"missing column(s) {', '.join(missing)} (expected {','.join(COLUMNS)})")
        return None
    return rows


def _types_for(root: Path, obj: str, cache: dict) -> dict[str, str]:
    """Image path → defect description from ``<object>/image_anno.csv``, when the data ships it."""
    if obj not in cache:
        types: dict[str, str] = {}
        anno = root / obj / "image_anno.csv"
        if anno.is_file():
            try:
                with open(anno, newline="", encoding="utf-8-sig") as f:
                    for row in csv.DictReader(f):
                        img, label = (row.get("image") or "").strip(), (row.get("label") or "").strip()
                        if img and label and label.lower() != "normal":
                            types[posixpath.normpath(img)] = label
            except (OSError, UnicodeDecodeError, csv.Error):
                types = {}  # the type is a nicety; a broken annotation file leaves "anomaly"
        cache[obj] = types
    return cache[obj]


def read_visa(
    root: Path | str,
    problems: Problems | None = None,
    *,
    seed: int = 0,
    check_images: bool = False,
) -> Iterator[ImageRecord]:
    """Every image listed in ``split_csv/1cls.csv`` as an ImageRecord (train records first).

    Test records get a ``reference`` (a normal train image of the same object, chosen with ``seed``).
    Row problems (a missing field, an unknown label or split, a path escaping the root, a missing file,
    an anomaly without mask, a mask whose size differs from the image's, an empty mask) and masks in
    ``<object>/Data/Masks/Anomaly`` that no row uses go to ``problems`` (None = strict).
    """
    root = Path(root)
    problems = problems if problems is not None else Problems(strict=True)
    csv_path = root / SPLIT_CSV
    if not csv_path.is_file():
        raise SageError(f"{root}: not a VisA root ({SPLIT_CSV} not found)")
    rows = _read_csv(csv_path, problems, SPLIT_CSV)
    if rows is None:
        return

    parsed, used_masks, objects = _parse_rows(root, rows, problems)
    type_cache: dict[str, dict[str, str]] = {}
    normals: dict[str, list[str]] = {}
    for obj, split, label, image, _ in parsed:
        if split == "train" and label == "normal":
            if check_images and verify_image(root, image, problems) is None:
                continue
            normals.setdefault(obj, []).append(image)
            yield ImageRecord(root, obj, "train", image, "good")

    for obj, split, label, image, mask in parsed:
        if split == "train" and label == "normal":
            continue
        size = None
        if check_images and (size := verify_image(root, image, problems)) is None:
            continue
        reference = choose_reference(normals.get(obj, ()), seed, image) if split == "test" else None
        if label == "normal":
            yield ImageRecord(root, obj, split, image, "good", None, reference)
            continue
        described = describe_mask(root, image, mask, problems, size)
        if described is None:
            continue
        box, location, area = described
        dtype = _types_for(root, obj, type_cache).get(image, DEFAULT_TYPE)
        defect = Defect(type=dtype, mask=mask, bbox=box, location=location, area_frac=area)
        yield ImageRecord(root, obj, split, image, dtype, defect, reference)

    _report_unused_masks(root, objects, used_masks, problems)


def _parse_rows(root: Path, rows: list[dict], problems: Problems) -> tuple[list[tuple], set[str], list[str]]:
    """The usable rows as (object, split, label, image, mask-or-None), the masks they use, the objects."""
    parsed = []
    used_masks: set[str] = set()
    objects: list[str] = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{SPLIT_CSV} line {line}"
        vals = {c: (row.get(c) or "").strip() for c in COLUMNS}
        missing = [c for c in ("object", "split", "label", "image") if not vals[c]]
        if missing:
            problems.report(where, f"missing field {missing[0]!r}")
            continue
        obj, split, label = vals["object"], vals["split"].lower(), vals["label"].lower()
        if split not in ("train", "test"):
            problems.report(where, f"split must be train or test, got {vals['split']!r}")
            continue
        if label not in _LABELS:
            problems.report(where, f"label must be normal or anomaly, got {vals['label']!r}")
            continue
        if obj not in objects:
            objects.append(obj)
        if vals["mask"] and label == "anomaly":
            used_masks.add(posixpath.normpath(vals["mask"]))
        image = checked_rel(root, vals["image"], problems, where)
        if image is None:
            continue
        mask = None
        if label == "anomaly":
            if not vals["mask"]:
                problems.report(where, f"anomaly image {image} has no mask (the mask column is empty)")
                continue
            mask = checked_rel(root, vals["mask"], problems, where, what="mask")
            if mask is None:
                continue
        parsed.append((obj, split, label, image, mask))
    return parsed, used_masks, objects


def _report_unused_masks(root: Path, objects: list[str], used_masks: set[str], problems: Problems) -> None:
    """Masks in ``<object>/Data/Masks/Anomaly`` that no row uses: a sign of a broken split file."""
    for obj in objects:
        mask_dir = root / obj / "Data" / "Masks" / "Anomaly"
        if not mask_dir.is_dir():
            continue
        for p in sorted(mask_dir.iterdir()):
            rel = posixpath.join(obj, "Data", "Masks", "Anomaly", p.name)
            if p.is_file() and is_image(p) and not p.name.startswith(".") and rel not in used_masks:
                problems.report(rel, f"mask has no image (no anomaly row of {SPLIT_CSV} uses it)")


READER = Reader("visa", "image", "<root>/split_csv/1cls.csv with the VisA object folders", looks_like_visa, read_visa,
                seeded=True)
