"""What a yes/no inspection question asks, so that a statement can be read as its answer.

`ask(question)` sorts a question into one of five kinds:

* ``presence``: "yes" means the part has a defect ("Is there any defect?", "Is it damaged?", "Does it
  need rework?", "Are there differences between the images?");
* ``normal``: "yes" means the part is normal ("Is it free of defects?", "Can it be shipped as it is?",
  "Is it the same as the reference?", "Does it pass inspection?");
* ``type``: whether the defect is of a named kind ("Is the defect a crack?", "Is there a scratch?");
* ``location``: whether the defect is at a named place ("Is the anomaly on the right side?");
* ``size``: whether the defect is of a named size ("Is the flaw on this wall small?": the size word ends it);
* ``other``: anything else, mostly consequences and causes ("Could this cause leakage?").

An asker's wrapper ("Would you say", "Can you spot", "Do you notice") is dropped first: the question is
what follows it. A decision is read next, by its verb ("Should it be rejected?": presence; "Can it be shipped?",
"Would you accept it?": normal). Then kinds are tried in the order size, location, other (a consequence
or cause), type, normal, presence: "Could the crack cause leakage?" is a consequence, "Is the crack on the
left?" a location question.
The word lists (`lexicon`) are shared with the answer reader in `verdict.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sage_cli.bench import lexicon as lx


@dataclass(frozen=True)
class Ask:
    kind: str  # presence | normal | type | location | size | other
    types: frozenset[str] = frozenset()  # canonical defect types named by a type question
    places: frozenset[str] = frozenset()  # canonical places, or part names ("head"), of a location question
    sizes: frozenset[str] = frozenset()  # the size bucket a size question names (lexicon.size_of)
    keys: tuple[str, ...] = ()  # the question's content-word stems (an "other" question's answer may echo them)
    good: bool = False  # an "other" question whose yes is the good outcome ("Will it still work?")

    @property
    def polarity(self) -> int | None:
        """+1 if "yes" means defective, -1 if it means normal, None if it says neither."""
        return {"presence": +1, "normal": -1}.get(self.kind)


_CONSEQUENCE = re.compile(
    r"\b(?:lead to|leads to|leading to|cause|causes|caused|result in|results in|affect|affects|affected|impact|"
    r"impacts|compromise|weaken|reduce|impair|degrade|shorten|spoil|harm|fail|failure|leak|leakage|risk|danger|"
    r"dangerous|safety|performance|reliability|lifetime|lifespan|durability|due to|origin|originate|because|why|"
    r"spread|worsen|grow|likely|probably|possibly|source|expose|noticeable|notice|removed?|polish\w*|repairable|"
    r"fixed|dispense|hold|seal|conduct|short|cosmetic)\b")
_MODAL_START = re.compile(r"^(?:could|can|will|would|might|may|should|must|is it likely|is this likely|"
                          r"does this (?!\w+ (?:have|has|show|shows|contain|look)\b)|"
                          r"does it (?:need|require|affect|cause))\b")
_ACCEPT = {"accept", "accepted", "ship", "shipped", "release", "released", "pass", "passed", "approve", "approved",
           "use", "used", "sell", "sold", "deliver", "delivered", "install", "installed"}
_DECISION = re.compile(r"^(?:should|would|will|do|can|could|may|must|does|is|are)\b[^?]*?"
                       r"\b(?:be|you|we|to|need|needs|i)\s+(?:\w+\s+)?(accept|accepted|ship|"
                       r"shipped|release|released|pass|passed|approve|approved|use|used|sell|sold|deliver|delivered|"
                       r"install|installed|reject|rejected|scrap|scrapped|rework|reworked|repair|repaired|discard|"
                       r"discarded|return|returned|replace|replaced)\b(?![^?]*\b(?:cause|lead|affect|because)\b)")
_GOOD_ASK = re.compile(r"\b(?:still|correct|correctly|properly|safely|safe|usable|functional|function normally|work|"
                       r"works|working|operate|intact|reliable|sealed?|fit)\b")
_NORMAL_Q = re.compile(
    r"\bfree\s+(?:of|from)\b|\bdefect[- ]?free\b|\bflawless\b|\bsame\b|\bidentical\b|\bconsistent\b|\bmatch(?:es)?\b"
    r"|\bas\s+(?:it|they)\s+should\b|\bas\s+expected\b|\bintact\b|\bpass(?:es)?\b|\bship(?:ped|pable)?\b"
    r"|\breleas(?:e|ed)\b|\baccept(?:ed|able)?\b|\busable\b|\bfit\s+(?:for|to)\b|\bgood\b|\bok(?:ay)?\b"
    r"|\bnormal\b|\bfine\b|\bundamaged\b|\bperfect\b|\bunblemished\b|\bclean\b|\bwithout\s+(?:any\s+)?(?:\w+\s+)?"
    r"(?:defects?|flaws?|damage|anomal(?:y|ies)|rework|repair|problems?|issues?)\b|\bas\s+is\b|\bqualified\b"
    r"|\bcorrect(?:ly)?\b|\bproper(?:ly)?\b|\bfunctional\b|\bwork(?:s|ing)?\b|\bin-place\b|\bmeets?\b"
    r"|\bspecification\b|\bspec\b|\bstandards?\b|\btolerance\b|\bconform\w*\b")
# "Is the scratch on the head of the screw?": the part named after the preposition is the place asked.
_ON_PART = re.compile(r"\b(?:on|at|in|near|along|around|inside)\s+(?:the|its|a|an)\s+((?:[a-z-]+\s+)?[a-z]+)"
                      r"(?=\s+of\b|\s*\?|\s*$)")
_STOP = {"the", "a", "an", "is", "are", "was", "were", "be", "been", "this", "that", "these", "those", "it", "its",
         "there", "any", "some", "of", "on", "in", "at", "to", "for", "with", "by", "from", "and", "or", "does", "do",
         "did", "can", "could", "will", "would", "might", "may", "should", "must", "has", "have", "had", "test",
         "image", "object", "part", "product", "sample", "item", "reference", "defect", "defects", "anomaly",
         "damage", "flaw", "shown", "visible", "picture", "photo", "what", "which", "how", "why", "likely",
         "still", "as", "than", "into", "onto", "upon", "each", "other", "more", "less", "much", "very", "being",
         "result", "cause", "caused", "lead", "affect", "well"}
_NOT_PLACE = {"surface", "image", "picture", "photo", "test", "reference", "object", "part", "product", "sample",
              "item", "same", "way", "form", "view", "area", "region", "middle", "center", "centre", "left", "right",
              "top", "bottom", "edge", "corner", "side"}


# "Would you say ...", "Can you spot ...", "Do you notice ...", "Would I find ...": the asker's wrapper, not a
# consequence; the question is what follows it.
_WRAPPER = re.compile(r"^(?:would|do|does|can|could|will|did)\s+(?:you|i|we|one)\s+(?:say|think|consider|describe|call|"
                      r"notice|see|spot|find|observe|agree|detect|identify|classify)\b(?:\s+that\b)?\s*")
# Decisions put without the verbs of _DECISION: "take it out of the batch", "send it back" (reject); "send it
# on to the customer" (accept).
_REJECT = re.compile(r"\b(?:take|pull|set|remove)\s+(?:\w+\s+){0,3}(?:out\s+of|aside|off\s+the\s+line)\b"
                     r"|\bsen[dt]\s+(?:\w+\s+){0,2}back\b|\bsort(?:ed)?\s+out\b|\bfails?\s+(?:the\s+|its\s+)?"
                     r"(?:inspection|check|quality)\b|\ba\s+reject\b|\bpull(?:ed)?\s+(?:from|off)\s+the\s+line\b")
_SEND_ON = re.compile(r"\bsen[dt]\s+(?:\w+\s+){0,3}(?:on\s+to|to)\s+(?:the\s+)?(?:customer|client|buyer|next)\w*\b"
                      r"|\b(?:go|move)\s+on\s+to\s+the\s+next\b|\bready\s+(?:for|to)\s+(?:delivery|deliver|shipping|"
                      r"ship|use|sale|assembly)\b|\bpass(?:es)?\s+(?:a\s+|the\s+)?(?:visual\s+|final\s+)?"
                      r"(?:inspection|check|quality\s+control|qc)\b")
# "Does it affect how it works?": a harm done to working, so yes is the bad outcome despite "works"
_HARM = re.compile(r"\b(?:affect|affects|impair|impairs|compromise|harm|hurt|reduce|degrade|weaken|stop|prevent|"
                   r"fail|problem)\b")
# "compared with a good hazelnut": the reference named, not a question whether the part is good
_GOOD_REFERENCE = re.compile(r"\b(?:with|than|as|that|to)\s+a\s+good\s+[a-z-]+")


def _keys(words: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(w[:5] for w in words if w.isalpha() and len(w) > 3 and w not in _STOP))


def ask(question: str | None) -> Ask:
    """The kind of a yes/no question (module doc); `other` for an empty or unrecognised one."""
    words = lx.words(question or "")
    if not words:
        return Ask("other")
    text = " ".join(words)
    if _REJECT.search(text):
        return Ask("presence", keys=("rejec",))
    if _SEND_ON.search(text):
        return Ask("normal", keys=("ship",))
    wrapper = _WRAPPER.match(text)
    if wrapper and len(words) > len(wrapper.group(0).split()) + 1:
        words = words[len(wrapper.group(0).split()):]
        text = " ".join(words)
    places = lx.places(words)
    parts = {m.group(1) for m in _ON_PART.finditer(text)
             if not set(m.group(1).split()) & (_NOT_PLACE | lx.PLACE_WORDS | {"half", "part", "area", "region"})}
    subject_is_defect = bool(re.match(r"^(?:is|are|was)\s+(?:the|this|that|it|its)\b", text)) and \
        lx.mentions_defect(words[:6] + ["defect"] if re.match(r"^(?:is|are)\s+(?:it|this|that)\b", text) else words[:6])
    content = [w for w in words if w.isalnum() or "-" in w]
    size = lx.size_of(content[-1]) if content else None
    if size and (lx.mentions_defect(words) or re.match(r"^(?:is|are)\s+(?:it|this|that|they)\b", text)):
        return Ask("size", sizes=frozenset({size}))  # "Is the flaw small?"; "Is there a small crack?" is not
    decision = _DECISION.match(text)
    if decision:  # "Should this part be accepted?" / "Does it need to be scrapped?": the verb may be echoed
        return Ask("normal" if decision.group(1) in _ACCEPT else "presence", keys=(decision.group(1)[:5],))
    modal = bool(_MODAL_START.match(text))
    consequence = modal or bool(_CONSEQUENCE.search(text))
    about_defect = lx.mentions_defect(words) or bool(set(words[:3]) & {"it", "this", "that", "they"})
    normal = bool(_NORMAL_Q.search(_GOOD_REFERENCE.sub(" ", text))) and not re.search(r"\bnot\s+(?:normal|fine|ok|okay|intact|acceptable)\b",
                                                            text)
    if ((places and about_defect and not normal) or (parts and subject_is_defect)) and not consequence:
        return Ask("location", places=frozenset(places | parts))
    if consequence and not re.match(r"^(?:can|could|may)\s+(?:it|this(?: \w+)?|the \w+)\s+(?:still\s+)?be\s+(?:shipped|released|used|"
                                    r"accepted|sold|delivered|passed)\b", text):
        return Ask("other", keys=_keys(words), good=_good(text))
    types = lx.types_named(words)
    if types and not (normal and re.search(r"\bfree\s+(?:of|from)\b|\bwithout\b", text)):
        return Ask("type", types=frozenset(types))
    if normal:
        return Ask("normal")
    if lx.mentions_defect(words) or re.search(r"\b(?:differ|differs|difference|differences|different|deviat\w*|"
                                              r"wrong|rework\w*|reject\w*|scrap\w*|repair\w*|discard\w*|replace\w*|"
                                              r"unusual|odd|abnormal\w*|anomal\w*)\b", text):
        return Ask("presence")
    return Ask("other", keys=_keys(words), good=_good(text))


def _good(text: str) -> bool:
    """Whether yes to a consequence question is the good outcome ("Will it still work?")."""
    return bool(_GOOD_ASK.search(text)) and not _HARM.search(text)


def detection_polarity(question: str | None) -> int | None:
    """+1 if "yes" to `question` means defective ("Is there any defect?"), -1 if it means normal ("Is it
    free of defects?"), None if the question is not plainly about whether the part is defective."""
    return ask(question).polarity


def asks_normal(question: str | None) -> bool:
    """Whether "yes" to `question` means the part is normal."""
    return ask(question).kind == "normal"
