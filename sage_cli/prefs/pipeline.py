"""`sage prefs build` end to end: read a data set, make or import QA groups, split, write OUT.

OUT holds ``train.jsonl`` and ``val.jsonl`` (sage-qa/1 groups) and ``prefs.json``, the manifest:
the absolute dataset root that the records' image paths are relative to (give it to the train and
bench commands as --root / data.root), the settings, counts per split, level, pair type and category,
and the problems met. Nothing in it depends on the clock, so a rerun writes the same bytes.

A rerun with the same settings rewrites the files (each atomically; the manifest last, so a manifest
always describes finished files). An OUT holding a build with other settings, or other files, is
refused unless ``overwrite``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sage_cli import runfolder
from sage_cli.data.categories import check_categories, limit_per_category
from sage_cli.data.records import PAIR_TYPES, QAGroup
from sage_cli.errors import SageError
from sage_cli.prefs.wordings import TRAINING_WORDINGS

PREFS_FORMAT = "sage-prefs/1"
MANIFEST = "prefs.json"
TRAIN, VAL = "train.jsonl", "val.jsonl"
SHOW_PROBLEMS = 20  # problem lines kept in the manifest (the count is always exact)


@dataclass
class PrefsOptions:
    src: Path
    out: Path
    seed: int = 0
    val_frac: float = 0.2
    limit: int | None = None  # test images (or QA groups) per category
    categories: list[str] | None = None
    fmt: str | None = None
    strict: bool = False
    overwrite: bool = False
    paraphrase: dict | None = None  # {"endpoint": URL, "model": NAME} when options are paraphrased
    normal_share: float | None = None  # top normal groups up to this share per category (image data sets)
    wordings: str = "seen"  # image data sets: "seen" training templates; "held-out" / "both" for benchmarks

    def check(self) -> "PrefsOptions":
        if not 0.0 <= self.val_frac <= 1.0:
            raise SageError(f"--val-frac must be between 0 and 1, got {self.val_frac:g}")
        if self.normal_share is not None and not 0.0 <= self.normal_share < 1.0:
            raise SageError(f"--normal-share must be at least 0 and below 1, got {self.normal_share:g}")
        if self.limit is not None and self.limit < 1:
            raise SageError(f"--limit must be at least 1, got {self.limit}")
        return self


@dataclass
class PrefsResult:
    root: Path  # what image paths are relative to
    format: str
    train: list[QAGroup]
    val: list[QAGroup]
    manifest: dict
    paths: dict[str, Path]
    problems: list[str] = field(default_factory=list)


def _settings(opts: PrefsOptions, root: Path, fmt: str) -> dict:
    return {
        "root": str(root),
        "format": fmt,
        "seed": opts.seed,
        "val_frac": opts.val_frac,
        "limit": opts.limit,
        "categories": None if opts.categories is None else list(opts.categories),
        "paraphrase": opts.paraphrase,
        **({"normal_share": opts.normal_share} if opts.normal_share else {}),  # older manifests stay valid
    }


def _check_out(out: Path, root: Path, settings: dict, overwrite: bool) -> None:
    """Refuse an OUT that is the data set itself, a file, or holds something other than this build
    (a build killed before its manifest may have left train.jsonl and val.jsonl: those are ours)."""
    runfolder.refuse_file(out)
    if out.resolve() == root:
        raise SageError(f"{out}: --out must not be the dataset root; choose another folder")
    runfolder.check(out, MANIFEST, settings, overwrite=overwrite, recorded=_recorded, ours=(TRAIN, VAL), what="prefs build")


def _recorded(manifest: dict) -> dict:
    settings = manifest.get("settings")
    return settings if isinstance(settings, dict) else {}


def extra_normals(tests: list, train: list, share: float, seed: int) -> list:
    """Normal test records that bring each category's normal share of `tests` up to `share`.

    Data sets hold far more defects than normal test images (synthetic ones several defects per normal
    photo), and a model trained on them learns to answer "yes" whatever it sees. The extra normal tests
    are the category's train/good images, each against another train/good image as its reference; an
    image is reused, with a different reference each time, when more are needed than there are.
    """
    from sage_cli.data._common import choose_reference
    from sage_cli.data.records import ImageRecord

    out = []
    for cat in sorted({r.category for r in tests}):
        mine = [r for r in tests if r.category == cat]
        normal = sum(not r.is_anomaly for r in mine)
        need = math.ceil(share * (len(mine) - normal) / (1 - share)) - normal
        pool = sorted(r.image for r in train if r.category == cat)
        if need <= 0 or len(pool) < 2:
            continue
        root = next(r.root for r in train if r.category == cat)
        ranked: dict[str, list[str]] = {}  # per image, the others in a seeded order: reuse r takes the r-th
        for k in range(need):
            img = pool[k % len(pool)]
            if img not in ranked:
                others, ranked[img] = [p for p in pool if p != img], []
                while others:
                    ranked[img].append(choose_reference(others, seed, img))
                    others.remove(ranked[img][-1])
            refs = ranked[img]
            out.append(ImageRecord(root, cat, "test", img, "good", None, refs[(k // len(pool)) % len(refs)]))
    return out


def make_groups(opts: PrefsOptions, fmt: str):
    """(groups, problems, written) of the data set at ``opts.src`` in format ``fmt``, before splitting;
    ``written``: sage worded the questions (an image data set), rather than importing them."""
    from sage_cli.data.formats import open_dataset
    from sage_cli.prefs import importers
    from sage_cli.prefs.build import defect_pools, image_groups

    ds = open_dataset(opts.src, fmt=fmt, strict=opts.strict, seed=opts.seed)
    if ds.kind == "image":
        tests = [r for r in ds.records if r.split == "test"]
        if not tests:
            raise SageError(f"{opts.src}: no test images (expected <category>/test/<good|defect>/ images)")
        check_categories({r.category for r in tests}, opts.categories)
        pools = defect_pools(tests)  # from every test image, so wrong answers do not depend on --limit
        if opts.categories:
            tests = [r for r in tests if r.category in opts.categories]
        tests = limit_per_category(tests, lambda r: r.image, lambda r: r.category, opts.seed, opts.limit)
        if opts.normal_share:
            train = [r for r in ds.records if r.split == "train"]
            tests += extra_normals(tests, train, opts.normal_share, opts.seed)
        groups = image_groups(tests, opts.seed, pools, opts.wordings)
    else:
        if ds.kind == "mmad":
            items = ds.records
            if not items:
                raise SageError(f"{opts.src}: no MMAD entries to convert")
            check_categories({it.category for it in items}, opts.categories)
            if opts.categories:
                items = [it for it in items if it.category in opts.categories]
            items = limit_per_category(items, lambda it: it.image, lambda it: it.category, opts.seed, opts.limit)
            groups = importers.mmad_groups(items, opts.seed, ds.problems)
        else:
            if not ds.records:
                raise SageError(f"{opts.src}: no QA groups to import")
            check_categories({g.category for g in ds.records}, opts.categories)
            records = [g for g in ds.records if not opts.categories or g.category in opts.categories]
            records = limit_per_category(records, lambda g: f"{g.test_image}\0{g.id}", lambda g: g.category, opts.seed, opts.limit)
            groups = importers.qa_groups(records, ds.problems)
        if not groups:
            raise SageError(f"{opts.src}: every record had a problem; nothing to write ({ds.problems.items[0]})"
                            if ds.problems.items else f"{opts.src}: nothing to write")
    return groups, ds.problems, ds.kind == "image"


def counts(groups: list[QAGroup]) -> dict:
    levels = Counter(g.level_of(q) for g in groups for q in g.questions)
    yes = sum(q.answer for g in groups for q in g.questions)
    n_q = sum(len(g.questions) for g in groups)
    return {
        "groups": len(groups),
        "images": len({g.test_image for g in groups}),
        "questions": n_q,
        "yes": yes,
        "no": n_q - yes,
        "levels": {lv: levels.get(lv, 0) for lv in PAIR_TYPES},
        "pair_types": {pt: sum(g.pair_type == pt for g in groups) for pt in PAIR_TYPES},
        "with_defect": sum(g.defect is not None for g in groups),
        "categories": dict(sorted(Counter(g.category for g in groups).items())),
    }


def build_prefs(opts: PrefsOptions, paraphrase=None) -> PrefsResult:
    """Read, build or import, (optionally paraphrase,) split and write; returns what was written.

    ``paraphrase`` is a callable taking and returning the list of groups (run before the split).
    """
    from sage_cli import __version__
    from sage_cli.data.formats import FORMATS, detect_format
    from sage_cli.data.qa_jsonl import write_qa_jsonl
    from sage_cli.prefs.split import split_groups

    opts.check()
    src = Path(opts.src)
    if not src.exists():
        raise SageError(f"{src}: no such directory")
    if opts.fmt is not None and opts.fmt not in FORMATS:
        raise SageError(f"unknown format {opts.fmt!r}; known formats: {', '.join(FORMATS)}")
    fmt = opts.fmt or detect_format(src)
    # What the records' image paths are relative to: the folder (or, for one .jsonl, its folder).
    root = (src.parent if src.is_file() else src).resolve()
    settings = _settings(opts, root, fmt)
    out = Path(opts.out)
    _check_out(out, root, settings, opts.overwrite)  # before the build, which can take a while
    groups, problems, written = make_groups(opts, fmt)
    if paraphrase is not None:
        groups = paraphrase(groups)
    train, val = split_groups(groups, opts.seed, opts.val_frac)
    manifest = {
        "format": PREFS_FORMAT,
        "sage_version": __version__,
        "root": str(root),
        "source_format": fmt,
        "settings": settings,
        "files": {"train": TRAIN, "val": VAL},
        "counts": {"train": counts(train), "val": counts(val), "total": counts(groups)},
        "problems": {"count": len(problems), "items": list(problems.items[:SHOW_PROBLEMS])},
    }
    if written:  # sage worded the questions: from this version of its banks (an import keeps its own)
        manifest["wordings"] = TRAINING_WORDINGS if opts.wordings == "seen" else f"{TRAINING_WORDINGS}+{opts.wordings}"
    paths = {"train": out / TRAIN, "val": out / VAL, "manifest": out / MANIFEST}
    out.mkdir(parents=True, exist_ok=True)
    write_qa_jsonl(paths["train"], train)
    write_qa_jsonl(paths["val"], val)
    runfolder.write_manifest(paths["manifest"], manifest)  # last: a manifest describes finished files
    return PrefsResult(root, fmt, train, val, manifest, paths, list(problems.items))
