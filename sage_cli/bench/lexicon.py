"""The words of inspection answers: defect kinds, states, places and negators, for `asks` and `verdict`.

Everything works on `words(text)`: lower case, contractions opened ("isn't" -> "is not", "can't" ->
"can not"), hyphenated places split ("top-left" -> "top left"), punctuation kept as its own token so
that clause boundaries survive.
"""

from __future__ import annotations

import re

# Defect kinds: canonical name -> the words (nouns, plural stems and participles) that name it.
TYPES: dict[str, tuple[str, ...]] = {
    "crack": ("crack", "cracks", "cracked", "cracking", "fracture", "fractures", "fractured", "fissure", "split",
              "splits"),
    "break": ("broken", "break", "breaks", "breakage", "snapped", "shattered"),
    "fold": ("fold", "folds", "folded", "crease", "creases", "creased", "wrinkle", "wrinkles", "wrinkled"),
    "squeeze": ("squeeze", "squeezed", "crushed", "squashed", "pinched", "flattened", "compressed", "pressed"),
    "pull": ("pulled", "loose", "protruding", "sticking", "stripped", "peeled", "peeling", "detached", "lifted"),
    "scratch": ("scratch", "scratches", "scratched", "scrape", "scrapes", "scraped", "scuff", "scuffs", "scuffed",
                "abrasion", "abrasions", "abraded"),
    "dent": ("dent", "dents", "dented", "depression", "indentation", "indentations", "ding"),
    "hole": ("hole", "holes", "puncture", "punctures", "punctured", "perforation", "perforated", "pinhole",
             "pinholes"),
    "stain": ("stain", "stains", "stained", "discoloration", "discolorations", "discolouration", "discoloured",
              "discolored", "blotch", "smudge", "smudges", "smear"),
    "contamination": ("contamination", "contaminated", "contaminant", "contaminants", "debris", "residue", "dirt",
                      "dirty", "dust", "particle", "particles", "foreign", "glue", "fiber", "fibre", "hair"),
    "bend": ("bend", "bent", "bends", "deformation", "deformed", "deformations", "warp", "warped", "kink", "kinked"),
    "chip": ("chip", "chips", "chipped", "chipping", "notch", "notches", "nick"),
    "cut": ("cut", "cuts", "gash", "slit", "tear", "tears", "torn", "rip", "ripped"),
    "missing": ("missing", "absent"),
    "rust": ("rust", "rusty", "rusted", "corrosion", "corroded", "oxidation", "oxidised", "oxidized"),
    "print": ("misprint", "misprinted", "print", "printing", "smeared", "faded"),
    "spot": ("spot", "spots", "speck", "specks", "dot", "dots", "mark", "marks", "blemish", "blemishes"),
    "misalignment": ("misalignment", "misaligned", "misplaced", "shifted", "offset", "flipped", "rotated"),
    "burn": ("burn", "burns", "burnt", "burned", "scorch", "scorched"),
    "bubble": ("bubble", "bubbles", "void", "voids"),
    "color": ("color", "colour", "colors", "colours", "tint"),  # only as "a colour defect", "wrong colour"
    "fray": ("fray", "frayed", "fraying"),
    "bruise": ("bruise", "bruises", "bruised", "rot", "rotten", "mould", "mold", "moldy", "mouldy"),
    "poke": ("poke", "pokes", "poked"),
}
_TYPE_OF = {w: t for t, ws in TYPES.items() for w in ws}
# Words that may also be plain description: they name a kind only beside a defect word or a state verb.
_WEAK_TYPES = {"split", "print", "printing", "color", "colour", "dot", "dots", "mark", "marks", "offset", "rotated",
               "shifted", "flipped", "foreign", "void", "voids", "absent", "cut", "tear", "tears", "depression",
               "particle", "particles", "faded", "bend", "bends", "spot", "spots", "rot", "fiber", "fibre", "hair",
               "pressed", "compressed", "lifted", "sticking", "loose", "break", "fold", "folds", "dust"}

