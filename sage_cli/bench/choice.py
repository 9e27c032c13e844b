"""Reading the option letter an MMAD answer picks, out of free text (`parse_choice`)."""

from __future__ import annotations

import re

from sage_cli.bench.lexicon import norm
from sage_cli.bench.verdict import explicit_yes_no, parse_yes_no

_LETTER_ONLY = re.compile(r"^[\s*_`\"'(\[]*([a-z])[\s*_`\"')\].:]*$", re.IGNORECASE)
_LETTER_LEAD = re.compile(r"^[\s*_`\"'(\[]*(?:(?:final\s+)?(?:answer|option|choice)\s*[:\-]?\s*)?[(\[]?([a-z])\s*[).:\]]",
                          re.IGNORECASE)
_LETTER_SAID = re.compile(r"\b(?:answer|option|choice)\s*(?:is|would be|:|-)?\s*[\"'*(\[]*([a-z])(?=$|[).:\]\s,;\"'*])",
                          re.IGNORECASE)
_WORDS = re.compile(r"[a-z0-9]+")
# A capital letter standing alone; "A" and "I" followed by a word are the article and the pronoun.
_LETTER_ALONE = re.compile(r"(?<![\w'])(?:([B-HJ-Z])|([AI])(?!\s+[a-z]))(?![\w'])")


def _words(text: str) -> str:
    return " ".join(_WORDS.findall(norm(text)))


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
