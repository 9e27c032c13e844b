"""Typed records that every dataset reader yields and every command consumes.

Image paths are stored relative to the dataset root (``root``) and checked to stay inside it;
``Path(root, rel)`` gives the file. The JSON form of a QA group is the file format in SPEC.md.

A QA group says what is *known* about its test object in two fields (JSON ``anomalous`` and
``label_source``, both may be null):

* ``anomalous``: true = the test object is defective, false = it is normal, null = not known.
* ``label_source``: how that was found. ``"annotation"``: from the data set's own labels (a defect
  annotation or mask, an MVTec/VisA/MMAD folder label, an explicit label field); anything else was
  read from the record's text by ``data.labels.anomaly_label`` (``"conclusion"``, ``"question:<q>"``,
  ``"presupposition:<q>"``, ``"pair_type"``; ``<q>`` is the 0-based index of the question).

``defect`` (type, mask, place) is set only where the defect is annotated, so ``defect: null`` alone no
longer means "normal": a MANTA record has no annotation at all. A group with a ``defect`` is anomalous
(``anomalous`` and ``label_source`` are filled in as true / "annotation" when missing); ``defect`` with
``anomalous: false`` is malformed. sage-qa/1 files written before these two fields existed still read:
``data.qa_jsonl`` labels their groups on reading (those `sage prefs build` made from images, whose
``defect: null`` does mean normal, by the manifest's ``source_format``; the others with ``anomaly_label``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

QA_FORMAT = "sage-qa/1"  # written into every QA-group record; bump when fields change meaning
PAIR_TYPES = ("standard", "identification", "diagnosis")
LABEL_ANNOTATION = "annotation"  # QAGroup.label_source when the data set's own labels say it


@dataclass(frozen=True)
class Defect:
    """What an annotation says about one defect: its type and, with a mask, where and how big."""

    type: str
    mask: str | None = None  # relative to the dataset root
    bbox: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
    location: str | None = None  # coarse words, e.g. "upper left"
    area_frac: float | None = None  # defect pixels / image pixels


@dataclass(frozen=True)
class ImageRecord:
    """One image of an image-level data set (MVTec AD, MPDD, VisA)."""

    root: Path
    category: str
    split: str  # "train" or "test"
    image: str  # relative to root
    label: str  # "good" or the defect type
    defect: Defect | None = None  # None for normal images
    reference: str | None = None  # a normal image of the same category (train split), relative to root

    @property
    def is_anomaly(self) -> bool:
        return self.defect is not None

    def path(self, rel: str | None = None) -> Path:
        return self.root / (rel if rel is not None else self.image)


@dataclass
class Question:
    question: str
    answer: bool
    options: list[str] = field(default_factory=list)  # ranked best first (A1..A4)
    level: str | None = None  # one of PAIR_TYPES; None = the group's pair_type


@dataclass
class QAGroup:
    """A test/reference pair with its questions: the MANTA record and the AD-PL unit."""

    id: str
    domain: str
    category: str
    test_image: str
    reference_image: str | None  # None = zero-shot
    pair_type: str
    questions: list[Question]
    defect: Defect | None = None  # the annotated defect; None = none annotated (see `anomalous`)
    anomalous: bool | None = None  # True defective, False normal, None unknown (module doc)
    label_source: str | None = None  # where `anomalous` comes from: "annotation", "conclusion", ...
    conclusion: str = ""
    root: Path | None = None  # not serialised; where the relative image paths point

    def __post_init__(self) -> None:
        if self.defect is not None and self.anomalous is None:
            self.anomalous, self.label_source = True, LABEL_ANNOTATION

    @property
    def normal_by_annotation(self) -> bool:
        """The data set's own labels say the test object is normal (the only time a judge is told so)."""
        return self.anomalous is False and self.label_source == LABEL_ANNOTATION

    def level_of(self, q: Question) -> str:
        return q.level or self.pair_type

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("root")
        if self.defect is not None and self.defect.bbox is not None:
            d["defect"]["bbox"] = list(self.defect.bbox)
        return {"format": QA_FORMAT, **d}

    @classmethod
    def from_json(cls, d: dict, root: Path | None = None) -> "QAGroup":
        """Build from a parsed record; raises KeyError/TypeError/ValueError on a malformed one."""
        defect = d.get("defect")
        if defect is not None:
            bbox = defect.get("bbox")
            defect = Defect(
                type=str(defect["type"]),
                mask=defect.get("mask"),
                bbox=tuple(int(v) for v in bbox) if bbox is not None else None,
                location=defect.get("location"),
                area_frac=defect.get("area_frac"),
            )
        anomalous, label_source = d.get("anomalous"), d.get("label_source")
        if anomalous is not None and not isinstance(anomalous, bool):
            raise ValueError(f"anomalous must be true, false or null, got {anomalous!r}")
        if label_source is not None and not isinstance(label_source, str):
            raise ValueError(f"label_source must be a string or null, got {label_source!r}")
        if defect is not None and anomalous is False:
            raise ValueError("a defect is annotated but anomalous is false")
        pair_type = d["pair_type"]
        if pair_type not in PAIR_TYPES:
            raise ValueError(f"pair_type must be one of {', '.join(PAIR_TYPES)}, got {pair_type!r}")
        questions = []
        for q in d["questions"]:
            if not isinstance(q["answer"], bool):
                raise ValueError(f"answer must be true or false, got {q['answer']!r}")
            level = q.get("level")
            if level is not None and level not in PAIR_TYPES:
                raise ValueError(f"level must be one of {', '.join(PAIR_TYPES)}, got {level!r}")
            questions.append(Question(str(q["question"]), q["answer"], [str(o) for o in q.get("options", [])], level))
        return cls(
            id=str(d["id"]),
            domain=str(d.get("domain", "")),
            category=str(d["category"]),
            test_image=str(d["test_image"]),
            reference_image=d.get("reference_image"),
            pair_type=pair_type,
            questions=questions,
            defect=defect,
            anomalous=anomalous,
            label_source=label_source if anomalous is not None else None,
            conclusion=str(d.get("conclusion", "")),
            root=root,
        )
