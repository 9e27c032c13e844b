"""MANTA QA (and MPDD-QA, which uses MANTA's schema): test/reference pairs with five yes/no questions.

Licence: see the MANTA project page (https://grainnet.github.io/MANTA, arXiv:2412.04867); the terms were
not checked here, so read them before you redistribute anything derived from the data.
Citation: L. Fan, D. Fan, Z. Hu, Y. Ding, D. Di, K. Yi, M. Pagnucco, Y. Song. "MANTA: A Large-Scale
Multi-View and Visual-Text Anomaly Detection Dataset for Tiny Objects". arXiv:2412.04867, 2024 (CVPR 2025).
MPDD-QA is the SAGE authors' set derived from MPDD (see mvtec.py for MPDD's licence and citation).

Layout::

    <root>/JsonData/<domain>_QA.json     a list of records, or an object keyed by record id
    <root>/ImageData/<domain>/...        the images

Each record: ``test_image, reference_image, pair_type, conclusion_en, question_answer[5]``; each
question ``{question_en, answer: bool, answer_options[4]{answer_en}}`` with options ranked best first.
Image paths are tried relative to the root, then to ``ImageData/<domain>/``, then to ``ImageData/``.
Records become QAGroup (records.py); ``pair_type`` words are mapped through PAIR_TYPE_WORDS.
MANTA has no defect annotation (no type, mask or place), so ``defect`` stays None unless a record
carries an explicit one (LABEL_FIELDS, DEFECT_TYPE_FIELDS), and whether the test object is defective
(``anomalous``, ``label_source``) is what the record says: an explicit label field if it has one
(source "annotation"), else `labels.anomaly_label` (its conclusion, its questions and answers, its raw
pair_type word). Nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from sage_cli.data.reader import Reader
from sage_cli.data._common import (
    checked_rel,
    failed,
    json_records,
    load_json,
    record_where,
    verify_image,
)
from sage_cli.data.labels import anomaly_label
from sage_cli.data.problems import Problems
from sage_cli.data.records import LABEL_ANNOTATION, PAIR_TYPES, Defect, QAGroup, Question
from sage_cli.errors import SageError

JSON_DIR = "JsonData"
IMAGE_DIR = "ImageData"

# Every spelling of a difficulty level we accept, lower case, words separated by single spaces.
# Unknown spellings that contain one of these words ("standard comparison question") also map.
PAIR_TYPE_WORDS = {
    "standard": "standard",
    "standard comparison": "standard",
    "comparison": "standard",
    "basic": "standard",
    "level 1": "standard",
    "1": "standard",
    "identification": "identification",
    "defect identification": "identification",
    "identify": "identification",
    "level 2": "identification",
    "2": "identification",
    "diagnosis": "diagnosis",
    "deep diagnosis": "diagnosis",
    "diagnostic": "diagnosis",
    "deep diagnostic": "diagnosis",
    "reasoning": "diagnosis",
    "deep reasoning": "diagnosis",
    "level 3": "diagnosis",
    "3": "diagnosis",
}

_TRUE = {"true", "yes", "y"}
_FALSE = {"false", "no", "n"}

# Explicit labels a record may carry (not in the published schema; honoured when present).
LABEL_FIELDS = ("anomalous", "is_anomaly", "is_anomalous", "is_abnormal", "abnormal", "is_defective", "defective",
                "anomaly", "label", "anomaly_label", "status")
DEFECT_TYPE_FIELDS = ("defect_type", "defect_class", "anomaly_type")
_LABEL_WORDS = {"good": False, "normal": False, "ok": False, "defect free": False, "no defect": False,
                "none": False, "anomaly": True, "anomalous": True, "abnormal": True, "defective": True,
                "defect": True, "bad": True, "ng": True}


def pair_type_of(word: object) -> str | None:
    """The PAIR_TYPES value for one of MANTA's level words, or None if it is not recognised."""
    if word is None or isinstance(word, bool):
        return None
    norm = " ".join(str(word).lower().replace("_", " ").replace("-", " ").split())
    if norm in PAIR_TYPE_WORDS:
        return PAIR_TYPE_WORDS[norm]
    padded = f" {norm} "
    for key in sorted(PAIR_TYPE_WORDS, key=len, reverse=True):
        if not key.isdigit() and f" {key} " in padded:
            return PAIR_TYPE_WORDS[key]
    return None


def _as_bool(v: object) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    return None


def _label_word(v: object) -> bool | None:
    b = _as_bool(v)
    if b is not None:
        return b
    if isinstance(v, str):
        return _LABEL_WORDS.get(" ".join(v.lower().replace("_", " ").replace("-", " ").split()))
    return None


def explicit_label(rec: dict) -> tuple[bool | None, Defect | None]:
    """(anomalous, defect) from a record's own label fields, if it has any: LABEL_FIELDS (true/false,
    "good"/"normal" or "anomaly"/"defective"...), DEFECT_TYPE_FIELDS (a defect type; "none"/"good" = normal)."""
    for key in DEFECT_TYPE_FIELDS:
        v = rec.get(key)
        if isinstance(v, str) and v.strip():
            word = _label_word(v)
            if word is False:
                return False, None
            if word is None:
                return True, Defect(type=v.strip())
    for key in LABEL_FIELDS:
        if key in rec:
            v = _label_word(rec[key])
            if v is not None:
                return v, None
    return None, None


