"""The files of `sage score mle`: scores (appended, one fsync'd line per option) and preference pairs.

scores.jsonl, ``format: sage-scores/1``, one line per scored option::

    {"format", "group_id", "q", "option" (rank, 0 = best), "type", "location", "logic", "mle",
     "judge", "answer_sha" (of the option text), "attempts"}     or, instead of the scores, "failed": reason

pairs.jsonl, ``format: sage-pairs/1``, derived from the scores (rewritten atomically), two per question::

    {"format", "group_id", "q", "category", "level", "test_image", "reference_image", "question",
     "answer" (the yes/no truth), "chosen", "rejected", "chosen_rank", "rejected_rank",
     "chosen_mle", "rejected_mle", "delta_h", "kind" ("min" | "max"), "judge"}

Image paths are relative to the QA file's dataset root, which score.json records as "root".
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sage_cli import jsonl
from sage_cli.atomic import replacing
from sage_cli.data.records import QAGroup
from sage_cli.judge.mle import select_pairs

SCORES_FORMAT = "sage-scores/1"
PAIRS_FORMAT = "sage-pairs/1"

Key = tuple[str, int, int]  # (group_id, q, option)


def answer_sha(text: str) -> str:
    """Ties a score to the option text it was given for: an edited QA file gets its changed options rescored."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_scores(path: Path | str) -> dict[Key, dict]:
    """The newest record per option; a score is never displaced by a later failure. Torn or foreign lines
    (an interrupted write) are skipped."""
    path = Path(path)
    out: dict[Key, dict] = {}
    if not path.exists():
        return out
    for _, d in jsonl.read(path):
        try:
            if d.get("format") != SCORES_FORMAT:
                continue
            key = (str(d["group_id"]), int(d["q"]), int(d["option"]))
        except (AttributeError, KeyError, TypeError, ValueError):  # None (not JSON) or a foreign record
            continue
        old = out.get(key)
        if old is not None and "failed" not in old and "failed" in d:
            continue
        out[key] = d
    return out


class ScoreWriter(jsonl.Appender):
    """Appends score records (format field added), each fsync'd before the next."""

    def write(self, record: dict) -> None:
        super().write({"format": SCORES_FORMAT, **record})


@dataclass
class PairStats:
    questions: int = 0
    paired: int = 0  # questions that gave pairs
    failed: int = 0  # questions with a failed option: no pairs
    incomplete: int = 0  # questions with an option not scored yet (or scored for other text)
    pairs: int = 0


def usable_score(record: dict | None, text: str) -> bool:
    return record is not None and "failed" not in record and record.get("answer_sha") == answer_sha(text)


def pair_records(groups: Iterable[QAGroup], scores: dict[Key, dict], judge: str) -> tuple[list[dict], PairStats]:
    """ΔH_min and ΔH_max pairs of every question whose options all have scores; the rest are counted."""
    records, st = [], PairStats()
    for g in groups:
        for qi, q in enumerate(g.questions):
            st.questions += 1
            recs = [scores.get((g.id, qi, k)) for k in range(len(q.options))]
            if any(r is not None and "failed" in r and r.get("answer_sha") == answer_sha(o)
                   for r, o in zip(recs, q.options)):
                st.failed += 1
                continue
            if not all(usable_score(r, o) for r, o in zip(recs, q.options)):
                st.incomplete += 1
                continue
            mle = [float(r["mle"]) for r in recs]
            st.paired += 1
            for p in select_pairs(q.options, mle):
                records.append({
                    "format": PAIRS_FORMAT, "group_id": g.id, "q": qi, "category": g.category,
                    "level": g.level_of(q), "test_image": g.test_image, "reference_image": g.reference_image,
                    "question": q.question, "answer": q.answer, "chosen": p.chosen, "rejected": p.rejected,
                    "chosen_rank": p.chosen_rank, "rejected_rank": p.rejected_rank,
                    "chosen_mle": mle[p.chosen_rank], "rejected_mle": mle[p.rejected_rank],
                    "delta_h": p.delta_h, "kind": p.kind, "judge": judge,
                })
                st.pairs += 1
    return records, st


def write_pairs(path: Path | str, records: list[dict]) -> None:
    """All pairs at once, atomically: the file is derived from the scores, so it is replaced, not appended."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
