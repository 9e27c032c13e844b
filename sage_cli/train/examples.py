"""What the two stages learn from: SFE examples (question -> expert answer) and E-DPO preference pairs.

Both are read once, up front, and checked: a missing image, an empty file or a malformed line stops
the run with one line before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sage_cli import jsonl
from sage_cli.data.qa_jsonl import manifest_root
from sage_cli.data.paths import inside
from sage_cli.errors import SageError


@dataclass
class SFEExample:
    key: str  # group id + question index
    test: Path
    reference: Path | None  # None = zero-shot
    question: str
    answer: str  # the best-ranked option (A1), or Yes./No. when a question has no options
    facts: list[str] = field(default_factory=list)


@dataclass
class PairExample:
    key: str
    test: Path
    reference: Path | None
    question: str
    chosen: str
    rejected: str
    delta_h: float
    kind: str  # "min" or "max" (Eq. 5)
    facts: list[str] = field(default_factory=list)


def _image(root: Path, rel: str | None, where: str) -> Path | None:
    if rel is None:
        return None
    try:
        path = inside(root, rel)
    except SageError as e:
        raise SageError(f"{where}: {e}") from None
    if not path.is_file():
        raise SageError(f"{where}: image {rel} not found under {root}")
    return path


class FactsIndex:
    """Facts by test image (sage_cli.facts.store.FactsFile); none given = no facts, no record = no facts."""

    def __init__(self, path: str | Path | None):
        from sage_cli.facts.store import FactsFile

        self.file = FactsFile(path) if path is not None else None

    def __call__(self, image: Path) -> list[str]:
        return (self.file.lookup(image) or []) if self.file is not None else []


def sfe_examples(qa_path: str | Path, root: str | Path | None, facts: FactsIndex, shots: int) -> list[SFEExample]:
    """One example per question of every QA group; the target is its best-ranked answer."""
    from sage_cli.data.problems import Problems
    from sage_cli.data.qa_jsonl import read_qa_jsonl

    qa_path = Path(qa_path)
    if not qa_path.is_file():
        raise SageError(f"{qa_path}: QA file not found")
    out = []
    for g in read_qa_jsonl(qa_path, Problems(strict=True), root=root):
        base = g.root
        where = f"{qa_path}: group {g.id}"
        test = _image(base, g.test_image, where)
        ref = _image(base, g.reference_image, where) if shots == 1 else None
        for i, q in enumerate(g.questions):
            answer = q.options[0] if q.options else ("Yes." if q.answer else "No.")
            out.append(SFEExample(f"{g.id}:{i}", test, ref, q.question, answer, facts(test)))
    if not out:
        raise SageError(f"{qa_path}: no questions to train on")
    return out


PAIR_FIELDS = ("group_id", "q", "test_image", "question", "chosen", "rejected", "delta_h", "kind")


def pair_examples(pairs_path: str | Path, root: str | Path | None, facts: FactsIndex, shots: int,
                  which: str = "both") -> list[PairExample]:
    """The preference pairs of `sage score mle` (pairs.jsonl); `which` keeps both kinds, or min / max only."""
    pairs_path = Path(pairs_path)
    if not pairs_path.is_file():
        raise SageError(f"{pairs_path}: preference-pair file not found")
    base = Path(root) if root else manifest_root(pairs_path.parent) or pairs_path.parent
    out = []
    for n, rec in jsonl.read(pairs_path):
        where = f"{pairs_path}:{n}"
        if rec is None:
            raise SageError(f"{where}: not a JSON object")
        missing = [k for k in PAIR_FIELDS if k not in rec]
        if missing:
            raise SageError(f"{where}: missing field {missing[0]!r} (is this a pairs.jsonl from `sage score mle`?)")
        if rec["kind"] not in ("min", "max"):
            raise SageError(f"{where}: kind must be min or max, got {rec['kind']!r}")
        if which != "both" and rec["kind"] != which:
            continue
        test = _image(base, rec["test_image"], where)
        ref = _image(base, rec.get("reference_image"), where) if shots == 1 else None
        out.append(PairExample(f"{rec['group_id']}:{rec['q']}:{rec['kind']}", test, ref, str(rec["question"]),
                               str(rec["chosen"]), str(rec["rejected"]), float(rec["delta_h"]), rec["kind"],
                               facts(test)))
    if not out:
        raise SageError(f"{pairs_path}: no preference pairs to train on")
    return out
