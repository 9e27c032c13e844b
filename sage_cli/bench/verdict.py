"""Reading a verdict out of free text: yes/no for the QA formats, an option letter for MMAD.

Yes/no (`parse_yes_no`), in order:

1. an explicit word at the start ("Yes — a scratch", "No, the part looks normal", "True.", "Negative."),
   except a "No" that begins a statement ("No defects found" is step 4);
2. "the answer is yes" / "answer: no" anywhere;
3. a hedge ("I cannot tell", "not sure", "unclear") → no verdict, even if a defect is named after it;
4. a statement about the part ("There is a defect on the rim", "Defect present" → yes; "The surface is
   free of defects", "Not defective", "no defects found" → no): the earliest such statement wins;
5. a lone yes-word or no-word elsewhere in the text, if only one kind occurs;
otherwise None.

A statement (step 4) says whether the part has a defect, not what the answer to the question is. Without
the question (`parse_yes_no`) it is read as the answer to "is there a defect?". `verdict(text, question)`
also reads the question: when its "yes" means *normal* ("Is it free of defects?", "Can it be released?",
"Is it consistent with the reference?"), a statement's verdict is flipped, so "The surface is free of
defects" answers "Is it free of defects?" with yes. Explicit words (steps 1, 2, 5) are never flipped:
the QA `answer` field is the truth of the question as asked, and "No" means no.
"""

from __future__ import annotations

import re

YES, NO = True, False

_YES_WORDS = r"yes|yeah|yep|true|correct|affirmative|positive"
_NO_WORDS = r"no|nope|false|incorrect|negative"

# "Answer:", "A:", "Final answer -", markdown emphasis and quotes before the verdict word.
_LEAD = re.compile(r"^(?:\s|[*_`#>\"'(\[])*(?:(?:final\s+)?(?:answer|verdict|response|a)\s*[:\-]\s*)?(?:\s|[*_`\"'(\[])*")
_FIRST = re.compile(rf"^(?:(?P<yes>{_YES_WORDS})|(?P<no>{_NO_WORDS}))\b(?!-)")
_ANSWER_IS = re.compile(rf"\banswer\s*(?:is|would be|:)\s*[\"'*(]*(?:(?P<yes>{_YES_WORDS})|(?P<no>{_NO_WORDS}))\b")
_HEDGE = re.compile(r"\b(?:can ?not|can't|cannot|unable to|impossible to|hard to|difficult to)\s+(?:tell|say|determine|"
                    r"judge|decide|see|assess)|\bnot (?:sure|certain|clear)\b|\bunclear\b|\bunsure\b|"
                    r"\bundetermin|\binconclusive\b|\bi don'?t know\b")

_DEFECT = ("(?:defects?|anomal(?:y|ies)|flaws?|damages?|faults?|scratch(?:es)?|cracks?|dents?|holes?|stains?|"
           "contaminations?|breaks?|chips?|tears?|cuts?|spots?|marks?|discolou?rations?|deformations?|"
           "irregularit(?:y|ies)|abnormalit(?:y|ies)|problems?|issues?)")
_BAD = r"(?:defective|damaged|broken|abnormal|anomalous|cracked|scratched|dented|stained|contaminated|faulty|flawed)"
_GOOD = r"(?:normal|intact|flawless|fine|perfect|good|acceptable|clean|undamaged|defect-free|defect free)"
_NOT = r"(?:not|never|isn't|aren't|doesn't|don't)"
_MAYBE_WORD = rf"(?:(?!{_NOT}\b)\w+\s+)?"  # one optional adverb ("looks perfectly normal"), never a negation

