"""Question wordings: the ones training uses (seen) and families held out of it (unseen).

`sage prefs build` words its questions from the template banks of templates.py and diagnosis.py (the
class attributes ending in ``_Q``): those are the *seen* wordings, and `seen(question)` says whether a
question matches one of them. The FAMILIES below are *held out*: no training build writes them. They
ask what the training questions ask (presence, absence, sameness, ship/reject decisions, location, type,
consequence) in words and vocabularies the model never trained on: "top-left corner" where training says
"upper left", "fracture" where it says "crack", "Can it be shipped as it is?" where it says "Can it be
released?". `sage bench mvtec --wordings held-out|both` asks them (`held_out_questions`), and every
bench summary reports accuracy on seen and unseen wordings apart (`wording_of`), so a model that only
learnt the training templates shows it.

A held-out group has the training groups' level mix (2 standard, 2 identification, 1 diagnosis) and
one question of each polarity at the standard level, so always answering "yes" or "no" scores 50% there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from sage_cli.data.records import Question

# The version of the training template banks. `seen` reads questions against today's banks, so what a
# checkpoint trained on is recorded with it (prefs.json "wordings" → the checkpoint's config.json): a model
# of an older bank has not seen every question that `seen` now calls seen.
#   1: four wordings per standard polarity, two or three per decision (sage-smol-1, until 2026-12-05)
#   2: nine to thirteen per standard polarity, seven per decision, function questions that name no kind
TRAINING_WORDINGS = "sage-wordings/2"

@dataclass(frozen=True)
class Family:
    id: str
    intent: str  # presence | absence | same | ship | reject | location | type | consequence
    level: str
    templates: tuple[str, ...]


FAMILIES: tuple[Family, ...] = (
    # yes = defective
    Family("presence", "presence", "standard", (
        "Can you spot any flaw on this {obj}?",
        "Has this {obj} been damaged in any way?",
        "Do you notice an irregularity on the {obj} under inspection?",
    )),
    # yes = normal
    Family("absence", "absence", "standard", (
        "Is this {obj} in perfect condition?",
        "Would you say the {obj} under inspection is undamaged?",
        "Is the {obj} shown here flawless?",
    )),
    Family("same", "same", "standard", (
        "Do both photos show the {obj} in the same condition?",
        "Apart from its position, is the {obj} under inspection identical to the good one?",
    )),
    Family("ship", "ship", "diagnosis", (
        "Can this {obj} be shipped as it is?",
        "Would you send this {obj} on to the customer?",
        "Is this {obj} good enough to pass quality control?",
    )),
    Family("reject", "reject", "diagnosis", (
        "Should this {obj} be scrapped or sent back for repair?",
        "Would you take this {obj} out of the batch?",
    )),
    Family("location", "location", "identification", (
        "Is the damage near the {place}?",
        "Would I find the flaw toward the {place}?",
        "Is the irregularity located at the {place}?",
    )),
    Family("type", "type", "identification", (
        "Is the flaw a {kind}?",
        "Would you describe the damage as {kind_a}?",
        "Does the {obj} show signs of {kind_a}?",
    )),
    Family("consequence", "consequence", "diagnosis", (
        "Could what you see on this {obj} stop it from working or make it unsafe?",
        "Is there anything here that would hurt how well the {obj} performs in use?",
    )),
)
_BY_ID = {f.id: f for f in FAMILIES}

# The 3x3 grid cells (masks.location_words) in vocabularies training never uses.
PLACES: dict[str, tuple[str, ...]] = {
    "upper left": ("top-left corner", "top left of the picture"),
    "upper center": ("top edge", "top middle"),
    "upper right": ("top-right corner", "top right of the picture"),
    "middle left": ("left-hand side", "left edge"),
    "center": ("middle of the picture", "centre"),
    "middle right": ("right-hand side", "right edge"),
    "lower left": ("bottom-left corner", "bottom left of the picture"),
    "lower center": ("bottom edge", "bottom middle"),
    "lower right": ("bottom-right corner", "bottom right of the picture"),
}

# Defect kinds (knowledge.DefectInfo.key) in other words; a kind without one keeps its own noun.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "crack": ("fracture", "fissure"), "scratch": ("scrape", "abrasion"), "hole": ("puncture", "perforation"),
    "stain": ("discoloration", "smudge"), "contamination": ("debris", "foreign particle"),
    "dent": ("indentation",), "chip": ("nick", "notch"), "cut": ("gash", "slit"), "print": ("misprint",),
    "bend": ("deformation", "warp"), "rust": ("corrosion",), "fold": ("crease", "wrinkle"),
    "squeeze": ("crushed spot",), "break": ("breakage",), "missing": ("absent piece",),
}


def _a(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _kind_words(key: str, noun: str, rng) -> str:
    return rng.choice(SYNONYMS.get(key, (noun,)))


def held_out_questions(w, rng) -> list[Question]:
    """Five questions on `w`'s Finding (a templates.Writer, whose fields give the answer's words) from the
    held-out families: presence and absence (or sameness) at the standard level, location (type when
    the defect has no place) and type at the identification level, one of ship / reject / consequence."""
    f = w.f
    normal_side = ["absence", "same"] if f.has_reference else ["absence"]
    ids = ["presence", rng.choice(normal_side), "type"]
    ids.append("location" if not f.anomalous or (f.location is not None and w.clear) else "type")
    ids.append(rng.choice(("ship", "reject", "consequence")))
    return [_question(_BY_ID[i], w, rng) for i in ids]


def _question(fam: Family, w, rng) -> Question:
    f, fields = w.f, dict(w.fields)
    bad = f.anomalous
    expert = _expert(w)
    if fam.intent in ("presence", "reject"):
        truth = bad
    elif fam.intent in ("absence", "same", "ship"):
        truth = not bad
    elif fam.intent == "consequence":
        truth = bad and f.defect.functional
    elif fam.intent == "location":
        asked_true = bad and rng.random() < 0.5
        cell = f.location if asked_true else rng.choice(w.clear if bad else tuple(PLACES))
        fields["place"] = rng.choice(PLACES[cell])
        truth = asked_true
    else:  # type: the defect's own kind, or another one, in other words
        asked_true = bad and rng.random() < 0.5
        d = f.defect if asked_true else f.wrong[0]
        kind = _kind_words(d.key, d.noun, rng)
        fields.update(kind=kind, kind_a=_a(kind))
        truth = asked_true
    text = rng.choice(fam.templates).format(**fields)
    verdict = "Yes" if truth else "No"
    return Question(question=text, answer=truth, options=[f"{verdict}. {expert}"], level=fam.level)


def _expert(w) -> str:
    """What an expert answer says after its verdict: the defect with place and size, or that there is none."""
    if not w.f.anomalous:
        return "The {obj} matches {ref}; there is no defect.".format(**w.fields)
    return "The {obj} has {def_sized}{at}{extent}: {look}.".format(**w.fields)


# ---- which wording a question has ----------------------------------------------------------------------


def _pattern(template: str) -> str:
    """A template as a regex over normalised text: its {fields} match any words."""
    parts = re.split(r"\{[a-z_0-9]+\}", _norm(template))
    return ".+?".join(re.escape(p) for p in parts)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _banks(cls) -> list[str]:
    """Every question template of a writer class: its attributes named *_Q (tuples, or dicts of them)."""
    out: list[str] = []
    for name in dir(cls):
        if not name.endswith("_Q"):
            continue
        bank = getattr(cls, name)
        for group in bank.values() if isinstance(bank, dict) else (bank,):
            out.extend(group)
    return out


@lru_cache(maxsize=1)
def _matchers() -> tuple[re.Pattern, list[tuple[str, re.Pattern]]]:
    from sage_cli.prefs.templates import Writer

    seen = re.compile("|".join(f"(?:{_pattern(t)})" for t in _banks(Writer)))
    held = [(fam.id, re.compile("|".join(f"(?:{_pattern(t)})" for t in fam.templates))) for fam in FAMILIES]
    return seen, held


def seen(question: str) -> bool:
    """Whether the question is worded as one of the training templates."""
    return _matchers()[0].fullmatch(_norm(question)) is not None


def wording_of(question: str) -> tuple[str, str | None]:
    """("seen" | "unseen", the held-out family id or None) of a question."""
    if seen(question):
        return "seen", None
    q = _norm(question)
    return "unseen", next((fid for fid, rx in _matchers()[1] if rx.fullmatch(q)), None)
