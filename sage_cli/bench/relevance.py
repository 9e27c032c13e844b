"""Whether an answer answers the question asked, beyond its yes/no.

A model can learn to answer every question with one sentence pattern ("Yes. A small pasted-in patch in
the lower right"), whatever was asked. `answers_question(question, answer)` says whether the answer
carries what the question's kind (`asks.ask`) asks for:

* location ("Is the damage near the top-left corner?"): a place (a side, corner, edge, centre, or the
  part the question names);
* type ("Is the flaw a fracture?"): a defect kind;
* size ("Is the flaw on this wall small?"): a size word ("tiny", "large") or the share of the image it covers;
* other, mostly consequence or cause ("Could it stop the part from working?"): a consequence or cause
  word, or that it does not matter ("cosmetic", "harmless");
* presence / normal ("Is it free of defects?", "Can it be shipped?"): a verdict its words give (the
  grader read it from the words, not from P(yes)).

An answer saying the part has no defect at all answers a location, type or consequence question too
("No. There is no defect on it": nothing to place). Empty answers answer nothing. This says nothing about
whether the content is right: the yes/no grade does that.
"""

from __future__ import annotations

from sage_cli.bench import lexicon as lx
from sage_cli.bench.asks import Ask, ask

WORD_SOURCES = ("word", "claim", "paper", "judge")  # verdict sources that read the answer's words


def _no_defect(tokens: list[str]) -> bool:
    """The answer says there is no defect: a negated defect word, or a word that the part is normal."""
    for i, w in enumerate(tokens):
        if lx.is_defect_word(w) and lx.negated(tokens, i):
            return True
    return bool(set(tokens) & {"normal", "intact", "flawless", "undamaged", "defect-free", "nothing"})


def answers_question(question: str, answer: str, verdict_source: str | None = None, asked: Ask | None = None) -> bool:
    """Whether `answer` carries what `question` asks for (module doc); `asked`: `ask(question)` when the
    caller has it already."""
    tokens = lx.words(answer)
    if not tokens:
        return False
    asked = asked or ask(question)
    kind = asked.kind
    if kind in ("presence", "normal"):
        return verdict_source in WORD_SOURCES if verdict_source is not None else True
    if _no_defect(tokens):
        return True
    if kind == "location":
        said = lx.places(tokens) or ({"side"} if "side" in tokens else set())
        text = " ".join(tokens)
        return bool(said) or any(p in text for p in asked.places if " " in p or p not in lx.PLACE_WORDS)
    if kind == "type":
        return any(lx.type_of(tokens, i) for i in range(len(tokens)))
    if kind == "size":
        return any(lx.size_of(w) for w in tokens) or "%" in answer or "percent" in tokens
    return any(lx.is_consequence_word(w) or w in lx.NO_CONSEQUENCE for w in tokens)