GENERIC = {"defect", "defects", "anomaly", "anomalies", "flaw", "flaws", "damage", "damages", "fault", "faults",
           "problem", "problems", "issue", "issues", "irregularity", "irregularities", "abnormality", "abnormalities",
           "imperfection", "imperfections", "difference", "differences", "deviation", "deviations", "discrepancy",
           "discrepancies", "defectiveness", "anomalous", "defective", "damaged", "faulty", "flawed",
           "abnormal", "wrong", "imperfect", "irregular", "unusual", "different", "differs", "differ", "deviates",
           "deviate", "unusable", "rework", "reworked", "reject", "rejected", "scrap", "scrapped",
           "repair", "repaired", "discard", "discarded", "replace", "replaced", "nonconforming", "non-conforming",
           "out-of-spec", "ng", "fails", "failed"}
GOOD = {"normal", "intact", "flawless", "fine", "perfect", "good", "acceptable", "clean", "undamaged", "defect-free",
        "ok", "okay", "pristine", "unblemished", "identical", "same", "consistent", "uniform", "matches", "match",
        "matching", "resembles", "conforming", "healthy", "sound", "unaffected", "complete", "correct", "proper",
        "properly", "regular", "passes", "pass", "shippable", "ship", "shipped", "released", "release", "usable",
        "accepted", "accept", "approve", "approved", "qualified", "meets", "meet", "correctly", "conforms", "expected", "flawlessly", "fit", "in-place", "defectless", "spotless", "even"}
# Consequence words: by their first five letters (CONSEQUENCE_STEMS, so "affects" and "weakened" count too), and
# these whole words (their first five letters are no stem).
CONSEQUENCE = {"break", "consistent", "critical", "due", "fail", "fails", "from", "functional", "harms", "leading",
               "leaks", "likely", "matter", "matters", "need", "needs", "probably", "problematic", "result", "results",
               "risks", "serious", "significant"}
CONSEQUENCE_STEMS = {"affec", "compr", "weake", "reduc", "impai", "degra", "short", "spoil", "harm", "leak", "leaka",
                     "failu", "allow", "creat", "incre", "worse", "sprea", "requi", "risk", "jeopa", "inter", "hinde",
                     "preve", "block", "impac", "damag", "expos", "endan", "cause", "causi", "lead", "leads", "remov",
                     "repai", "fixab", "fixed", "notic", "indic", "sugge", "point", "stems", "origi"}
NO_CONSEQUENCE = {"cosmetic", "superficial", "harmless", "negligible", "unlikely", "insignificant", "irrelevant",
                  "unaffected", "safe"}


def is_consequence_word(w: str) -> bool:
    """Whether w says what a defect does or what caused it ("affects", "weakened", "due")."""
    return w in CONSEQUENCE or w[:5] in CONSEQUENCE_STEMS


# Words that make the defect word after them ordinary ("natural spots", "normal texture marks").
ORDINARY = {"natural", "normal", "typical", "usual", "expected", "inherent", "regular", "ordinary", "characteristic"}

NEGATORS = {"no", "not", "never", "none", "nothing", "without", "neither", "nor", "zero", "lack", "lacks",
            "lacking", "nowhere", "unable", "barely", "hardly", "scarcely", "far", "away", "rather-than", "unlikely"}
# A negator's reach ends at these words: "no scratch and a dent" does not negate the dent.
BARRIERS = {"and", "but", "while", "whereas", "although", "though", "yet", "which", "where", "because", "so",
            "however", "except", "instead", "rather", "only", "also", "just", "it", "they", ",", ";", ":", "(", ")",
            ".", "-", "?"}
# Phrases read as one word: "rather than X" denies X; "in place" and "as it should be" are states.
_PHRASES = [
    (re.compile(r"\b(?:rather than|instead of|as opposed to|other than|not but rather)\b"), "rather-than"),
    (re.compile(r"\bfar from\b"), "far"), (re.compile(r"\baway from\b"), "away"),
    (re.compile(r"\b(?:where|as) (?:it|they) (?:should|ought to) be\b|\bas (?:it|they) should\b"), "in-place"),
    (re.compile(r"\bin place\b|\bin order\b|\bas expected\b|\bas intended\b|\bwithin spec\w*\b"), "in-place"),
    (re.compile(r"\b(?:looks?|appears?|is|are) (?:exactly |just )?like the (?:reference|template|normal)\b"),
     "looks in-place"),
]

