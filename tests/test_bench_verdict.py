"""Reading answers: yes/no from free text (with the question's kind), MMAD option letters.

The labelled corpora in tests/data/ were written by sessions that had not seen the grader's rules:
verdict_corpus.jsonl (371 cases) is the development set the rules were then worked out on;
verdict_heldout.jsonl was written afterwards and is only measured, never tuned to.
"""

import json
from pathlib import Path

import pytest

from sage_cli.bench.choice import parse_choice
from sage_cli.bench.verdict import detection_polarity, parse_yes_no, verdict

DATA = Path(__file__).parent / "data"


def _score(name: str) -> tuple[float, list[str]]:
    rows = [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    misses = []
    for r in rows:
        got = verdict(r["answer"], r["question"])[0]
        if got is not r["verdict"]:
            misses.append(f"{r['question']!r} / {r['answer']!r}: want {r['verdict']}, got {got}")
    return 1 - len(misses) / len(rows), misses


@pytest.mark.parametrize("name,goal", [("verdict_corpus.jsonl", 0.97), ("verdict_heldout.jsonl", 0.97)])
def test_labelled_corpus(name, goal):
    """At least 97 % of the hand-labelled (question, answer, verdict) cases are read right; misses listed."""
    if not (DATA / name).exists():
        pytest.skip(f"{name} is not in tests/data")
    acc, misses = _score(name)
    assert acc >= goal, f"{name}: {acc:.1%} right; misses:\n" + "\n".join(misses)

YES_NO = [
    ("No, the part looks normal", False),
    ("There is a defect on the rim", True),
    ("True.", True),
    ("Yes — a scratch", True),
    ("Not defective", False),
    ("no defects found", False),
    ("I cannot tell", None),
    ("", None),
    ("   ", None),
    (None, None),
    ("Negative.", False),
    ("The surface is free of defects", False),
    ("Defect present", True),
    ("Yes.", True),
    ("no", False),
    ("NO!", False),
    ("False", False),
    ("**Yes**, there is a crack near the cap.", True),
    ("Answer: No", False),
    ("The answer is yes.", True),
    ("A scratch is visible in the upper left.", True),
    ("The object appears normal.", False),
    ("It is not damaged.", False),
    ("The part isn't defective.", False),
    ("The part is not normal.", True),
    ("There are no visible anomalies.", False),
    ("No visible damage.", False),
    ("I think yes.", True),
    ("Based on the image, no.", False),
    ("Nothing wrong with it.", False),
    ("The test object shows a small crack.", True),
    ("The bottle is broken near the neck.", True),
    ("Not sure, there might be a scratch", None),  # a hedge is no verdict, whatever follows
    ("The surface does not show any scratch.", False),
    ("Normal.", False),
    ("Looks perfectly fine.", False),
    ("Something is wrong on the upper right.", True),
    ("The lighting is dim.", None),
    ("Upper right corner", None),  # "right" is not a yes
    ("No, no defects", False),
    ("The test image shows a defective hazelnut.", True),
    ("The middle right of the test image is not as it should be.", True),
    ("The rim looks as it should.", False),
]


@pytest.mark.parametrize("text,expected", YES_NO)
def test_yes_no_phrasings(text, expected):
    assert parse_yes_no(text) is expected


def test_statements_follow_the_questions_polarity_words_do_not():
    free = "Is the test widget free of defects?"
    assert verdict("The surface is free of defects", free) == (True, "claim")
    assert verdict("no defects found", free) == (True, "claim")
    assert verdict("There is a scratch on the rim.", free) == (False, "claim")
    assert verdict("No, there is a scratch.", free) == (False, "word")  # "No" answers the question as asked
    assert verdict("Yes.", "Can the test widget be released as it is?") == (True, "word")
    assert verdict("It is defective.", "Is there any defect on the test widget?") == (True, "claim")
    assert verdict("", free) == (None, None)
    should = "Does the middle right of the test hazelnut look as it should?"
    assert verdict("The middle right of the test image is not as it should be.", should) == (False, "claim")
    assert verdict("The shell is intact as in the reference.", "Is the shell as intact as in the reference?") == (True, "claim")


SMALL = "Would you call the flaw on the test brick wall small?"


@pytest.mark.parametrize("question,answer,expected", [
    # the template's own wrong option: a tiny area is not small (the buckets of data.masks.size_words)
    (SMALL, "It is contamination over a tiny area in the middle left, covering under 1% of the image, not small.", False),
    (SMALL, "I would call it small.", True),
    (SMALL, "It is a large stain across the middle.", False),  # another size: no, though there is a defect
    ("Is the defect on the test wall medium-sized?", "A medium-sized scratch at the top.", True),
    ("Is the defect large?", "There is no defect on this part.", False),
    ("Is it tiny?", "A tiny scratch at the top.", True),
    ("Is there a small crack?", "There is a small crack on the left.", True),  # a type question, not a size one
])
def test_size_questions_read_the_size_said(question, answer, expected):
    assert verdict(answer, question) == (expected, "claim")


@pytest.mark.parametrize("question,polarity", [
    ("Is there any defect on the test object?", 1),
    ("Compared with the reference, is there any defect on the test widget?", 1),
    ("Does the test image show a defective widget?", 1),
    ("Is the test widget free of defects?", -1),
    ("Does the test widget look the same as the reference?", -1),
    ("Can the test widget be released as it is?", -1),
    ("Is the defect on the test widget in the upper left?", None),
    ("Question 1?", None),
])
def test_detection_polarity(question, polarity):
    assert detection_polarity(question) == polarity


OPTS = {"A": "Crack", "B": "Stain", "C": "None", "D": "Scratch"}
CHOICES = [
    ("B", "B"),
    ("(C)", "C"),
    ("Answer: D.", "D"),
    ("The answer is A) scratch", "A"),
    ("b", "B"),
    ("c.", "C"),
    ("**B**", "B"),
    ("B. Stain", "B"),
    ("stain", "B"),  # the option text itself
    ("Scratch.", "D"),
    ("The answer is a scratch", "D"),  # "a" is the article here; the text names option D
    ("I think B fits best.", "B"),
    ("option d", "D"),
    ("It could be a stain or a crack", None),  # two options named: no choice
    ("", None),
    ("E", None),  # not an option
    ("I cannot tell", None),
]


@pytest.mark.parametrize("text,expected", CHOICES)
def test_choice_letters(text, expected):
    assert parse_choice(text, OPTS) == expected


def test_choice_on_yes_no_options_reads_the_verdict():
    yn = {"A": "Yes.", "B": "No."}
    assert parse_choice("No, the part looks normal", yn) == "B"
    assert parse_choice("There is a defect on the rim", yn) == "A"
    assert parse_choice("A", yn) == "A"
    assert parse_choice("deep scratch", {"A": "scratch", "B": "deep scratch"}) == "B"  # the longer text wins
