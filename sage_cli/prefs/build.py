"""Image records → QA groups in the AD-PL / MANTA shape, one group per test image.

Question mix per group (5 questions, every one with its ``level`` set):

* 2 standard comparison: one whose "yes" means defective ("is there any defect?") and one whose "yes"
  means normal ("is it free of defects?"), so always answering yes scores 50% at this level;
* 2 defect identification: the defect's type (naming the true kind or another one) and its place
  in the 3x3 mask grid (or, sometimes and when there is no location, its size); for a normal image,
  whether it shows a named kind of defect and whether a named region is consistent with the reference;
* 1 deep diagnosis: reject / release, whether the flaw matters beyond appearance, or its likely cause.

2/2/1 follows AD-PL's spread over the levels (12,460 / 10,635 / 5,320 of 28,415 instances, about
44/37/19%). A group's ``pair_type`` is its majority level; the 2/2 tie goes to the harder level, so
built groups are "identification" groups (the README's example) while metrics per level use each
question's own ``level``. The four options are ranked as templates.py describes.

All wording for one image comes from ``random.Random`` seeded with (seed, image path): the same seed
gives the same bytes, a different seed other phrasings and questions. Adding images changes no other
image's group, unless the new images bring a defect kind new to their category (wrong answers name
the category's kinds first).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import PurePosixPath

from sage_cli.data.records import LABEL_ANNOTATION, PAIR_TYPES, ImageRecord, QAGroup, Question
from sage_cli.prefs.knowledge import defect_info, distractors, object_info
from sage_cli.prefs.templates import Finding, Writer
from sage_cli.prefs.wordings import held_out_questions

LEVEL_MIX = {"standard": 2, "identification": 2, "diagnosis": 1}


def image_rng(seed: int, key: str) -> random.Random:
    """A Random for one image: the same for the same (seed, key) on every machine and Python run."""
    digest = hashlib.blake2b(f"{int(seed)}\0{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


def majority_level(questions: Iterable[Question], default: str = "standard") -> str:
    """The level most questions have; a tie goes to the harder level."""
    counts = Counter(q.level for q in questions if q.level in PAIR_TYPES)
    if not counts:
        return default
    return max(PAIR_TYPES, key=lambda lv: (counts[lv], PAIR_TYPES.index(lv)))


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def group_id(rec: ImageRecord) -> str:
    """"hazelnut-crack-00": category, label and file stem, as in the README's example."""
    return slug(f"{rec.category}-{rec.label}-{PurePosixPath(rec.image).stem}")


def unique_ids(groups: list[QAGroup]) -> None:
    """Make ids unique in place: a repeated id gets the test image's path (then a counter) appended."""
    seen: set[str] = set()
    for g in groups:
        gid = g.id
        if gid in seen:
            gid = f"{g.id}-{slug(g.test_image)}"
            n = 2
            while gid in seen:
                gid = f"{g.id}-{slug(g.test_image)}-{n}"
                n += 1
        g.id = gid
        seen.add(gid)


def image_wh(path) -> tuple[int, int] | None:
    """(width, height) from the image header, or None if it cannot be read (the place questions then
    rely on the box centre alone)."""
    from sage_cli.data._common import image_size
    from sage_cli.errors import SageError

    try:
        return image_size(path)
    except SageError:
        return None


def finding(rec: ImageRecord, pool: list[str], rng: random.Random) -> Finding:
    """What the annotation of ``rec`` says, plus two other defect kinds for wrong answers."""
    d = rec.defect
    info = defect_info(d.type) if d is not None else None
    # For a normal image the "wrong" kinds are what a hallucinating answer would claim.
    anchor = info if info is not None else defect_info("anomaly")
    return Finding(
        obj=object_info(rec.category),
        defect=info,
        location=d.location if d is not None else None,
        area_frac=d.area_frac if d is not None else None,
        bbox=d.bbox if d is not None else None,
        image_size=image_wh(rec.path()) if d is not None and d.bbox is not None else None,
        has_reference=rec.reference is not None,
        wrong=distractors(anchor, pool, 2, rng),
    )


def group_for(rec: ImageRecord, pool: list[str], seed: int, wordings: str = "seen") -> QAGroup:
    """The QA group of one test image; ``pool`` = the defect labels of its category (wrong answers).
    ``wordings``: "seen" (the training templates), "held-out" (wordings.FAMILIES, for benchmarks only)
    or "both" (the seen five, then five held-out ones)."""
    # Keyed by the pair, not the image: a normal image reused against several references gets new
    # questions each time (the same text six times over would let a model learn the image by its questions).
    rng = image_rng(seed, f"{rec.image}\0{rec.reference or ''}")
    w = Writer(finding(rec, pool, rng), rng)
    questions = [] if wordings == "held-out" else w.standard() + w.identification() + [w.diagnosis()]
    if wordings != "seen":
        # its own generator: the seen questions of "both" are those of "seen"
        questions += held_out_questions(w, image_rng(seed, f"held-out\0{rec.image}\0{rec.reference or ''}"))
    return QAGroup(
        id=group_id(rec),
        domain=object_info(rec.category).domain,
        category=rec.category,
        test_image=rec.image,
        reference_image=rec.reference,
        pair_type=majority_level(questions),
        questions=questions,
        defect=rec.defect,
        anomalous=rec.is_anomaly,  # the image's folder label: the annotation itself
        label_source=LABEL_ANNOTATION,
        conclusion=w.conclusion(),
        root=rec.root,
    )


def defect_pools(records: Iterable[ImageRecord]) -> dict[str, list[str]]:
    """Category → its defect labels (sorted): the kinds that wrong answers name first."""
    pools: dict[str, set[str]] = defaultdict(set)
    for r in records:
        if r.defect is not None:
            pools[r.category].add(r.defect.type)
    return {c: sorted(v) for c, v in pools.items()}


def image_groups(records: list[ImageRecord], seed: int, pools: dict[str, list[str]] | None = None,
                 wordings: str = "seen") -> list[QAGroup]:
    """One group per test image of ``records`` (train images are references, not questions)."""
    pools = pools if pools is not None else defect_pools(records)
    groups = [group_for(r, pools.get(r.category, []), seed, wordings) for r in records if r.split == "test"]
    unique_ids(groups)
    return groups
