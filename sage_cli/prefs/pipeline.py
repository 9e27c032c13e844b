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

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sage_cli.data.records import PAIR_TYPES, QAGroup
from sage_cli.errors import SageError

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


def parse_categories(text: str | None) -> list[str] | None:
    if text is None:
        return None
    cats = [c.strip() for c in text.split(",") if c.strip()]
    if not cats:
        raise SageError("--categories is empty; give names separated by commas, e.g. bottle,screw")
    return sorted(set(cats))


def _settings(opts: PrefsOptions, root: Path, fmt: str) -> dict:
    return {
        "root": str(root),
        "format": fmt,
        "seed": opts.seed,
        "val_frac": opts.val_frac,
        "limit": opts.limit,
        "categories": opts.categories,
        "paraphrase": opts.paraphrase,
        **({"normal_share": opts.normal_share} if opts.normal_share else {}),  # older manifests stay valid
    }


def _check_out(out: Path, root: Path, settings: dict, overwrite: bool) -> None:
    """Refuse an OUT that is the data set itself, a file, or holds something other than this build."""
    if out.exists() and not out.is_dir():
        raise SageError(f"{out}: --out must be a folder, not a file")
    if out.resolve() == root:
        raise SageError(f"{out}: --out must not be the dataset root; choose another folder")
    if overwrite or not out.is_dir():
        return
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            old = json.loads(manifest.read_text(encoding="utf-8")).get("settings")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            raise SageError(f"{manifest}: unreadable manifest; pass --overwrite to replace this folder's build") from None
        if old != settings:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items()
                             if not isinstance(old, dict) or old.get(k) != v)
            raise SageError(f"{out} holds a prefs build with other settings ({diff}); pass --overwrite to replace it")
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in (TRAIN, VAL) and not p.name.startswith("."))
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise SageError(f"{out} is not empty and holds no {MANIFEST} ({shown}); pass --overwrite or choose another folder")


def check_categories(found: set[str], wanted: list[str] | None) -> None:
    if wanted is None:
        return
    missing = [c for c in wanted if c not in found]
    if missing:
        raise SageError(f"no such category: {', '.join(missing)} (this data set has: {', '.join(sorted(found)) or 'none'})")


def limit_per_category(items: list, key, category, seed: int, limit: int | None) -> list:
    """At most ``limit`` items per category: those with the lowest hash of (seed, key), in input order."""
    if limit is None:
        return items
    from sage_cli.prefs.split import stable_score

    by_cat: dict[str, list] = {}
    for it in items:
        by_cat.setdefault(category(it), []).append(it)
    keep = set()
    for members in by_cat.values():
        ranked = sorted(members, key=lambda it: (stable_score("limit", seed, key(it)), key(it)))
        keep.update(id(it) for it in ranked[:limit])
    return [it for it in items if id(it) in keep]


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
    """(groups, problems) of the data set at ``opts.src`` in format ``fmt``, before splitting."""
    from sage_cli.data.detect import open_dataset
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
        groups = image_groups(tests, opts.seed, pools)
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
    return groups, ds.problems


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
    from sage_cli.atomic import write_text
    from sage_cli.data.detect import FORMATS, detect_format
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
    groups, problems = make_groups(opts, fmt)
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
    paths = {"train": out / TRAIN, "val": out / VAL, "manifest": out / MANIFEST}
    out.mkdir(parents=True, exist_ok=True)
    write_qa_jsonl(paths["train"], train)
    write_qa_jsonl(paths["val"], val)
    write_text(paths["manifest"], json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return PrefsResult(root, fmt, train, val, manifest, paths, list(problems.items))
