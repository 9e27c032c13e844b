"""The data-set formats sage reads: a registry of readers (`reader.Reader`), which one a root is, and one
call that opens any of them.

Formats: ``mvtec`` (MVTec AD, MPDD, and anything in their folder layout), ``visa`` (split_csv/1cls.csv),
``manta`` (MANTA QA and MPDD-QA JSON), ``mmad`` (mmad.json), ``qa`` (our sage-qa/1 JSON Lines; ROOT may
be one such file). A root is recognised by the first reader, in READERS' order, that claims it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sage_cli.data.problems import Problems
from sage_cli.errors import SageError

def _readers() -> dict:
    """name -> Reader, in the order a root is tried (the most specific layouts first)."""
    from sage_cli.data import manta, mmad, mvtec, qa_jsonl, visa

    return {r.name: r for r in (mmad.READER, visa.READER, manta.READER, mvtec.READER, qa_jsonl.READER)}


FORMATS = ("mvtec", "visa", "manta", "mmad", "qa")


def reader(fmt: str):
    """The Reader of format `fmt`; SageError naming the known ones."""
    from sage_cli.errors import did_you_mean

    readers = _readers()
    if fmt not in readers:
        raise SageError(f"unknown format {fmt!r}{did_you_mean(fmt, FORMATS)}; known formats: {', '.join(FORMATS)}")
    return readers[fmt]


def layout(fmt: str) -> str:
    return reader(fmt).layout


def _unknown_layout(root: Path) -> SageError:
    known = "; ".join(f"{r.name}: {r.layout}" for r in _readers().values())
    return SageError(f"{root}: unknown dataset layout (known layouts: {known}); pass --format to choose one")


def detect_format(root: Path | str) -> str:
    """The format name of ``root`` (one of FORMATS); SageError if it is missing or matches none."""
    root = Path(root)
    if not root.exists():
        raise SageError(f"{root}: no such directory")
    if root.is_file():
        if reader("qa").recognise(root):
            return "qa"
        raise SageError(f"{root}: not a directory (a file can only be a sage-qa .jsonl)")
    for r in _readers().values():
        if r.recognise(root):
            return r.name
    raise _unknown_layout(root)


def benchmark_name(fmt: str, categories) -> str | None:
    """The benchmark whose fixed category list holds every category seen ("MVTec AD", "MPDD", "VisA").

    None when nothing matches (a custom data set) and for the QA formats.
    """
    from sage_cli.data import mvtec, visa

    cats = set(categories)
    if fmt in ("mvtec", "visa"):
        for name, known in (("MVTec AD", mvtec.CATEGORIES), ("MPDD", mvtec.MPDD_CATEGORIES), ("VisA", visa.CATEGORIES)):
            if cats and cats <= set(known):
                return name
    return None


@dataclass
class Dataset:
    """An opened data set: its format, all its records, and the problems met reading them."""

    root: Path
    format: str
    records: list = field(default_factory=list)  # ImageRecord | QAGroup | MMADItem, by format
    problems: Problems = field(default_factory=Problems)

    @property
    def kind(self) -> str:
        """What the records are: "image" (ImageRecord), "qa" (QAGroup) or "mmad" (MMADItem)."""
        return reader(self.format).kind

    def summary(self) -> dict:
        """Counts for ``sage data ls``: per category, per split and defect type (or pair type, question type)."""
        cats: dict[str, dict] = {}
        if self.kind == "image":
            for r in self.records:
                c = cats.setdefault(r.category, {"train": Counter(), "test": Counter(), "masks": 0})
                c.setdefault(r.split, Counter())[r.label] += 1
                c["masks"] += bool(r.defect is not None and r.defect.mask)
            names = list(cats)
        elif self.kind == "qa":
            for g in self.records:
                key = g.category if not g.domain or g.domain == g.category else f"{g.domain}/{g.category}"
                if key not in cats:
                    cats[key] = {"groups": 0, "pair_types": Counter(), "one_shot": 0, "zero_shot": 0}
                    cats[key].update(questions=0, yes=0, no=0)
                c = cats[key]
                c["groups"] += 1
                c["pair_types"][g.pair_type] += 1
                c["one_shot" if g.reference_image else "zero_shot"] += 1
                c["questions"] += len(g.questions)
                yes = sum(q.answer for q in g.questions)
                c["yes"] += yes
                c["no"] += len(g.questions) - yes
            names = []
        else:
            for it in self.records:
                key = "/".join(p for p in (it.dataset, it.category) if p) or "(none)"
                c = cats.setdefault(key, {"images": 0, "questions": 0, "with_mask": 0, "question_types": Counter()})
                c["images"] += 1
                c["questions"] += len(it.conversation)
                c["with_mask"] += it.mask is not None
                c["question_types"].update(q.type or "(untyped)" for q in it.conversation)
            names = []
        out = {
            "root": str(self.root),
            "format": self.format,
            "benchmark": benchmark_name(self.format, names),
            "records": len(self.records),
            "categories": {k: _plain(v) for k, v in sorted(cats.items())},
            "problems": {"count": len(self.problems), "items": list(self.problems.items)},
        }
        return out


def _plain(v):
    if isinstance(v, Counter):
        return dict(sorted(v.items(), key=lambda kv: (kv[0] != "good", kv[0])))
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def open_dataset(
    root: Path | str,
    fmt: str | None = None,
    strict: bool = False,
    seed: int = 0,
    check_images: bool = False,
) -> Dataset:
    """Read a whole data set: detect (or take) its format, read every record, collect the problems.

    ``strict`` raises SageError at the first problem; otherwise problem items are skipped and listed
    in ``Dataset.problems``. ``seed`` picks the reference images of image data sets. ``check_images``
    opens every image fully (slow on big sets; by default only their existence is checked).
    """
    root = Path(root)
    if not root.exists():
        raise SageError(f"{root}: no such directory")
    r = reader(fmt) if fmt is not None else reader(detect_format(root))
    if root.is_file() and not r.file_ok:
        raise SageError(f"{root}: not a directory (format {r.name} needs a dataset folder)")
    problems = Problems(strict=strict)
    records = list(r.read(root, problems, seed=seed, check_images=check_images))
    return Dataset(root=root, format=r.name, records=records, problems=problems)