_PLACES = {
    "top": "top", "upper": "top", "uppermost": "top", "above": "top",
    "bottom": "bottom", "lower": "bottom", "lowest": "bottom", "base": "bottom", "below": "bottom",
    "left": "left", "leftmost": "left", "left-hand": "left", "right": "right", "rightmost": "right",
    "right-hand": "right",
    "center": "center", "centre": "center", "middle": "center", "central": "center", "centrally": "center",
    "edge": "edge", "edges": "edge", "rim": "edge", "border": "edge", "borders": "edge", "periphery": "edge",
    "perimeter": "edge", "margin": "edge", "outer": "edge", "boundary": "edge", "circumference": "edge",
    "corner": "corner", "corners": "corner",
}
PLACE_WORDS = frozenset(_PLACES)
# Places on one axis that exclude each other; a corner is at an edge.
CONFLICTS = {("top", "bottom"), ("left", "right"), ("center", "edge"), ("center", "corner")}

_CONTRACTIONS = [
    (re.compile(r"\bcan(?:'|\u2019)t\b|\bcannot\b"), "can not"), (re.compile(r"\bwon(?:'|\u2019)t\b"), "will not"),
    (re.compile(r"\bshan(?:'|\u2019)t\b"), "shall not"), (re.compile(r"(?:'|\u2019)re\b"), " are"),
    (re.compile(r"(\w)n(?:'|\u2019)t\b"), r"\1 not"), (re.compile(r"\b(it|that|there|what|here)(?:'|\u2019)s\b"), r"\1 is"),
    (re.compile(r"\bi(?:'|\u2019)m\b"), "i am"), (re.compile(r"(?:'|\u2019)ve\b"), " have"),
    (re.compile(r"(?:'|\u2019)ll\b"), " will"), (re.compile(r"(?:'|\u2019)d\b"), " would"),
]
_TOKEN = re.compile(r"[a-z0-9/]+(?:-[a-z0-9]+)*|[.,;:!?()]|(?<=\s)-(?=\s)")


def norm(text: str | None) -> str:
    """Lower case, curly quotes and dashes made plain, contractions opened, whitespace collapsed."""
    t = (text or "").lower()
    for a, b in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2014", " - "),
                 ("\u2013", " - "), ("\u00a0", " ")):
        t = t.replace(a, b)
    for rx, sub in _CONTRACTIONS:
        t = rx.sub(sub, t)
    for rx, sub in _PHRASES:
        t = rx.sub(sub, t)
    return " ".join(t.split())


def words(text: str | None) -> list[str]:
    """Tokens of `norm(text)`; place compounds split ("top-left" -> "top", "left"); "defect-free" kept."""
    out: list[str] = []
    for tok in _TOKEN.findall(norm(text)):
        parts = tok.split("-")
        if len(parts) > 1 and all(p in _PLACES for p in parts):
            out += parts
        elif len(parts) > 1 and parts[0] == "non" and tok not in GENERIC:
            out += ["not", "-".join(parts[1:])]  # "non-defective" -> "not defective"
        else:
            out.append(tok)
    return out


def type_of(tokens: list[str], i: int) -> str | None:
    """The defect kind named by tokens[i], or None (weak words only beside a defect word or state verb)."""
    t = _TYPE_OF.get(tokens[i])
    if t is None:
        return None
    if t == "color":  # "the colour is even" names no defect; "a colour defect", "wrong colour" do
        near = set(tokens[max(0, i - 2): i] + tokens[i + 1: i + 3])
        return t if near & ({"wrong", "incorrect", "off", "mismatch", "mismatched", "changed"} | GENERIC) else None
    if tokens[i] in _WEAK_TYPES:
        near = tokens[max(0, i - 3): i] + tokens[i + 1: i + 3]
        if not any(w in GENERIC or w in {"defect", "defects", "visible", "a", "an", "some", "any", "small", "large",
                                          "tiny", "deep", "shows", "has", "is", "are", "wrong", "incorrect", "no",
                                          "single", "several", "many", "few"}
                   for w in near):
            return None
    return t


