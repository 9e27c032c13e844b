"""Every benchmark format as one list of BenchItems: a test image, its reference, its questions.

* ``manta`` / ``mpdd``: MANTA's records (MPDD-QA has the same schema) as they are.
* ``qa``: sage-qa/1 groups (a file, or a folder of them such as `sage prefs build`'s OUT).
* ``mvtec``: groups built on the fly from the annotations with `sage prefs build`'s builder (5 questions,
  2 standard / 2 identification / 1 diagnosis, references from train/good chosen with the seed); with
  ``--wordings held-out`` in the held-out families' words (prefs/wordings.py), ``both``: ten questions.
* ``mmad``: one item per image; each multiple-choice question is asked with its lettered options and
  graded on the letter. One-shot uses the image's first ``similar_templates`` image (a normal template,
  MMAD's own protocol), else its first ``random_templates`` image.

A question's level is its own ``level``, else its group's ``pair_type`` (MMAD: from its type, as
`sage prefs build` maps them). One-shot items without a reference are left out and counted (they would
be zero-shot answers inside a one-shot score). ``--categories`` selects categories; ``--limit N`` keeps
at most N items per category, a stable seeded choice as in `sage prefs build --limit`.

``--shots N`` (N > 1, beyond the paper): each item keeps its own reference and gets N - 1 more normal
references (``BenchItem.more_references``), drawn from the data set's normal images of its category with
a stable seeded ranking per test image: mvtec from the category's train/good images; manta / mpdd / qa
from the reference images the category's groups use (the only images the data call normal without
reading a label); MMAD from the image's next templates (similar, then random). The test image is never
its own reference. Eq. 1 then compares with the union of the references' patches (`Engine.encode`).

Each yes/no item may have a detection question, the one AUROC is read from: its first standard-level
question that asks whether the part is defective (or normal) in so many words
(`verdict.detection_polarity`). Its truth is whether the part is defective (flipped for a "free of
defects?" question), its P(yes) (or 1 - P(yes)) the score. Items without such a question add nothing.
With `--detect-question`, every item is asked that one question instead and scored against
``BenchItem.defective`` (the same wording for every image, so its P(yes) is comparable across images).

``BenchItem.defective`` is the group's label, whatever its questions ask (`data.labels.anomaly_label`;
``label_source`` says how it was found): mvtec, and qa groups built from images, from the annotation;
manta / mpdd from a record's explicit label, else its conclusion, else its questions' answers; qa as
stored in the file, else as for manta. MMAD items have none (None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sage_cli.errors import SageError

FORMATS = ("manta", "mpdd", "mmad", "qa", "mvtec")
READER = {"manta": "manta", "mpdd": "manta", "mmad": "mmad", "qa": "qa", "mvtec": "mvtec"}
LETTER_INSTRUCTION = "Answer with the letter of the right option."
MMAD_NORMAL_FLAG = "good"


@dataclass
class BenchQuestion:
    q: int  # index in its item: samples are keyed by (item id, q)
    question: str  # as the data set words it
    prompt: str  # what the model is asked (MMAD: with the lettered options)
    level: str
    truth: bool | str  # yes/no, or MMAD's right letter
    best_option: str | None = None  # the top-ranked answer (SBERT's reference); None for MMAD
    options: dict[str, str] | None = None  # MMAD letter -> text
    type: str | None = None  # MMAD question type
    detect: int | None = None  # +1 / -1 on the item's detection question (see the module doc)


@dataclass
class BenchItem:
    id: str
    category: str
    root: Path
    test_image: str  # relative to root
    reference_image: str | None  # None = zero-shot
    questions: list[BenchQuestion]
    group: object | None = None  # the QAGroup (for the MLE judge's prompt); None for MMAD
    kind: str = "yesno"  # or "choice" (MMAD)
    defective: bool | None = None  # the group's label (data/labels.py); None = unknown (MMAD, an unlabelled group)
    label_source: str | None = None  # where `defective` comes from: "annotation", "conclusion", "question:<q>", ...
    mask: str | None = None  # the defect mask, relative to root (pixel metrics); None = none annotated
    more_references: list[str] = field(default_factory=list)  # --shots N > 1: N - 1 more normal references

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def references(self) -> list[str]:
        """Every reference image, the item's own first; empty zero-shot."""
        return [self.reference_image, *self.more_references] if self.reference_image is not None else []