_ABSENT = re.compile(
    rf"\bno\s+(?:\w+\s+){{0,2}}?{_DEFECT}\b"  # "no defects", "no visible scratch", "no obvious surface damage"
    rf"|\b{_NOT}\s+(?:\w+\s+)?{_BAD}"  # "not defective", "not visibly damaged"
    rf"|\bnon-?{_BAD}"
    rf"|\bfree\s+(?:of|from)\b|\bdefect[- ]free\b|\bwithout\s+(?:any\s+)?(?:\w+\s+)?{_DEFECT}\b"
    rf"|\b(?:is|are|looks?|appears?|seems?|remains?)\s+{_MAYBE_WORD}{_GOOD}\b"
    rf"|\bnothing\s+(?:is\s+)?(?:wrong|abnormal|unusual|anomalous)"
    rf"|\b(?:does|do|did)\s*n[o']t\s+(?:\w+\s+)?(?:have|show|contain|exhibit|display)\b"
    rf"|\bthere\s+(?:is|are)\s+no\b|\b(?:found|detected|see|saw)\s+no\b|\bnone\b"
    rf"|\b(?:is|are|looks?|appears?)\s+as\s+(?:it|they)\s+should\b"
    rf"|^{_GOOD}\b"
)
_PRESENT = re.compile(
    rf"\b{_DEFECT}\s+(?:is\s+|are\s+)?(?:present|found|detected|visible|exists?|observed|identified|seen)\b"
    rf"|\bthere\s+(?:is|are|appears? to be|seems? to be)\s+(?!no\b)(?:\w+\s+){{0,3}}?{_DEFECT}\b"
    rf"|\b(?:is|are|looks?|appears?|seems?)\s+{_MAYBE_WORD}{_BAD}"
    rf"|\b{_NOT}\s+{_GOOD}\b"  # "not normal"
    rf"|\b(?:has|have|shows?|contains?|exhibits?|displays?)\s+(?:a|an|some|one|two|several|visible|clear)\s+(?:\w+\s+){{0,2}}?{_DEFECT}\b"
    rf"|^(?:a|an|one|the)?\s*(?:\w+\s+)?{_DEFECT}\b"  # a bare noun phrase: "Defect present", "A scratch on the rim"
    rf"|^{_BAD}\b|\b(?:a|an)\s+(?:\w+\s+)?{_BAD}\s+\w+"  # "a defective hazelnut"
    rf"|\bsomething\s+(?:is\s+)?wrong\b|\b{_NOT}\s+as\s+(?:it|they)\s+should\b"
)
# "No defects found", "No visible damage": a statement about the part, not the word "No".
_NO_NOUN = re.compile(rf"^no\s+(?:\w+\s+){{0,2}}?{_DEFECT}\b")
_YES_ANY = re.compile(r"\b(?:yes|true)\b")  # elsewhere in a sentence only the plain words count
_NO_ANY = re.compile(r"\b(?:no|false)\b")

# Questions whose "yes" means the part is normal: a statement about the part answers them the other way.
_ASKS_NORMAL = re.compile(
    r"\bfree\s+(?:of|from)\b|\bdefect[- ]free\b|\bsame\s+as\b|\bconsistent\s+with\b"
    rf"|\bwithout\s+(?:any\s+)?(?:\w+\s+)?(?:{_DEFECT}|rework)\b"
    r"|\bas\s+(?:it|they)\s+should\b|\bas\s+intact\b|\bintact\b|\bpass\b|\breleased?\b|\bfit\s+to\b"
    r"|\b(?:look|looks|is|are)\s+(?:\w+\s+)?(?:normal|flawless|acceptable|undamaged)\b|\bin\s+good\s+condition\b"
)
# Questions whose "yes" means the part has a defect: the ones a detection score can be read from.
_ASKS_DEFECT = re.compile(
    rf"\b(?:any|a|an)\s+(?:\w+\s+)?{_DEFECT}\b|\bdefective\b|\banything\s+wrong\b|\babnormal\b|\banomalous\b|\bdamaged\b"
)


def _norm(text: str | None) -> str:
    t = (text or "").strip().lower()
    for a, b in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2014", " - "), ("\u2013", " - ")):
        t = t.replace(a, b)
    return " ".join(t.split())


def explicit_yes_no(text: str | None) -> bool | None:
    """Steps 1 and 2 only: a yes/no word leading the text or after "answer is"; never statements."""
    t = _norm(text)
    if not t:
        return None
    lead = _LEAD.sub("", t, count=1)
    m = _FIRST.match(lead)
    if m and not _NO_NOUN.match(lead):
        return YES if m.group("yes") else NO
    m = _ANSWER_IS.search(t)
    if m:
        return YES if m.group("yes") else NO
    return None


def defect_claim(text: str | None) -> bool | None:
    """Step 4: True if the text says the part has a defect, False if it says it has none, None if neither."""
    t = _norm(text)
    if not t:
        return None
    t = _LEAD.sub("", t, count=1)
    absent, present = _ABSENT.search(t), _PRESENT.search(t)
    if absent and (not present or absent.start() <= present.start()):
        return False
    if present:
        return True
    return None


def _lone_word(t: str) -> bool | None:
    yes, no = bool(_YES_ANY.search(t)), bool(_NO_ANY.search(t))
    if yes != no:
        return YES if yes else NO
    return None