def qa_files(root: Path) -> list[Path]:
    d = Path(root) / JSON_DIR
    if not d.is_dir():
        return []
    return sorted(d.glob("*_QA.json")) or sorted(d.glob("*.json"))


def looks_like_manta(root: Path) -> bool:
    return bool(qa_files(root))


def domain_of(path: Path) -> str:
    stem = path.stem
    return stem[:-3] if stem.lower().endswith("_qa") else stem


def _category(test_rel: str, domain: str) -> str:
    parts = PurePosixPath(test_rel).parts
    for prefix in ((IMAGE_DIR, domain), (IMAGE_DIR,)):
        if parts[: len(prefix)] == prefix:
            parts = parts[len(prefix):]
            break
    return parts[0] if len(parts) >= 2 else domain


def read_manta(
    root: Path | str,
    problems: Problems | None = None,
    *,
    check_images: bool = False,
) -> Iterator[QAGroup]:
    """Every record of every ``JsonData/*_QA.json`` as a QAGroup (``root`` set, ``anomalous`` labelled).

    A record with a missing field, an unknown pair_type, an answer that is not true/false, or an image
    path that escapes the root or names no file is reported to ``problems`` (None = strict) and skipped.
    """
    root = Path(root)
    problems = problems if problems is not None else Problems(strict=True)
    files = qa_files(root)
    if not files:
        raise SageError(f"{root}: not a MANTA root (no {JSON_DIR}/*_QA.json)")
    for path in files:
        file_rel = f"{JSON_DIR}/{path.name}"
        data = load_json(path, problems, file_rel)
        if failed(data):
            continue
        records = json_records(data, problems, file_rel)
        if records is None:
            continue
        domain = domain_of(path)
        for index, key, rec in records:
            rid = key if key is not None else (rec.get("id") if isinstance(rec, dict) else None)
            where = record_where(file_rel, index, None if rid is None else str(rid))
            group = _group(root, domain, index, rid, rec, problems, where, check_images)
            if group is not None:
                yield group


def _group(root, domain, index, rid, rec, problems: Problems, where: str, check: bool) -> QAGroup | None:
    if not isinstance(rec, dict):
        problems.report(where, f"record is not a JSON object ({type(rec).__name__})")
        return None
    for field in ("test_image", "pair_type", "question_answer"):
        if field not in rec or rec[field] is None:
            problems.report(where, f"missing field {field!r}")
            return None
    bases = ("", f"{IMAGE_DIR}/{domain}", IMAGE_DIR)
    test = checked_rel(root, rec["test_image"], problems, where, "test image", bases)
    if test is None:
        return None
    ref = rec.get("reference_image")
    if ref not in (None, ""):
        ref = checked_rel(root, ref, problems, where, "reference image", bases)
        if ref is None:
            return None
    else:
        ref = None
    pair_type = pair_type_of(rec["pair_type"])
    if pair_type is None:
        problems.report(where, f"unknown pair_type {rec['pair_type']!r} (expected one of {', '.join(PAIR_TYPES)})")
        return None
    qa = rec["question_answer"]
    if not isinstance(qa, list) or not qa:
        problems.report(where, "question_answer must be a non-empty list")
        return None
    questions = []
    for j, q in enumerate(qa):
        field = f"question_answer[{j}]"
        if not isinstance(q, dict):
            problems.report(where, f"{field} is not a JSON object")
            return None
        text = q.get("question_en", q.get("question"))
        if not isinstance(text, str) or not text.strip():
            problems.report(where, f"missing field '{field}.question_en'")
            return None
        if "answer" not in q:
            problems.report(where, f"missing field '{field}.answer'")
            return None
        answer = _as_bool(q["answer"])
        if answer is None:
            problems.report(where, f"{field}.answer must be true or false, got {q['answer']!r}")
            return None
        options = []
        raw_options = q.get("answer_options") or []
        if not isinstance(raw_options, list):
            problems.report(where, f"{field}.answer_options must be a list")
            return None
        for k, o in enumerate(raw_options):
            opt = o.get("answer_en", o.get("answer")) if isinstance(o, dict) else o
            if not isinstance(opt, str):
                problems.report(where, f"missing field '{field}.answer_options[{k}].answer_en'")
                return None
            options.append(opt)
        level = next((pair_type_of(q[k]) for k in ("pair_type", "level", "type") if k in q), None)
        questions.append(Question(text, answer, options, level))
    if check:
        for rel in (test, ref):
            if rel is not None and verify_image(root, rel, problems) is None:
                return None
    category = rec.get("category") or rec.get("object") or _category(test, domain)
    conclusion = rec.get("conclusion_en", rec.get("conclusion")) or ""
    anomalous, defect = explicit_label(rec)
    group = QAGroup(
        id=str(rid) if rid is not None else f"{domain}-{index}",
        domain=domain,
        category=str(category),
        test_image=test,
        reference_image=ref,
        pair_type=pair_type,
        questions=questions,
        defect=defect,
        anomalous=anomalous,
        label_source=LABEL_ANNOTATION if anomalous is not None else None,
        conclusion=str(conclusion),
        root=root,
    )
    group.anomalous, group.label_source = anomaly_label(group, rec["pair_type"])
    return group


READER = Reader("manta", "qa", "<root>/JsonData/<domain>_QA.json with ImageData/<domain>/ (MANTA, MPDD-QA)",
                looks_like_manta, read_manta)
