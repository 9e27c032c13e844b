"""Reading a yes/no verdict out of a free-text answer, as the answer to the question asked.

`verdict(text, question)` returns (True/False/None, how) and reads, in order:

1. ``word``: an explicit verdict at the start ("Yes — a scratch", "No, it looks normal", "True.",
   "Definitely not.", "**Answer:** No") or anywhere as "the answer is no". A "No" or "Not" that begins a
   statement ("No defects found", "Not defective") is a statement (step 3). "Yes and no" is no verdict.
2. A hedge ("I cannot tell", "hard to say", "unclear") drops its clause; an answer of hedges only has
   no verdict.
3. ``claim``: the answer's statements, read as the answer to the question's kind (`asks.ask`):
   the text is cut into clauses (sentences, then at "but", "while", "although", ...), and clauses about
   the reference alone ("The reference is normal, but ...") are dropped. In each clause every defect
   word and state word is read with its negation (`lexicon.negated`: "no scratch", "I do not see any
   defects", "not without flaws", "Defect: none"), giving what is present and what is absent:
   * presence / normal: a defect said to be present wins over "looks normal" elsewhere ("looks normal
     but has a small crack"); the verdict is flipped for a question whose yes means normal;
   * type: the kind asked is said (yes), denied ("a scratch, not a crack": no), or another kind is
     said instead (no); "no defect at all" is no;
   * location: the place said for the defect agrees with the place asked (yes) or lies elsewhere on the
     same axis or off it (no: "on the left side" to "on the right side?");
   * other (consequences, causes, decisions): the question's own words denied in the answer ("scrapping
     is not necessary", "rather than by manufacturing": no), then consequence verbs read with their
     negation ("could lead to leakage": yes; "will not affect function", "purely cosmetic": no),
     concessive clauses counting half, flipped for a question whose yes is the good outcome ("Will it
     still work?").
4. ``word``: a lone yes/no word elsewhere ("Based on the image, no."), if only one kind occurs.
Otherwise (None, None): the caller decides (P(yes), a probe or a judge: `grading.py`).

The rules are measured on two hand-labelled sets in tests/data/ (test_bench_verdict.py lists the misses):
verdict_corpus.jsonl, which they were worked out on, and verdict_heldout.jsonl, written later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sage_cli.bench import lexicon as lx
from sage_cli.bench.asks import Ask, ask, asks_normal, detection_polarity  # noqa: F401  (re-exported)

YES, NO = True, False

_LEAD = re.compile(r"^(?:\s|[*_`#>\"'(\[\-])*(?:(?:my\s+|final\s+|short\s+)?(?:answer|verdict|response|conclusion|"
                   r"result|a)\s*(?:\*\*)?\s*[:\-]\s*(?:\*\*)?)?(?:\s|[*_`\"'(\[])*")
_YES_LEAD = {"yes", "yeah", "yep", "yup", "true", "correct", "affirmative", "positive", "indeed", "absolutely",
             "certainly", "definitely", "right"}  # not "sure": "Sure! Here is some information" is politeness
_NO_LEAD = {"no", "nope", "nah", "false", "incorrect", "negative", "wrong"}
_ADVERB_LEAD = {"indeed", "absolutely", "certainly", "definitely", "sure", "right", "correct", "wrong", "positive",
                "negative"}  # a verdict only when the word stands alone ("Definitely." / "Definitely not.")
_NOT_PHRASES = ("not at all", "not really", "of course not", "no way", "absolutely not", "definitely not",
                "certainly not", "surely not", "not quite", "not in the least", "not entirely", "not completely",
                "not fully", "probably not", "likely not", "most likely not", "i do not think so",
                "i do not believe so", "i would say no", "i would say not", "i doubt it", "unlikely.")
_YES_PHRASES = ("i think so", "i believe so", "i would say yes", "probably yes", "likely yes", "most likely yes",
                "most likely, yes", "likely, yes", "probably, yes", "of course", "yes indeed")
# "It doesn't.", "Sure does.", "They are not.": a short answer that echoes the question's verb.
_AUX_ECHO = re.compile(r"^(?:(?:sure|it|they|this|that|there|he|she|yes it|no it)\s+)?(?:is|are|does|do|did|has|have|"
                       r"can|will|would|could|should|was|were)(\s+not)?\s*[.!]*$")
# "A. Yes / B. No" options inside the question, answered by a letter.
_OPTION_LINE = re.compile(r"(?m)^\s*\(?([a-e])[.)]\s*(yes|no|true|false)\b")
_FIRST_WORD = re.compile(r"\W*(yes|no)\b\W*", re.IGNORECASE)  # contradicts(): the leading yes/no
_ANSWER_IS = re.compile(r"\b(?:answer|verdict)\s*(?:is|would be|:)\s*[\"'*(]*(yes|no|true|false)\b")
_HEDGE = re.compile(
    r"\b(?:can not|unable to|impossible to|hard to|difficult to|not possible to)\s+(?:\w+\s+)?(?:tell|determine|say|"
    r"judge|decide|assess|confirm|conclude|verify|be sure|be certain|evaluate|identify whether|know|distinguish|"
    r"differentiate|discern|tell apart)\b"
    r"|\bnot (?:sure|certain|clear|determinable)\b|\bunclear\b|\bunsure\b|\buncertain\b|\binconclusive\b"
    r"|\bi do not know\b|\bno way to (?:tell|know)\b|\binsufficient\b|\bnot enough (?:information|detail)\b"
    r"|\bcan not be (?:determined|assessed|judged|confirmed)\b|\btoo (?:blurry|dark|small|low)\b"
    r"|\bneed more (?:details|information|context)\b|\bplease (?:provide|specify|clarify)\b|\bcan you (?:specify|clarify)\b")
_CONTRAST = {"but", "however", "whereas", "while", "although", "though", "yet", "except", "nevertheless",
             "nonetheless", "still"}
_CONCESSIVE = {"although", "though", "while", "despite", "even"}
_SENTENCE_END = {".", "!", "?", ";"}
_TEST_WORDS = {"test", "this", "it", "its", "both", "identical", "same", "differs", "different", "difference",
               "differences", "compared", "unlike", "than", "two", "images", "match", "matches", "object", "part"}
_SEEN = {"present", "found", "detected", "visible", "observed", "seen", "evident", "apparent", "noticeable",
         "identified", "noted", "spotted", "exist", "exists"}
_POST_NEG = {"none", "nowhere", "n/a", "nil"}
_POST_SKIP = {":", "-", "is", "are", "was", "were", "be", "been", "being", "a", "an", "any", "at", "all", "can", "could",
              "be", "found", "detected", "visible", "observed", "seen", "present", "apparent", "evident"}
_COMPARATIVE_GOOD = {"same", "identical", "consistent", "match", "matches", "matching", "expected", "correct",
                     "complete", "proper", "properly", "regular", "sound", "pass", "ship", "release", "even", "fit"}
_BESIDE_PART = {"lighting", "background", "shadow", "shadows", "reflection", "reflections", "glare", "exposure",
                "camera", "orientation", "rotation", "angle", "illumination", "brightness", "photo", "backdrop"}
_SEARCH = re.compile(r"\b(?:looked|look|looking|checked|check|checking|searched|search|searching|inspected|scanned)\s+"
                     r"(?:\w+\s+)?for\b")
_WEAK = {"could", "might", "may", "maybe", "perhaps", "possibly", "possible", "either"}
_AT = {"on", "at", "in", "near", "along", "around", "inside", "to"}
_NOT_NOUN = {"of", "is", "are", "was", "and", "but", "not", "with", "in", "on", "at", "to", "which", "that"}
_PART_STEMS = {"part", "objec", "image"}
_CANONICAL_PLACES = {"top", "bottom", "left", "right", "center", "edge", "corner"}


@dataclass
class _Clause:
    tokens: list[str]
    concessive: bool = False
    present: list[str | None] = field(default_factory=list)  # kinds said present (None: a generic defect)
    absent: list[str | None] = field(default_factory=list)  # kinds said absent (None: generic: "looks normal")
    places: set[str] = field(default_factory=set)
    not_places: set[str] = field(default_factory=set)
    leans: list[bool] = field(default_factory=list)
    parts: set[str] = field(default_factory=set)  # "on the thread"
    not_parts: set[str] = field(default_factory=set)
    stems: list[tuple[str, bool]] = field(default_factory=list)  # (first 5 letters, negated) of every word
    hedge: bool = False


def _strip_lead(t: str) -> str:
    return _LEAD.sub("", t, count=1)


def _strip_echo(t: str) -> str:
    """ "A hole? No - it is a spot": a short echo of the question before the verdict is left out."""
    m = re.match(r"^[^.?!]{1,40}\?\s*", t)
    return t[m.end():] if m and m.end() < len(t) else t


def explicit_yes_no(text: str | None) -> bool | None:
    """Step 1 only: a verdict word leading the text, or "the answer is ..." anywhere; never statements."""
    t = lx.norm(text)
    if not t:
        return None
    lead = _strip_lead(_strip_echo(_strip_lead(t)))
    toks = lx.words(lead)
    if toks:
        m = _AUX_ECHO.match(lead)
        if m:
            return NO if m.group(1) else YES
        if lead.startswith(_NOT_PHRASES):
            return NO
        if lead.startswith(_YES_PHRASES):
            return YES
        first, nxt = toks[0], (toks[1] if len(toks) > 1 else "")
        if first == "yes" and nxt == "and" and "no" in toks[2:4]:
            return None  # "yes and no"
        if first in _YES_LEAD and not (first in _ADVERB_LEAD and nxt not in ("", ".", ",", "!", ";", ":", "-")):
            if not (first in _ADVERB_LEAD and nxt == "not"):
                return YES
        if first in _NO_LEAD and not (first in _ADVERB_LEAD and nxt not in ("", ".", ",", "!", ";", ":", "-")):
            if first != "no" or nxt in ("", ".", ",", "!", ";", ":", "-", "it", "the", "this", "that", "there", "i",
                                        "they", "its", "we", "not", "because", "as", "since", "sir", "definitely"):
                return NO
    m = _ANSWER_IS.search(t)
    if m:
        return YES if m.group(1) in ("yes", "true") else NO
    return None


def _clauses(text: str) -> list[_Clause]:
    """Sentences cut at contrast words; hedges, searches ("I looked for cuts") and clauses about the
    reference alone left out."""
    out: list[_Clause] = []
    cur: list[str] = []
    concessive = False

    def close():
        nonlocal cur, concessive
        if cur:
            out.append(_Clause(cur, concessive))
        cur, concessive = [], False

    for w in lx.words(text):
        if w in _SENTENCE_END:
            cur.append(w)
            close()
        elif w in _CONTRAST and cur and cur[-1] not in ("even",):
            close()
            concessive = w in _CONCESSIVE
        else:
            if not cur and w in _CONCESSIVE:
                concessive = True
            cur.append(w)
            if cur[-3:] in (["at", "first", "glance"], ["at", "first", "sight"]) or cur[-1] == "initially":
                concessive = True  # "At first glance there seems to be a spot, but ..."
    close()
    kept = []
    for c in out:
        joined = " ".join(c.tokens)
        if _HEDGE.search(joined):
            c.hedge = True
        elif _SEARCH.search(joined):
            continue
        elif _about_reference(c.tokens):
            continue
        kept.append(c)
    return kept


def _about_reference(toks: list[str]) -> bool:
    """A clause whose subject is the reference ("The reference is normal", "In the reference image, ...")."""
    head = toks[:4]
    return any(w in ("reference", "template") for w in head) and "test" not in toks


def _post_negated(toks: list[str], i: int) -> bool:
    """Negation after the word: "Defect: none", "defects: not found", "Anomaly: no"."""
    for j in range(i + 1, min(len(toks), i + 5)):
        w = toks[j]
        if w in _POST_NEG or (w == "no" and (toks[j - 1] == ":" or j + 1 == len(toks) or toks[j + 1] in ".,;!")):
            return True
        if w == "not" and j + 1 < len(toks) and (toks[j + 1] in _SEEN or toks[j + 1] in ("be", "been", "necessary",
                                                                                            "needed", "required")):
            return True
        if w not in _POST_SKIP:
            return False
    return False


def _read_clause(c: _Clause) -> None:
    toks = c.tokens
    beside = bool(set(toks) & _BESIDE_PART)  # "the only thing unusual is the lighting"
    for i, w in enumerate(toks):
        kind = lx.type_of(toks, i)
        generic = w in lx.GENERIC
        if kind is not None or generic:
            if set(toks[max(0, i - 2): i]) & lx.ORDINARY:
                continue  # "natural spots", "normal texture marks"
            neg = lx.negated(toks, i) != _post_negated(toks, i)
            if not neg and beside:
                continue
            (c.absent if neg else c.present).append(kind)
        elif w in lx.GOOD:
            if w in _COMPARATIVE_GOOD and not _about_part(toks, i):
                continue
            (c.present if lx.negated(toks, i) else c.absent).append(None)
        elif w in ("none", "nothing") and (i == 0 or toks[i - 1] in ("is", "are", "found", "see", "saw", "detected")):
            c.absent.append(None)  # "None.", "None that I can see.", "There is nothing."
        if w in lx.PLACE_WORDS or w == "side":
            (c.not_places if lx.negated(toks, i, reach=4) else c.places).update(lx.places([w]))
        elif i > 1 and toks[i - 1] in ("the", "its") and toks[i - 2] in _AT and w[:1].isalpha():
            phrase = " ".join([w] + [x for x in toks[i + 1: i + 2] if x[:1].isalpha() and x not in _NOT_NOUN])
            if not set(phrase.split()) & (lx.PLACE_WORDS | {"half", "side", "part", "area", "region"}):
                (c.not_parts if lx.negated(toks, i, reach=4) else c.parts).add(phrase)
        stem = w[:5]
        if lx.is_consequence_word(w):
            c.leans.append(not lx.negated(toks, i) and not _post_negated(toks, i))
        elif w in lx.NO_CONSEQUENCE:
            c.leans.append(lx.negated(toks, i))
        c.stems.append((stem, lx.negated(toks, i) != _post_negated(toks, i)))
    if "corner" in c.places:
        c.places.add("edge")


def _about_part(toks: list[str], i: int) -> bool:
    """A comparison word used of the part ("identical to the reference", "looks the same"), not of
    something else ("the same colour as a crack")."""
    near = toks[max(0, i - 4): i + 4]
    return any(w in near for w in ("reference", "template", "normal", "images", "both", "looks", "look", "appears",
                                   "is", "are", "seems", "pass", "passes", "can", "be", "to", "they", "them"))


def _presence(clauses: list[_Clause]) -> bool | None:
    """True if a defect is said to be present anywhere (it wins over "looks normal"), False if only absence."""
    main = [c for c in clauses if not c.concessive]
    for group in (main, clauses):  # a concession ("at first glance a spot, but ...") gives way to the main claim
        if any(c.present for c in group):
            return True
        if any(c.absent for c in group):
            return False
    return None


def _type(clauses: list[_Clause], asked: frozenset[str]) -> bool | None:
    """Decided by the last clause that names a kind ("looks like a crack at first, but it is a scratch")."""
    named = [c for c in clauses if any(k is not None for k in c.present + c.absent)]
    if named:
        last = [c for c in named if not c.concessive][-1:] or named[-1:]
        said = {k for k in last[0].present if k is not None}
        denied = {k for c in named for k in c.absent if k is not None}
        said_anywhere = {k for c in named for k in c.present if k is not None}
        if asked & denied and not asked & said:
            return NO
        if asked & said:
            return YES
        if said:
            return NO  # another kind of defect
        if asked & said_anywhere:
            return YES
    if any(None in c.absent for c in clauses) and not any(c.present for c in clauses):
        return NO  # no defect at all
    return None


def _location(clauses: list[_Clause], asked: frozenset[str]) -> bool | None:
    places, parts = asked & _CANONICAL_PLACES, asked - _CANONICAL_PLACES
    if parts:
        v = _parts_agree(parts, {p for c in clauses for p in c.parts}, {p for c in clauses for p in c.not_parts})
        if v is not None or not places:
            return v
    said = set().union(*(c.places for c in clauses if c.present)) if any(c.present for c in clauses) else set()
    said = said or set().union(set(), *(c.places for c in clauses))
    denied = set().union(set(), *(c.not_places for c in clauses))
    if (places & denied and not places & said) or (places and places <= denied):
        return NO  # "..., not the upper right"
    agree = lx.places_agree(set(places), said) if places else None
    if agree is not None:
        return agree
    if _presence(clauses) is False:
        return NO  # nothing there, so nothing on the right
    return None


def _size(clauses: list[_Clause], asked: frozenset[str]) -> bool | None:
    """ "Is the flaw small?" - "a tiny area, not small" (no), "it is small" (yes), "it is large" (no)."""
    said, denied = lx.sizes_said([t for c in clauses for t in c.tokens])
    if asked & denied and not asked & said:
        return NO
    if asked & said:
        return YES
    if said:
        return NO  # another size
    if _presence(clauses) is False:
        return NO  # nothing there, so nothing small
    return None


def _parts_agree(asked: frozenset[str], said: set[str], denied: set[str]) -> bool | None:
    """Part names: "on the screw head?" - "along the shank, not on the head" (no); "on the blue wire?" -
    "on the green-yellow wire" (no: same part, other modifier)."""
    def hit(phrases):
        return any(set(a.split()) <= set(p.split()) or a.split()[-1] == p.split()[0] for a in asked for p in phrases)

    if hit(denied) and not hit(said):
        return NO
    if hit(said):
        return YES
    if said:
        return NO
    return None


def _other(clauses: list[_Clause], a: Ask) -> bool | None:
    """Consequences and causes: the question's own words echoed in the answer, then consequence verbs."""
    score = 0.0
    for c in clauses:
        w = 0.5 if c.concessive else 1.0
        for stem, neg in c.stems:
            if stem in a.keys and neg:
                score -= 2 * w  # "scrapping is not necessary", "rather than by manufacturing"
    bad = 0.0
    for c in clauses:
        for lean in c.leans:
            bad += (0.5 if c.concessive else 1.0) * (1 if lean else -1)
    if score:
        return NO
    if bad:
        return (bad < 0) if a.good else (bad > 0)
    p = _presence(clauses)
    if p is not None:
        return (not p) if a.good else (NO if p is False else None)
    return None