def parse_yes_no(text: str | None) -> bool | None:
    """The answer's yes/no (True/False), or None when the text gives no clear one; see the module doc."""
    return verdict(text)[0]


def verdict(text: str | None, question: str | None = None) -> tuple[bool | None, str | None]:
    """(yes/no or None, how it was read: "word" | "claim" | None). `question` flips statements (module doc)."""
    t = _norm(text)
    if not t:
        return None, None
    v = explicit_yes_no(t)
    if v is not None:
        return v, "word"
    if _HEDGE.search(t):
        return None, None
    claim = defect_claim(t)
    if claim is not None:
        return (not claim if asks_normal(question) else claim), "claim"
    v = _lone_word(t)
    return (v, "word") if v is not None else (None, None)


def asks_normal(question: str | None) -> bool:
    """Whether "yes" to `question` means the part is normal ("Is it free of defects?")."""
    return bool(question) and bool(_ASKS_NORMAL.search(_norm(question)))


def detection_polarity(question: str) -> int | None:
    """+1 if "yes" means defective ("Is there any defect?"), -1 if it means normal ("Is it free of
    defects?"), None if the question is not about whether the part is defective at all."""
    if asks_normal(question):
        return -1
    if _ASKS_DEFECT.search(_norm(question)):
        return +1
    return None


# ------------------------------------------------------------------------------------------- MMAD letters

_LETTER_ONLY = re.compile(r"^[\s*_`\"'(\[]*([a-z])[\s*_`\"')\].:]*$", re.IGNORECASE)
_LETTER_LEAD = re.compile(r"^[\s*_`\"'(\[]*(?:(?:final\s+)?(?:answer|option|choice)\s*[:\-]?\s*)?[(\[]?([a-z])\s*[).:\]]",
                          re.IGNORECASE)
_LETTER_SAID = re.compile(r"\b(?:answer|option|choice)\s*(?:is|would be|:|-)?\s*[\"'*(\[]*([a-z])(?=$|[).:\]\s,;\"'*])",
                          re.IGNORECASE)
_WORDS = re.compile(r"[a-z0-9]+")
# A capital letter standing alone; "A" and "I" followed by a word are the article and the pronoun.
_LETTER_ALONE = re.compile(r"(?<![\w'])(?:([B-HJ-Z])|([AI])(?!\s+[a-z]))(?![\w'])")


def _words(text: str) -> str:
    return " ".join(_WORDS.findall(_norm(text)))


def parse_choice(text: str | None, options: dict[str, str]) -> str | None:
    """The option letter an answer picks (a key of `options`), or None.

    Tried in order: the text is a letter ("B", "(C)", "b."); it starts with one and a delimiter
    ("A) scratch", "C. Stain"); it says "answer is D" / "Answer: D." / "option B"; for a Yes/No pair of
    options, its yes/no (`parse_yes_no`); the text of exactly one option appears in it as whole words
    (the longest wins when one option's text contains another's); one option letter stands alone in it
    in capitals ("I think B fits"). An article ("a scratch") is not a letter unless a delimiter follows.
    """
    t = (text or "").strip()
    if not t or not options:
        return None
    by_upper = {k.upper(): k for k in options}

    def pick(letter: str | None) -> str | None:
        return by_upper.get(letter.upper()) if letter else None

    for rx in (_LETTER_ONLY, _LETTER_LEAD):
        m = rx.match(t)
        if m and pick(m.group(1)):
            return pick(m.group(1))
    for m in _LETTER_SAID.finditer(t):
        letter = m.group(1)
        after = t[m.end(1):m.end(1) + 1]
        # "the answer is a scratch": a lower-case "a" followed by a space is the article
        if (letter.isupper() or after in ("", ")", ".", ":", "]")) and pick(letter):
            return pick(letter)
    polar = {k: explicit_yes_no(v) for k, v in options.items()}
    if len(options) == 2 and set(polar.values()) == {True, False}:
        yn = parse_yes_no(t)
        if yn is not None:
            return next(k for k, v in polar.items() if v == yn)
    said = _words(t)
    hits = [k for k, v in options.items() if _words(v) and re.search(rf"\b{re.escape(_words(v))}\b", said)]
    if hits:
        longest = max(hits, key=lambda k: len(_words(options[k])))
        if all(_words(options[k]) in _words(options[longest]) for k in hits):
            return longest
        return None
    alone = {m.group(1) or m.group(2) for m in _LETTER_ALONE.finditer(t)} & set(by_upper)
    if len(alone) == 1:
        return pick(alone.pop())
    return None