@dataclass
class Loaded:
    items: list[BenchItem]
    problems: list[str] = field(default_factory=list)  # data problems skipped while reading
    no_reference: int = 0  # one-shot items left out for want of a reference
    categories: list[str] = field(default_factory=list)  # every category found (before --categories)
    short_references: int = 0  # --shots N > 1: items that found fewer than N normal references


def check_layout(fmt: str, root: Path) -> None:
    """SageError unless `root` holds `fmt` data, naming what it looks like instead."""
    from sage_cli.data.formats import detect_format, reader

    if not root.exists():
        raise SageError(f"{root}: no such file or directory")
    r = reader(READER[fmt])
    if root.is_file() and not r.file_ok:
        raise SageError(f"{root}: not a directory (sage bench {fmt} needs a {r.layout})")
    if r.recognise(root):
        return
    try:
        other = detect_format(root)
    except SageError:
        other = None
    hint = f"; it looks like {other} data (try `sage bench {other}`)" if other and other != "visa" else ""
    raise SageError(f"{root}: not {fmt} data (expected {r.layout}){hint}")


def load_items(fmt: str, root: Path, shots: int, categories: list[str] | None = None, limit: int | None = None,
               seed: int = 0, strict: bool = False, wordings: str = "seen") -> Loaded:
    """The items of one benchmark run, filtered and limited; SageError when none is left. `wordings`
    (mvtec): the built questions in the training templates' words, the held-out families', or both."""
    from sage_cli.data.formats import open_dataset
    from sage_cli.data.categories import check_categories, limit_per_category
    from sage_cli.prefs.pipeline import PrefsOptions, make_groups  # the mvtec format's groups are built as prefs builds them

    if fmt not in FORMATS:
        raise SageError(f"unknown benchmark format {fmt!r}; known: {', '.join(FORMATS)}")
    root = Path(root)
    check_layout(fmt, root)
    if fmt == "mvtec":
        # the builder filters and limits itself (per category, seeded) and reports unknown categories
        opts = PrefsOptions(src=root, out=root, seed=seed, limit=limit, categories=categories, strict=strict,
                            wordings=wordings)
        groups, problems, _ = make_groups(opts, "mvtec")
        found = sorted({g.category for g in groups})
        items = [_yes_no_item(g, shots, built=True) for g in groups]
        pools = _mvtec_normals(root, seed) if shots > 1 else {}
    else:
        ds = open_dataset(root, fmt=READER[fmt], strict=strict, seed=seed)
        problems = ds.problems
        records = list(ds.records)
        if not records:
            what = "MMAD entries" if fmt == "mmad" else "QA groups"
            first = f" ({problems.items[0]})" if problems.items else ""
            raise SageError(f"{root}: no usable {what}{first}")
        found = sorted({r.category for r in records})
        check_categories(set(found), categories)
        if categories:
            records = [r for r in records if r.category in categories]
        key = (lambda it: it.image) if fmt == "mmad" else (lambda g: f"{g.test_image}\0{g.id}")
        records = limit_per_category(records, key, lambda r: r.category, seed, limit)
        items = [_mmad_item(it, shots) if fmt == "mmad" else _yes_no_item(it, shots) for it in records]
        pools = _used_references(records) if shots > 1 and fmt != "mmad" else {}
    short = _more_references(items, pools, shots, seed) if shots > 1 else 0
    _unique_ids(items)
    items = [it for it in items if it.questions]  # an MMAD image with an empty conversation asks nothing
    kept = [it for it in items if shots == 0 or it.reference_image is not None]
    missing = len(items) - len(kept)
    if not kept:
        if items and missing:
            raise SageError(f"{root}: none of the {len(items)} items has a reference image; use --shots 0")
        raise SageError(f"{root}: nothing to benchmark after --categories/--limit")
    return Loaded(kept, list(problems.items), missing, found, short_references=short)