def types_named(tokens: list[str]) -> set[str]:
    """Every defect kind named in a question (a weak word counts there too)."""
    return {_TYPE_OF[w] for w in tokens if w in _TYPE_OF and w != "absent"}


def places(tokens: list[str]) -> set[str]:
    """Canonical places named ("upper-left corner" -> {top, left, corner, edge})."""
    out = {_PLACES[w] for w in tokens if w in _PLACES}
    if "side" in tokens and not out & {"left", "right", "top", "bottom"}:
        out.add("edge")  # "along the side"
    if "corner" in out:
        out.add("edge")
    return out


def places_agree(asked: set[str], said: set[str]) -> bool | None:
    """True if the place said is the place asked, False if they differ, None if `said` is empty."""
    if not said:
        return None
    for a, b in CONFLICTS:
        if (a in asked and b in said and a not in said) or (b in asked and a in said and b not in said):
            return False
    core = asked - {"edge"} if asked - {"edge"} else asked
    return bool(core & said) or (core == {"edge"} and bool(said & {"edge", "corner"}))


# The size buckets our answers use (data.masks.size_words: tiny / small / medium-sized / large) and their
# synonyms. The buckets are distinct: "tiny" is not "small" ("a tiny area, not small").
_SIZES = {"tiny": "tiny", "minute": "tiny", "small": "small", "little": "small", "minor": "small",
          "medium": "medium", "medium-sized": "medium", "moderate": "medium", "large": "large", "big": "large",
          "huge": "large", "extensive": "large", "sizable": "large", "sizeable": "large"}


def size_of(word: str) -> str | None:
    return _SIZES.get(word)


def sizes_said(tokens: list[str]) -> tuple[set[str], set[str]]:
    """The size buckets an answer names, and those it denies (a size word with "not", "nor", "never" or
    "neither" in the three words before it: "a tiny area, not small" says tiny and denies small)."""
    said, denied = set(), set()
    for i, w in enumerate(tokens):
        size = _SIZES.get(w)
        if size is None:
            continue
        (denied if set(tokens[max(0, i - 3): i]) & {"not", "nor", "never", "neither"} else said).add(size)
    return said, denied


def mentions_defect(tokens: list[str]) -> bool:
    return any(w in GENERIC or w in _TYPE_OF for w in tokens)


def is_defect_word(w: str) -> bool:
    return w in GENERIC or w in _TYPE_OF


def negated(tokens: list[str], i: int, reach: int = 5) -> bool:
    """Whether tokens[i] is negated: an odd number of negators before it within `reach` tokens and no
    barrier between ("not without flaws" is two negations: the flaws are there). A list of defect words
    carries the negation along ("no scratches, dents, or discoloration"); "nor" negates what follows it."""
    count, steps, j = 0, 0, i - 1
    listed = is_defect_word(tokens[i])
    while j >= 0 and steps < reach:
        w = tokens[j]
        if count and (w in (",", "or", "and") or is_defect_word(w)):
            break  # "no crack, no contamination": each negator reaches its own item only
        if listed and w in (",", "or", "and") and j > 0 and is_defect_word(tokens[j - 1]):
            if w == "and" and set(tokens[j + 1: i]) & {"a", "an", "one", "some", "the"}:
                break  # "no scratches and a dent": a new thing, not a list
            j -= 1
            continue
        if listed and is_defect_word(w):
            j -= 1
            continue
        if w == "nor":
            return True
        if w in BARRIERS:
            break
        if w == "rather-than":
            count += 1
            break
        if w in NEGATORS or (w == "free" and j + 1 < len(tokens) and tokens[j + 1] in ("of", "from")):
            count += 1
        j -= 1
        steps += 1
    return count % 2 == 1