def defect_claim(text: str | None) -> bool | None:
    """True if the text says the part has a defect, False if it says it has none, None if neither."""
    return _presence([c for c in _read(text) if not c.hedge])


def _read(text: str | None) -> list[_Clause]:
    clauses = _clauses(_strip_lead(lx.norm(text)))
    for c in clauses:
        _read_clause(c)
    return clauses


def _lone_word(t: str) -> bool | None:
    toks = lx.words(t)
    yes = any(w in ("yes", "true") for w in toks)
    no = any(w in ("no", "false") and (i + 1 == len(toks) or toks[i + 1] in (".", ",", "!", ";", ":"))
             for i, w in enumerate(toks))
    if yes != no:
        return YES if yes else NO
    return None


def _option_letter(t: str, question: str | None) -> bool | None:
    """ "A" to a question that lists "A. Yes / B. No"."""
    if not question:
        return None
    opts = {k: v in ("yes", "true") for k, v in _OPTION_LINE.findall(question.lower())}
    m = re.match(r"^\W*([a-e])\W*$|^\W*(?:the answer is|answer:)\s*\(?([a-e])\b", t)
    letter = (m.group(1) or m.group(2)) if m else None
    return opts.get(letter) if letter else None


def verdict(text: str | None, question: str | None = None) -> tuple[bool | None, str | None]:
    """(yes/no or None, "word" | "claim" | None): the answer's verdict on `question` (module doc)."""
    t = lx.norm(text)
    if not t:
        return None, None
    v = _option_letter(t, question)
    if v is not None:
        return v, "word"
    v = explicit_yes_no(t)
    if v is not None:
        return v, "word"
    if re.match(r"^(?:\W)*yes\s+and\s+no\b", _strip_lead(t)):
        return None, None
    read = _read(t)
    clauses = [c for c in read if not c.hedge]
    if len(clauses) < len(read):  # "Hard to be certain, but I don't think so."
        for c in clauses:
            v = explicit_yes_no(" ".join(c.tokens))
            if v is not None:
                return v, "word"
    if len(clauses) < len(read) and all(set(c.tokens) & _WEAK for c in clauses if c.present or c.absent):
        return None, None  # "Could be a crack; I can't tell at this resolution."
    a = ask(question)
    if a.kind == "type":
        v = _type(clauses, a.types)
    elif a.kind == "location":
        v = _location(clauses, a.places)
    elif a.kind == "size":
        v = _size(clauses, a.sizes)
    elif a.kind == "other":
        v = _other(clauses, a)
        if v is None and question is None:
            v = _presence(clauses)  # no question: read as "is there a defect?"
    else:
        v = _presence(clauses)
        if a.kind == "presence" and a.keys:
            for c in clauses:  # "Does it need to be scrapped?" - "scrapping is not necessary"
                if any(stem in a.keys and neg and stem not in _PART_STEMS for stem, neg in c.stems):
                    v = False
        if v is not None and a.kind == "normal":
            v = not v
    if v is not None:
        return v, "claim"
    if not clauses and len(read):
        return None, None
    v = _lone_word(t)
    return (v, "word") if v is not None else (None, None)


def contradicts(text: str | None, question: str | None) -> bool:
    """Whether the words after an answer's leading yes/no say the opposite: "No. There is a small crack in
    the centre" to "Is the defect in the centre?". A guided answer (models/guide.py) is given that word by
    the detection and written on by the model from its own reading of the pair, so the two can disagree."""
    m = _FIRST_WORD.match(text or "")
    if not m:
        return False
    said = verdict(text[m.end():], question)[0]
    return said is not None and said != (m.group(1).lower() == "yes")


def parse_yes_no(text: str | None) -> bool | None:
    """The answer's yes/no without a question (statements read as the answer to "is there a defect?")."""
    return verdict(text)[0]
