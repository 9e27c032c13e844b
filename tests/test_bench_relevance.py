"""bench/relevance.py: whether an answer carries what its question asks for (a place, a kind, a consequence,
a verdict in words), and the summary's `answers_question` rates."""

from __future__ import annotations

import pytest

from sage_cli.bench.metrics import relevance
from sage_cli.bench.relevance import answers_question

STOP = "Could what you see on this hazelnut stop it from working?"
CASES = [
    # location
    ("Is the damage near the top-left corner?", "Yes. A crack in the upper left of the shell.", True),
    ("Is the damage near the top-left corner?", "No, it is on the right-hand side.", True),
    ("Is the damage near the top-left corner?", "Yes. It is a crack.", False),
    ("Is the scratch on the head of the screw?", "Yes, on the head.", True),
    ("Is the defect in the lower right?", "No. There is no defect on this part.", True),  # nothing to place
    # type
    ("Is the flaw a fracture?", "No. It is a stain, not a fracture.", True),
    ("Is the flaw a fracture?", "Yes. It is in the upper left.", False),
    # size
    ("Is the flaw on this brick wall small?", "No. It covers a tiny area, under 1% of the image.", True),
    ("Is the flaw on this brick wall small?", "Yes. It is contamination in the middle left.", False),
    # consequence
    (STOP, "Yes, the crack can spread and let moisture in.", True),
    (STOP, "No, it is purely cosmetic.", True),
    (STOP, "Yes. A small crack in the upper left.", False),
    # presence / normal: a verdict in words
    ("Can this hazelnut be shipped as it is?", "No, it has a crack.", True),
    ("Is there any defect on the test object?", "", False),
]


@pytest.mark.parametrize("question,answer,want", CASES)
def test_answers_carry_what_the_question_asks(question, answer, want):
    assert answers_question(question, answer) is want


def test_a_verdict_read_from_p_yes_does_not_answer_in_words():
    q = "Is this hazelnut in perfect condition?"
    assert answers_question(q, "The hazelnut.", "p_yes") is False
    assert answers_question(q, "No, it has a crack.", "word") is True


def test_rates_by_what_the_question_asks():
    samples = [{"question": q, "answer": a, "truth": True, "verdict_source": "word"} for q, a, _ in CASES]
    samples.append({"question": "Which letter?", "answer": "B", "truth": "B"})  # multiple choice: left out
    for i, s in enumerate(samples[:-1]):
        s.update(correct=i % 2 == 0, p_yes=0.9)
    rel = relevance(samples)
    assert rel["all"]["n"] == len(CASES) and rel["all"]["accuracy"] == 0.5
    assert rel["location"]["rate"] == pytest.approx(4 / 5) and rel["location"]["n"] == 5
    assert rel["type"]["rate"] == 0.5 and rel["type"]["n"] == 2 and rel["other"]["n"] == 3
    assert rel["all"]["p_yes_auroc"] is None  # every truth is yes here: one class, no AUROC


def test_p_yes_auroc_per_kind_shows_a_model_that_ignores_polarity():
    """A model whose P(yes) means "defective?" whatever is asked: AUROC 1 on presence questions, 0 on
    "free of defects?" ones (their yes means the part is fine)."""
    samples = []
    for defective in (True, False):
        p = 0.9 if defective else 0.1
        samples.append({"question": "Is there any defect?", "truth": defective, "p_yes": p, "correct": True,
                        "answer": "Yes." if defective else "No.", "verdict_source": "word"})
        samples.append({"question": "Is it free of defects?", "truth": not defective, "p_yes": p, "correct": False,
                        "answer": "Yes." if defective else "No.", "verdict_source": "word"})
    rel = relevance(samples)
    assert rel["presence"]["p_yes_auroc"] == 1.0 and rel["normal"]["p_yes_auroc"] == 0.0
    assert rel["normal"]["accuracy"] == 0.0
    assert relevance([{"question": "Which?", "truth": "A", "answer": "A"}]) is None
