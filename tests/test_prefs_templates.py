"""Phrase banks and the defect knowledge table: every phrasing over many seeds keeps the ranking rules."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from sage_cli.data.records import Defect, ImageRecord
from sage_cli.prefs.build import LEVEL_MIX, group_for, majority_level
from sage_cli.prefs.knowledge import defect_info, distractors, object_info
from sage_cli.prefs.templates import Finding, Writer, cells_touched, mirror, share

ROOT = Path("/data")  # records only: no file is opened when a group is written


def record(label="good", defect=None, reference="widget/train/good/000.png", category="widget"):
    return ImageRecord(ROOT, category, "test", f"{category}/test/{label}/000.png", label, defect, reference)


def verdict(option: str) -> bool:
    word = option.split()[0].strip(".,;:").lower()
    assert word in ("yes", "no"), option
    return word == "yes"


def words(text: str, phrase: str) -> bool:
    return re.search(rf"\b{re.escape(phrase)}\b", text) is not None


DEFECTS = {
    "with mask": Defect("crack", "m.png", (10, 2, 14, 4), "upper right", 0.03),
    "no location": Defect("scratch_head", "m.png", None, None, 0.004),
    "no mask": Defect("chunk of wax missing"),
}


@pytest.mark.parametrize("case", [*DEFECTS, "normal", "normal zero-shot"])
def test_every_phrasing_keeps_the_rules(case):
    defect = DEFECTS.get(case)
    rec = record(defect.type if defect else "good", defect, None if case == "normal zero-shot" else "ref.png")
    noun = defect_info(defect.type).noun if defect else None
    for seed in range(150):
        g = group_for(rec, ["crack", "hole", "scratch_head"], seed)
        levels = [q.level for q in g.questions]
        assert {lv: levels.count(lv) for lv in LEVEL_MIX} == LEVEL_MIX
        texts = [g.conclusion] + [t for q in g.questions for t in (q.question, *q.options)]
        for t in texts:
            assert "{" not in t and "}" not in t and "  " not in t and t == t.strip(), t
            assert t[0].isupper() and t[-1] in ".?", t
        for q in g.questions:
            a1, a2, a3, a4 = q.options
            assert len(set(q.options)) == 4
            assert verdict(a1) == verdict(a2) == verdict(a3) == q.answer != verdict(a4), (seed, q)
            if defect is not None:
                assert words(a1, noun), a1
                if defect.location:
                    assert words(a1, defect.location), a1
            else:
                assert not any(words(a1, n) for n in ("crack", "hole", "scratch", "scratch on the head")), a1
        if case == "normal zero-shot":
            assert not any("reference" in t for t in texts)


def test_wording_differs_between_seeds_and_not_within_one():
    rec = record("crack", DEFECTS["with mask"])
    first = group_for(rec, [], 0).to_json()
    assert group_for(rec, [], 0).to_json() == first
    others = {str(group_for(rec, [], s).to_json()["questions"]) for s in range(1, 20)}
    assert len(others) > 15 and str(first["questions"]) not in others


def test_defect_words_from_folder_names():
    assert defect_info("color").noun == "colour discoloration" and defect_info("colour").key == "colour"
    assert defect_info("scratch_head").noun == "scratch on the head"
    assert defect_info("crack").functional and not defect_info("scratch").functional
    assert defect_info("metal_contamination").a("small") == "metal contamination over a small area"
    assert defect_info("hole").a("large") == "a large hole" and defect_info("anomaly").a() == "an anomaly"
    # A known keyword inside an unknown name keeps the dataset's words and the kind's knowledge.
    blob = defect_info("chunk of wax missing")
    assert blob.noun == "chunk of wax missing" and blob.cause == defect_info("missing").cause
    # Unknown words: a generic entry that still names the folder.
    odd = defect_info("weird_blob")
    assert odd.noun == "weird blob defect" and odd.cause == defect_info("anomaly").cause
    for kind in ("scratch", "crack", "stain", "hole", "contamination", "cutpaste"):  # sage data synth kinds
        assert defect_info(kind).key != "anomaly"


def test_distractors_are_other_kinds():
    crack = defect_info("crack")
    for seed in range(30):
        wrong = distractors(crack, ["crack", "crack_deep", "hole"], 2, random.Random(seed))
        assert len(wrong) == 2 and all(w.key != "crack" for w in wrong)
        assert len({w.key for w in wrong}) == 2


def test_object_info_and_helpers():
    assert object_info("metal_nut").noun == "metal nut" and object_info("hazelnut").domain == "food"
    assert object_info("my_part").noun == "my part"
    assert mirror("upper left") == "lower right" and mirror("middle left") == "middle right"
    assert mirror("center") is None
    assert share(0.004) == "under 1% of the image" and share(0.163) == "about 16% of the image"
    assert majority_level([]) == "standard"


def test_a_wrong_place_is_never_a_cell_the_defect_reaches():
    # A large defect centred in the middle also reaches into the upper row: "upper center" is no wrong place.
    big = Defect("crack", "m.png", (165, 88, 333, 406), "center", 0.16)
    touched = cells_touched(big.bbox, 512, 512)
    assert touched == {"upper left", "upper center", "middle left", "center", "lower left", "lower center"}
    asked_wrong = 0
    for seed in range(200):
        w = Writer(Finding(object_info("hazelnut"), defect_info("crack"), big.location, big.area_frac, big.bbox,
                           (512, 512), True, distractors(defect_info("crack"), [], 2, random.Random(seed))),
                   random.Random(seed))
        q = w._defect_place(asked_true=False)
        asked = next(c for c in ("upper left", "upper center", "upper right", "middle left", "middle right",
                                 "lower left", "lower center", "lower right") if c in q.question)
        assert asked not in touched and q.answer is False
        asked_wrong += 1
    assert asked_wrong == 200
    # A defect over the whole grid: a place question only ever asks about the true place.
    whole = Defect("crack", "m.png", (0, 0, 512, 512), "center", 1.0)
    for seed in range(100):
        rng = random.Random(seed)
        f = Finding(object_info("widget"), defect_info("crack"), "center", 1.0, whole.bbox, (512, 512), True,
                    distractors(defect_info("crack"), [], 2, rng))
        for q in Writer(f, rng).identification():
            if "center" in q.question:  # yes = "a defect is there", unless it asks whether the place is fine
                fine = any(w in q.question for w in ("consistent", "look as it should", "in order"))
                assert q.answer is not fine, q.question


def test_the_wording_does_not_give_the_verdict_away():
    # Defective and normal images draw every question family with the same odds from the same phrase
    # banks: with the asked kind, place and size masked, a question's text says nothing about whether
    # the image is defective. (Before, the text alone predicted 74% of the answers.)
    masks = ("crack", "hole", "scratch on the head", "scratch", "colour discoloration", "contamination",
             "upper left", "upper center", "upper right", "middle left", "middle right", "lower left",
             "lower center", "lower right", "center", "medium-sized", "tiny", "small", "large")
    kinds = ["crack", "hole", "scratch_head", "color", "contamination"]
    by_text: dict[str, list[bool]] = {}
    for seed in range(1600):  # ~90 masked texts: enough draws per text that chance stays under the bar
        rng = random.Random(seed)
        kind = rng.choice(kinds)
        loc = rng.choice(["upper left", "center", "lower right", "middle left"])
        defect = Defect(kind, "m.png", (10, 10, 20, 20), loc, 0.01) if seed % 2 else None
        for q in group_for(record(kind if defect else "good", defect, "ref.png"), kinds, seed).questions:
            text = q.question
            for m in masks:
                text = re.sub(rf"\b{re.escape(m)}\b", "_", text)
            text = re.sub(r"\b(a|an) _", "_", text)
            by_text.setdefault(text, []).append(defect is not None)
    # The best guess of "defective?" from the masked text alone, over all questions
    hits = sum(max(sum(v), len(v) - sum(v)) for v in by_text.values())
    total = sum(len(v) for v in by_text.values())
    assert total == 8000 and hits / total < 0.56, (hits / total, len(by_text))
    assert all(0.3 < sum(v) / len(v) < 0.7 for v in by_text.values() if len(v) >= 80), by_text.keys()
