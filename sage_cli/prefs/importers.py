"""QA data sets → QA groups of the same shape as the ones built from images.

* MANTA, MPDD-QA and sage-qa/1 JSON Lines are already groups (``data.manta``, ``data.qa_jsonl``): each
  question gets its ``level`` written out (MANTA's record-wide ``pair_type`` when it has none), and a
  group with a question that does not have exactly four ranked options is a problem (skipped, or
  fatal with --strict), since E-DPO needs them. Texts are copied unchanged, and so is what the reader
  found about the test object (``anomalous``, ``label_source``; see data/labels.py).
* AD-PL: no public copy exists; its unit (a test/reference pair, questions, four ranked answers) is
  MANTA's record, so AD-PL files are read in the MANTA schema: put them at
  ``<root>/JsonData/<domain>_QA.json`` with the images under ``<root>/ImageData/<domain>/``.
* MMAD: one group per image. Its multiple-choice questions become yes/no questions:
  - a Yes/No question keeps its text and answer. Its options are written from the annotation (defect
    folder + mask) when it is an "Anomaly Detection" question whose answer agrees with it, and
    otherwise graded by confidence ("Yes, clearly." > "Yes, I think so." > "Yes, but I am not sure."
    > "No.");
  - any other question asks about one candidate option, the right one or a wrong one (seeded, so
    answers are mixed): ``<question> Is the answer "<candidate>"?``. Ranked options: A1 the verdict
    with the right option, A2 the bare verdict, A3 the verdict hedging towards a wrong option, A4 the
    opposite verdict. MMAD's own option texts are the facts here; nothing from the mask is added,
    since MMAD's wording of a defect need not match the folder name.
  Levels: Anomaly Detection and the Object questions → standard; Defect Classification, Localization
  and Description → identification; Defect Analysis → diagnosis. ``domain`` is MMAD's data set
  (e.g. MVTec-AD), the reference the first normal template, the defect the image's folder and mask.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

from sage_cli.data.problems import Problems
from sage_cli.data.records import LABEL_ANNOTATION, Defect, QAGroup, Question
from sage_cli.prefs.build import image_rng, image_wh, majority_level, slug, unique_ids
from sage_cli.prefs.knowledge import defect_info, distractors, object_info
from sage_cli.prefs.templates import Finding, Writer

N_OPTIONS = 4


def qa_groups(groups, problems: Problems) -> list[QAGroup]:
    """MANTA / MPDD-QA / AD-PL / sage-qa groups with every question's level set; unusable ones reported."""
    out = []
    for g in groups:
        bad = next(((i, q) for i, q in enumerate(g.questions) if len(q.options) != N_OPTIONS), None)
        if bad is not None:
            i, q = bad
            problems.report(f"group {g.id!r}", f"question {i + 1} has {len(q.options)} options; "
                            f"preference data needs {N_OPTIONS} ranked options")
            continue
        questions = [Question(q.question, q.answer, list(q.options), q.level or g.pair_type) for q in g.questions]
        out.append(replace(g, questions=questions))
    unique_ids(out)
    return out


# ------------------------------------------------------------------------------------------------ MMAD


def mmad_level(qtype: str) -> str:
    t = qtype.lower()
    if "defect" in t and "analysis" in t:
        return "diagnosis"
    if "defect" in t:
        return "identification"
    return "standard"


def _yes_no(text: str) -> bool | None:
    t = text.strip().strip(".!").strip().lower()
    return True if t == "yes" else False if t == "no" else None


def _mmad_defect(item, problems: Problems) -> Defect | None:
    if item.label == "good":
        return None
    if item.mask is None:
        return Defect(type=item.label)
    from sage_cli.data._common import describe_mask

    described = describe_mask(item.root, item.image, item.mask, problems)
    if described is None:  # reported; keep the type, drop the place
        return Defect(type=item.label, mask=item.mask)
    box, location, area = described
    return Defect(type=item.label, mask=item.mask, bbox=box, location=location, area_frac=area)


def _finding(item, defect: Defect | None, pool: list[str], rng) -> Finding:
    info = defect_info(defect.type) if defect is not None else None
    return Finding(
        obj=object_info(item.category),
        defect=info,
        location=defect.location if defect else None,
        area_frac=defect.area_frac if defect else None,
        bbox=defect.bbox if defect else None,
        image_size=image_wh(item.path()) if defect is not None and defect.bbox is not None else None,
        has_reference=bool(item.references),
        wrong=distractors(info or defect_info("anomaly"), pool, 2, rng),
    )


def _mmad_question(q, w: Writer, rng) -> Question:
    level = mmad_level(q.type)
    polar = {k: _yes_no(v) for k, v in q.options.items()}
    if len(polar) == 2 and set(polar.values()) == {True, False}:
        answer = polar[q.answer]
        v, nv = ("Yes", "No") if answer else ("No", "Yes")
        if "detection" in q.type.lower() and answer == w.f.anomalous:
            options = w.verdict_options(says_defect=True)
        else:
            options = [f"{v}, clearly.", f"{v}, I think so.", f"{v}, but I am not sure.", f"{nv}."]
        return Question(q.question, answer, options, level)

    right = q.options[q.answer]
    wrongs = [t for k, t in q.options.items() if k != q.answer and t != right]
    ask_right = not wrongs or rng.random() < 0.5
    cand = right if ask_right else rng.choice(wrongs)
    others = [t for t in wrongs if t != cand]
    text = f'{q.question.strip()} Is the answer "{cand}"?'
    if ask_right:
        options = [
            f'Yes. The answer is "{right}".',
            "Yes, that is right.",
            f'Yes, although "{others[0]}" would also fit.' if others else "Yes, I think so, but I am not sure.",
            f'No. It is "{others[-1]}".' if others else "No.",
        ]
    else:
        options = [
            f'No. The right answer is "{right}".',
            "No, that is not right.",
            f'No; "{others[0]}" fits better.' if others else "No, probably not, but I am not sure.",
            f'Yes, "{cand}" is right.',
        ]
    return Question(text, ask_right, options, level)


def mmad_groups(items, seed: int, problems: Problems) -> list[QAGroup]:
    """One QA group per MMAD image (see the module docstring for how questions are mapped)."""
    items = list(items)
    pools: dict[str, set[str]] = defaultdict(set)
    for it in items:
        if it.label != "good":
            pools[it.category].add(it.label)
    out = []
    for it in items:
        if not it.conversation:
            problems.report(it.image, "MMAD entry has no questions")
            continue
        rng = image_rng(seed, it.image)
        defect = _mmad_defect(it, problems)
        w = Writer(_finding(it, defect, sorted(pools[it.category]), rng), rng)
        questions = [_mmad_question(q, w, rng) for q in it.conversation]
        refs = it.references
        out.append(QAGroup(
            id=slug(it.image.rsplit(".", 1)[0]),
            domain=it.dataset,
            category=it.category or "unknown",
            test_image=it.image,
            reference_image=refs[0] if refs else None,
            pair_type=majority_level(questions),
            questions=questions,
            defect=defect,
            anomalous=it.label != "good",  # MMAD's folder label
            label_source=LABEL_ANNOTATION,
            conclusion=w.conclusion(),
            root=it.root,
        ))
    unique_ids(out)
    return out
