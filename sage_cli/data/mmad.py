"""MMAD: multiple-choice questions about industrial images (MVTec AD, MVTec LOCO, VisA, GoodsAD, DS-MVTec).

Licence: CC BY-NC-SA 4.0 (https://huggingface.co/datasets/jiang-cc/MMAD); the images keep the licences of
the data sets they come from.
Citation: X. Jiang, J. Li, H. Deng, Y. Liu, B.-B. Gao, Y. Zhou, J. Li, C. Wang, F. Zheng. "MMAD: A
Comprehensive Benchmark for Multimodal Large Language Models in Industrial Anomaly Detection".
ICLR 2025, arXiv:2410.09453.

Layout: ``<root>/mmad.json`` next to the image folders (``<root>/MVTec-AD/bottle/test/...``). The JSON
object is keyed by image path (relative to root); each value holds ``conversation[]`` of
``{Question, Options{A: ..., B: ...}, Answer, type}``, ``similar_templates`` / ``random_templates``
(normal images to use as references) and ``mask_path``.

``mask_path`` is relative to a folder that the JSON does not state (MMAD's own metadata script puts it
under the first three parts of the image path); it is tried relative to the root, then under
``<dataset>/<category>/``, then under the first three parts, then next to the image. The questions are
multiple-choice, so they become MMADItem, not QAGroup. Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from sage_cli.data.reader import Reader
from sage_cli.data._common import checked_rel, failed, load_json, reason, verify_image
from sage_cli.data.problems import Problems
from sage_cli.errors import SageError

JSON_FILE = "mmad.json"
DATASETS = ("DS-MVTec", "MVTec-AD", "MVTec-LOCO", "VisA", "GoodsAD")


class MMADQuestion(NamedTuple):
    question: str
    options: dict[str, str]  # letter → text, in the file's order
    answer: str  # the right letter, a key of options
    type: str  # e.g. "Anomaly Detection", "Defect Classification"; "" when absent


@dataclass
class MMADItem:
    """One image of MMAD with its multiple-choice conversation."""

    root: Path
    image: str  # relative to root
    dataset: str  # first path part, e.g. "MVTec-AD"
    category: str  # second path part, e.g. "bottle"
    conversation: list[MMADQuestion]
    similar_templates: list[str] = field(default_factory=list)  # normal references, most similar first
    random_templates: list[str] = field(default_factory=list)
    mask: str | None = None  # relative to root; None for normal images

    @property
    def label(self) -> str:
        """The image's folder name: "good" for normal images, else the defect folder."""
        return PurePosixPath(self.image).parent.name

    @property
    def references(self) -> list[str]:
        """Similar templates first, then random ones, without repeats."""
        return list(dict.fromkeys([*self.similar_templates, *self.random_templates]))

    def path(self, rel: str | None = None) -> Path:
        return self.root / (rel if rel is not None else self.image)


def looks_like_mmad(root: Path) -> bool:
    return (Path(root) / JSON_FILE).is_file()


def _mask_bases(image: str) -> tuple[str, ...]:
    parts = PurePosixPath(image).parts
    bases = ["", "/".join(parts[:2]), "/".join(parts[:3]), str(PurePosixPath(image).parent)]
    return tuple(dict.fromkeys(b for b in bases if b != "."))


def read_mmad(
    root: Path | str,
    problems: Problems | None = None,
    *,
    check_images: bool = False,
) -> Iterator[MMADItem]:
    """Every entry of ``mmad.json`` as an MMADItem.

    An entry with a missing field, an answer that is not one of its options, or an image, template or
    mask path that escapes the root or names no file is reported to ``problems`` (None = strict) and
    skipped. ``check_images`` opens every image, template and mask fully.
    """
    root = Path(root)
    problems = problems if problems is not None else Problems(strict=True)
    path = root / JSON_FILE
    if not path.is_file():
        raise SageError(f"{root}: not an MMAD root ({JSON_FILE} not found)")
    data = load_json(path, problems, JSON_FILE)
    if failed(data):
        return
    if not isinstance(data, dict):
        problems.report(JSON_FILE, f"expected an object keyed by image path, got {type(data).__name__}")
        return
    for index, (key, value) in enumerate(data.items()):
        item = _item(root, index, key, value, problems, check_images)
        if item is not None:
            yield item


def _item(root: Path, index: int, key: str, value, problems: Problems, check: bool) -> MMADItem | None:
    where = f"{JSON_FILE} record {index} ({key!r})"
    if not isinstance(value, dict):
        problems.report(where, f"record is not a JSON object ({type(value).__name__})")
        return None
    image = checked_rel(root, key, problems, where, "image")
    if image is None:
        return None
    conv = value.get("conversation")
    if conv is None:
        problems.report(where, "missing field 'conversation'")
        return None
    if not isinstance(conv, list):
        problems.report(where, "conversation must be a list")
        return None
    questions = []
    for j, qa in enumerate(conv):
        fld = f"conversation[{j}]"
        if not isinstance(qa, dict):
            problems.report(where, f"{fld} is not a JSON object")
            return None
        for name in ("Question", "Options", "Answer"):
            if qa.get(name) is None:
                problems.report(where, f"missing field '{fld}.{name}'")
                return None
        options = qa["Options"]
        if not isinstance(options, dict) or not options:
            problems.report(where, f"{fld}.Options must be an object of letter → text")
            return None
        answer = str(qa["Answer"]).strip()
        if answer not in options:
            letters = ", ".join(map(str, options))
            problems.report(where, f"{fld}.Answer {answer!r} is not one of its options ({letters})")
            return None
        opts = {str(k): str(v) for k, v in options.items()}
        questions.append(MMADQuestion(str(qa["Question"]), opts, answer, str(qa.get("type") or "")))
    templates = {}
    for name in ("similar_templates", "random_templates"):
        raw = value.get(name) or []
        if not isinstance(raw, list):
            problems.report(where, f"{name} must be a list of image paths")
            return None
        refs = []
        for t in raw:
            rel = checked_rel(root, t, problems, where, f"{name} image")
            if rel is None:
                return None
            refs.append(rel)
        templates[name] = refs
    mask = None
    if value.get("mask_path"):
        mask = checked_rel(root, value["mask_path"], problems, where, "mask", _mask_bases(image))
        if mask is None:
            return None
    if check:
        for rel in (image, *templates["similar_templates"], *templates["random_templates"]):
            if verify_image(root, rel, problems) is None:
                return None
        if mask is not None:
            from sage_cli.data.images import load_mask

            try:
                load_mask(root / mask)
            except SageError as e:
                problems.report(mask, reason(e, root / mask))
                return None
    parts = PurePosixPath(image).parts
    return MMADItem(
        root=root,
        image=image,
        dataset=parts[0] if len(parts) >= 2 else "",
        category=parts[1] if len(parts) >= 3 else "",
        conversation=questions,
        similar_templates=templates["similar_templates"],
        random_templates=templates["random_templates"],
        mask=mask,
    )


READER = Reader("mmad", "mmad", "<root>/mmad.json with the image folders", looks_like_mmad, read_mmad)