def _mvtec_normals(root: Path, seed: int) -> dict[str, list[str]]:
    """category -> its train/good images (relative to root): the normal pool of an MVTec-layout set."""
    from sage_cli.data.mvtec import read_mvtec
    from sage_cli.data.problems import Problems

    pools: dict[str, list[str]] = {}
    for r in read_mvtec(root, Problems(strict=False), seed=seed):
        if r.split == "train":
            pools.setdefault(r.category, []).append(r.image)
    return pools


def _used_references(records) -> dict[str, list[str]]:
    """category -> the distinct reference images its groups use, in reading order."""
    pools: dict[str, list[str]] = {}
    for g in records:
        if g.reference_image is not None and g.reference_image not in pools.setdefault(g.category, []):
            pools[g.category].append(g.reference_image)
    return pools


def _more_references(items: list[BenchItem], pools: dict[str, list[str]], shots: int, seed: int) -> int:
    """Give each one-shot item shots - 1 more references (an MMAD item has its own already): the pool's
    highest stable scores for its test image, never the test image nor its own reference. Returns the
    number of items left with fewer than `shots` references."""
    from sage_cli.data.categories import more_references

    short = 0
    for it in items:
        if it.reference_image is None:
            continue
        if it.kind != "choice":
            it.more_references = more_references(pools.get(it.category, []), (it.test_image, it.reference_image),
                                                 it.test_image, shots - 1, seed)
        short += len(it.references) < shots
    return short


def _unique_ids(items: list[BenchItem]) -> None:
    """Samples are keyed by item id: a repeated id gets "#2", "#3", ... in reading order."""
    seen: dict[str, int] = {}
    for it in items:
        n = seen.get(it.id, 0) + 1
        seen[it.id] = n
        if n > 1:
            it.id = f"{it.id}#{n}"


def _yes_no_item(g, shots: int, built: bool = False) -> BenchItem:
    """`built`: the group comes from our builder, whose `defect` is None exactly for normal images.

    ``defective`` is the group's label (`QAGroup.anomalous`, set by its reader or builder; derived here
    with `labels.anomaly_label` when it is unset), not the detection question's answer.
    """
    from sage_cli.bench.verdict import detection_polarity
    from sage_cli.data.labels import anomaly_label
    from sage_cli.data.records import LABEL_ANNOTATION

    questions = []
    detect_done = False
    if g.anomalous is not None:
        defective, source = g.anomalous, g.label_source
    elif built:
        defective, source = g.defect is not None, LABEL_ANNOTATION
    else:
        defective, source = anomaly_label(g)
    for i, q in enumerate(g.questions):
        level = g.level_of(q)
        pol = None
        if not detect_done and level == "standard":
            pol = detection_polarity(q.question)
            detect_done = pol is not None
        questions.append(BenchQuestion(i, q.question, q.question, level, bool(q.answer),
                                       q.options[0] if q.options else None, detect=pol))
    return BenchItem(g.id, g.category, Path(g.root), g.test_image, g.reference_image if shots else None,
                     questions, group=g, defective=defective, label_source=source,
                     mask=g.defect.mask if g.defect is not None else None)


def mmad_prompt(question: str, options: dict[str, str]) -> str:
    lines = [question.strip()] + [f"{k}. {v}" for k, v in options.items()] + [LETTER_INSTRUCTION]
    return "\n".join(lines)


def _mmad_item(it, shots: int) -> BenchItem:
    from sage_cli.prefs.importers import mmad_level

    questions = [BenchQuestion(i, q.question, mmad_prompt(q.question, q.options), mmad_level(q.type), q.answer,
                               None, dict(q.options), q.type or "(untyped)")
                 for i, q in enumerate(it.conversation)]
    ref, more = None, []
    if shots:
        refs = it.similar_templates or it.random_templates
        ref = refs[0] if refs else None
        extra = [r for r in [*(it.similar_templates or []), *(it.random_templates or [])] if r not in (ref, it.image)]
        more = list(dict.fromkeys(extra))[: max(shots - 1, 0)]
    # MMAD's own summary calls an image normal when "good" is in its path; its masks mark the defects
    normal = MMAD_NORMAL_FLAG in it.image
    return BenchItem(it.image, it.category or it.dataset or "(none)", Path(it.root), it.image, ref, questions,
                     kind="choice", defective=not normal, label_source="annotation", mask=it.mask,
                     more_references=more)
