"""MVTec AD and MPDD: image-level anomaly data sets in the MVTec folder layout.

MVTec AD
    Licence: CC BY-NC-SA 4.0 (non-commercial use only), https://www.mvtec.com/company/research/datasets/mvtec-ad
    Citation: P. Bergmann, M. Fauser, D. Sattlegger, C. Steger. "MVTec AD - A Comprehensive Real-World
    Dataset for Unsupervised Anomaly Detection". CVPR 2019, pp. 9592-9600. (And: P. Bergmann, K. Batzner,
    M. Fauser, D. Sattlegger, C. Steger. "The MVTec Anomaly Detection Dataset". IJCV 129, 2021.)

MPDD (Metal Parts Defect Detection)
    Licence: CC BY-NC-SA 4.0, https://github.com/stepanje/MPDD
    Citation: S. Jezek, M. Jonak, R. Burget, P. Dvorak, M. Skotak. "Deep learning-based defect detection of
    metal parts: evaluating current methods in complex conditions". ICUMT 2021, pp. 66-71,
    doi:10.1109/ICUMT54235.2021.9631567.

Layout (ROOT may also be a single category folder, the one holding ``train/`` and ``test/``)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/<good|defect>/*.png
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png      (or <stem>.png, any image suffix)

The same reader serves VisA reorganised by its ``prepare_data.py`` (``VisA_pytorch/1cls``) and the
anomalib "Hazelnut Toy" set (JPEG images, masks named like the image). Nothing is downloaded: fetch
the data from its owners (accepting their licence) and point ``sage`` at the folder.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from sage_cli.data.reader import Reader
from sage_cli.data._common import checked_rel, choose_reference, describe_mask, verify_image
from sage_cli.data.images import is_image
from sage_cli.data.problems import Problems
from sage_cli.data.records import Defect, ImageRecord
from sage_cli.errors import SageError

CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)

MPDD_CATEGORIES = (
    "bracket_black",
    "bracket_brown",
    "bracket_white",
    "connector",
    "metal_plate",
    "tubes",
)

NORMAL = "good"


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _is_category(d: Path) -> bool:
    return (d / "train").is_dir() or (d / "test").is_dir()


def find_categories(root: Path) -> list[tuple[str, str]]:
    """(category, folder relative to root) for every category under ``root``; ``root`` itself may be one."""
    root = Path(root)
    if _is_category(root):
        return [(root.resolve().name, "")]
    if not root.is_dir():
        return []
    return [(d.name, d.name) for d in sorted(root.iterdir()) if _visible(d) and d.is_dir() and _is_category(d)]


def looks_like_mvtec(root: Path) -> bool:
    return bool(find_categories(root))


def _subdirs(d: Path) -> list[str]:
    if not d.is_dir():
        return []
    return sorted(p.name for p in d.iterdir() if _visible(p) and p.is_dir())


def _images(root: Path, rel_dir: str) -> list[str]:
    d = root / rel_dir
    if not d.is_dir():
        return []
    return sorted(
        posixpath.join(rel_dir, p.name) for p in d.iterdir() if _visible(p) and p.is_file() and is_image(p)
    )


def _mask_index(root: Path, rel_dir: str) -> dict[str, str]:
    """Image stem → mask path for one ground_truth/<defect> folder; ``<stem>_mask`` beats ``<stem>``."""
    index: dict[str, str] = {}
    for m in _images(root, rel_dir):
        stem = PurePosixPath(m).stem
        if stem.endswith("_mask"):
            index[stem[: -len("_mask")]] = m
    for m in _images(root, rel_dir):
        stem = PurePosixPath(m).stem
        if not stem.endswith("_mask"):
            index.setdefault(stem, m)
    return index


def read_mvtec(
    root: Path | str,
    problems: Problems | None = None,
    *,
    seed: int = 0,
    check_images: bool = False,
) -> Iterator[ImageRecord]:
    """Every train and test image of an MVTec-layout root as an ImageRecord.

    Test records get a ``reference`` (a train/good image of the same category, chosen with ``seed``);
    defect records get a Defect whose bbox/location/area come from the mask. Pairing errors (a defect
    image without mask, a mask without image, sizes that differ, an empty mask) go to ``problems``
    (``None`` = strict: the first one raises SageError). ``check_images`` opens every image fully.
    """
    root = Path(root)
    problems = problems if problems is not None else Problems(strict=True)
    cats = find_categories(root)
    if not cats:
        raise SageError(f"{root}: no category in the MVTec layout (expected <root>/<category>/train/good and test/)")
    for category, prefix in cats:
        yield from _read_category(root, category, prefix, problems, seed, check_images)


def _read_category(root: Path, category: str, prefix: str, problems: Problems, seed: int, check: bool):
    def rel(*parts: str) -> str:
        return posixpath.join(prefix, *parts) if prefix else posixpath.join(*parts)

    def ok(img: str) -> bool:
        return checked_rel(root, img, problems, img) is not None

    normals: list[str] = []
    for label in _subdirs(root / rel("train")):
        for img in _images(root, rel("train", label)):
            if not ok(img):
                continue
            if label != NORMAL:
                expected = rel("train", NORMAL)
                problems.report(img, f"train/ holds only normal images in the MVTec layout (expected {expected})")
                continue
            if check and verify_image(root, img, problems) is None:
                continue
            normals.append(img)
            yield ImageRecord(root, category, "train", img, NORMAL)

    test_labels = _subdirs(root / rel("test"))
    for label in test_labels:
        images = _images(root, rel("test", label))
        if label == NORMAL:
            for img in images:
                if not ok(img) or (check and verify_image(root, img, problems) is None):
                    continue
                yield ImageRecord(root, category, "test", img, NORMAL, None, choose_reference(normals, seed, img))
            continue
        gt_dir = rel("ground_truth", label)
        masks = _mask_index(root, gt_dir)
        stems = set()
        for img in images:
            stem = PurePosixPath(img).stem
            stems.add(stem)
            if not ok(img):
                continue
            size = None
            if check and (size := verify_image(root, img, problems)) is None:
                continue
            mask = masks.get(stem)
            if mask is None:
                problems.report(img, f"defect image has no mask (looked for {gt_dir}/{stem}_mask.png or {stem}.png)")
                continue
            if not ok(mask):
                continue
            described = describe_mask(root, img, mask, problems, size)
            if described is None:
                continue
            box, location, area = described
            defect = Defect(type=label, mask=mask, bbox=box, location=location, area_frac=area)
            yield ImageRecord(root, category, "test", img, label, defect, choose_reference(normals, seed, img))
        for stem, mask in sorted(masks.items()):
            if stem not in stems:
                problems.report(mask, f"mask has no test image (expected {rel('test', label, stem)}.*)")

    for label in _subdirs(root / rel("ground_truth")):
        if label not in test_labels:
            for mask in _images(root, rel("ground_truth", label)):
                problems.report(mask, f"mask has no test image (there is no {rel('test', label)}/ folder)")


READER = Reader("mvtec", "image", "<root>/<category>/train/good, test/<defect|good>, ground_truth/<defect> "
                "(MVTec AD, MPDD)", looks_like_mvtec, read_mvtec, seeded=True)
