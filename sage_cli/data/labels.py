"""Whether a QA group's test object is anomalous, read from what the group itself says.

`anomaly_label(group)` returns ``(anomalous, source)``: True (defective), False (normal) or None (the
group does not say), and how it was found. The first rule that gives an answer wins, most trusted first:

1. ``"annotation"``: the group has an annotated ``defect`` (→ True), or its ``anomalous`` was set from
   the data set's own labels (``label_source == "annotation"``: the builder's MVTec/VisA/MMAD folder
   label, an explicit label field of a MANTA record).
2. ``"conclusion"``: the conclusion text (`conclusion_claim`). It is cut into clauses (at . ; : ! ?, at
   "but", "however", "although", "except", "apart from", ..., and at "and" before a new statement). A clause that names a defect ("shows a
   dent", "the tablet is broken", "a chipped edge", "an abnormality") says True unless a negation comes
   before it in the clause ("no visible cracks", "does not show any damage", "free of defects"); one
   that says the object is normal ("is normal", "intact", "identical to / the same as / consistent
   with the reference", "no differences") says False, or True when negated ("is not the same as the
   reference"); one that says it differs ("differs from the reference", "there are differences") says
   True, or False when negated. A clause none of these fit is read by `verdict.defect_claim`. Any
   clause saying True makes the conclusion True ("normal except for a small scratch" is defective);
   otherwise any clause saying False makes it False.
3. ``"question:<q>"``: the first question (in order; ``<q>`` its 0-based index) whose answer says
   whether the object is defective. Generic ones count both ways: "Is there any defect / abnormality /
   difference?", "Does the test image show any abnormality compared with the reference?", "Is it
   defective / abnormal?" (yes = defective) and "Is it normal / free of defects / identical to (the
   same as, consistent with) the reference?" (yes = normal). Specific ones count only when the answer
   implies a defect, since a part can be flawed in another way: "Is the tablet broken?", "Is there a
   scratch?" answered yes; "Is the object's color the same as the reference?", "Is it intact?"
   answered no. A question our rules do not place but `verdict.detection_polarity` does is taken as
   specific. Questions about the reference image ("Is there a defect in the reference image?") are
   skipped.
4. ``"presupposition:<q>"``: the first question that takes a defect for granted and is answered yes:
   "Is the crack on the left?", "Is the defect type a scratch?", "Was the dent caused by impact?"
   (a definite "the/this/its" before a defect word, or "type/kind/cause of the defect").
5. ``"pair_type"``: the record's raw pair_type word when it names one side ("normal-normal pair",
   "abnormal"); the difficulty-level words (standard / identification / diagnosis) say nothing.

Otherwise ``(None, None)``. Readers store the result in ``QAGroup.anomalous`` / ``label_source``.
"""

from __future__ import annotations

import re

from sage_cli.data.records import LABEL_ANNOTATION

# Nouns and adjectives that name a defect (a superset of bench.verdict's, for data rather than answers).
_NOUNS = (r"defects?|anomal(?:y|ies)|abnormalit(?:y|ies)|flaws?|faults?|damages?|cracks?|scratch(?:es)?|dents?|"
          r"stains?|contaminations?|contaminants?|breakages?|fractures?|burrs?|deformations?|discolou?rations?|"
          r"impurit(?:y|ies)|foreign\s+(?:matter|objects?|bod(?:y|ies)|particles?)|residues?|rust|corrosion|"
          r"blemish(?:es)?|missing\s+(?:parts?|pieces?|pins?|components?)|irregularit(?:y|ies)|imperfections?|"
          r"abrasions?|punctures?|misalignments?")
# Nouns that also name objects or their parts ("the chip", "the hole of the nut", "the spot welds"): they
# count only after an article, quantifier or verb that makes them a finding ("a dark spot", "has holes").
_AMBIGUOUS = (r"chips?|holes?|spots?|marks?|pits?|bubbles?|cuts?|breaks?|tears?|wear|insects?|leaks?|bends?|"
              r"wrinkles?|burns?|notch(?:es)?|fragments?|mou?lds?|gaps?|streaks?")
_ADJS = (r"defective|damaged|broken|cracked|scratched|dented|stained|contaminated|deformed|bent|chipped|torn|"
         r"missing|abnormal|anomalous|faulty|flawed|discolou?red|mou?ldy|rusty|rusted|corroded|burnt|burned|"
         r"fractured|punctured|misaligned|crooked|dirty|worn|split|crushed|shattered|incomplete")
_DEFECT_WORD = re.compile(rf"\b(?:(?P<clear>{_NOUNS}|{_ADJS})|(?P<ambiguous>{_AMBIGUOUS}))\b")
_LEAD_IN = {"a", "an", "some", "any", "no", "several", "many", "multiple", "few", "one", "two", "three", "small",
            "large", "tiny", "big", "visible", "obvious", "clear", "with", "has", "have", "shows", "show", "showing",
            "contains", "containing", "is", "are", "extra", "additional", "dark", "black", "white", "brown", "new"}
_NORMAL_ADJ = {"normal", "intact", "good", "perfect", "undamaged", "complete", "clean", "qualified", "same",
               "identical", "test", "reference", "the", "this", "its"}


def _singular(word: str) -> str:
    return word[:-2] if word.endswith("es") and word[:-2].endswith(("sh", "ch", "x")) else word.rstrip("s")


def _defect_hits(text: str, category: str | None = None):
    """The defect words of `text` that are findings, not the object's own name (see _AMBIGUOUS)."""
    cat = {_singular(w) for w in re.findall(r"[a-z]+", (category or "").lower())}
    for m in _DEFECT_WORD.finditer(text):
        if _singular(m.group(0).split()[-1]) in cat:
            continue
        if m.group("ambiguous"):
            before = re.findall(r"[a-z']+", text[: m.start()])[-3:]
            if not before or before[-1] in _NORMAL_ADJ or not _LEAD_IN.intersection(before):
                continue
        yield m


_NORMAL_WORD = re.compile(
    r"\bnormal\b|\bintact\b|\bflawless\b|\bdefect[- ]free\b|\bundamaged\b|\bunbroken\b|\bperfect(?:ly)?\b|"
    r"\bqualified\b|\bacceptable\b|\bin\s+good\s+condition\b|\bidentical\b|\bthe\s+same\b|\bconsistent\s+with\b|"
    r"\bmatch(?:es|ing)?\b|\bno\s+(?:\w+\s+)?(?:differences?|changes?)\b|\bcan\s+pass\b|\bpasses\b"
    r"|\blike\s+(?:that\s+of\s+|those\s+(?:of|in)\s+|the\s+one\s+in\s+)?the\s+reference\b"
)
_DIFFER = re.compile(r"\bdiffer(?:s|ent|ence|ences)?\b|\bdissimilar\b|\bdeviat(?:es?|ions?)\b|\bunlike\b")
_NEG = re.compile(r"\b(?:no|not|never|without|nor|neither|none|cannot|lacks?|absence|free\s+(?:of|from))\b|n't\b")
_SPLIT = re.compile(r"[.;:!?]+|\s+-\s+|,?\s*\b(?:but|however|although|though|whereas|while|except|apart\s+from|"
                    r"other\s+than|aside\s+from|besides|yet)\b"
                    # "has no husk and shows a dark spot": "and" before a new statement, not in "no cracks and dents"
                    r"|,?\s*\band\s+(?=(?:it|its|the|there|this|that|shows?|has|have|is|are|was|were|appears?|looks?|"
                    r"seems?|contains?|displays?|exhibits?)\b)")


def _norm(text: str | None) -> str:
    t = (text or "").lower()
    for a, b in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'), ("\u2014", " - "), ("\u2013", " - ")):
        t = t.replace(a, b)
    return " ".join(t.split())


def _negated_before(clause: str, pos: int) -> bool:
    return bool(_NEG.search(clause[:pos]))


def _clause_claim(clause: str, category: str | None = None) -> bool | None:
    m = next(_defect_hits(clause, category), None)
    if m:
        # "not normal" style is handled below; "no cracks", "does not show damage", "free of defects" here
        return not _negated_before(clause, m.start())
    m = _NORMAL_WORD.search(clause)
    if m:
        if m.group(0).startswith("no "):  # "no differences"
            return False
        return _negated_before(clause, m.start())  # "is not the same as the reference" → defective
    m = _DIFFER.search(clause)
    if m:
        return not _negated_before(clause, m.start())
    return _defect_claim(clause)


def _defect_claim(text: str) -> bool | None:
    try:
        from sage_cli.bench.verdict import defect_claim

        v = defect_claim(text)
    except Exception:  # noqa: BLE001 - a reader must not fail on the answer parser's internals
        return None
    return v if isinstance(v, bool) else None


def conclusion_claim(text: str | None, category: str | None = None) -> bool | None:
    """True if the conclusion says the test object is defective, False if normal, None if neither (rule 2).

    ``category``: the object's name, never read as a defect (category "chip": "the chip" is the object)."""
    t = _norm(text)
    if not t:
        return None
    claims = [_clause_claim(c.strip(" ,:"), category) for c in _SPLIT.split(t) if c and c.strip(" ,:")]
    if True in claims:
        return True
    if False in claims:
        return False
    return None


# ------------------------------------------------------------------------------------------ questions

_ON_REFERENCE = re.compile(r"\b(?:in|on)\s+the\s+reference\b|^(?:is|are|does|do|has|have|can)\s+the\s+reference\b")
_COMPARES = re.compile(r"\btest\b|\bsame\b|\bcompar|\bdiffer|\bconsistent\b|\bidentical\b|\bmatch|\bthan\b|"
                       r"\bas\s+in\b|\blike\b|\bboth\b|\btwo\b")


def _about_reference(t: str) -> bool:
    """A question about the reference image alone ("Is there any defect in the reference image?")."""
    return bool(_ON_REFERENCE.search(t)) and not _COMPARES.search(t)
_PROPERTY = (r"colou?rs?|shapes?|sizes?|textures?|surfaces?|positions?|orientations?|patterns?|edges?|lengths?|"
             r"widths?|thickness|brightness|shades?|hues?|outlines?|contours?|angles?|heights?|markings?|prints?|labels?|"
             r"lettering|text|glaze|coating|finish|gloss|count|number|placement|alignment")
_GENERIC_KIND = (r"defects?|anomal(?:y|ies)|abnormalit(?:y|ies)|flaws?|faults?|problems?|issues?|irregularit(?:y|ies)|"
                 r"imperfections?|differences?|discrepanc(?:y|ies)|deviations?|damages?|abnormal\s+\w+|anomalous\s+\w+")
_GENERIC_DEFECT_Q = re.compile(
    rf"\b(?:any|some|a|an|visible|obvious)\s+(?:\w+\s+){{0,2}}?(?:{_GENERIC_KIND})\b"
    r"|\bdefective\b|\babnormal\b|\banomalous\b|\bfaulty\b|\bflawed\b"
    r"|\banything\s+(?:\w+\s+)?(?:wrong|abnormal|unusual|different|anomalous)\b"
    r"|\bdiffer(?:s|ent)?\b(?:\s+\w+){0,3}?\s+(?:from|than)\b|\bdifferences?\s+between\b"
    r"|\b(?:is|are)\s+there\s+(?:\w+\s+){0,2}?differences?\b"
)
_GENERIC_NORMAL_Q = re.compile(
    r"\bnormal\b|\bfree\s+(?:of|from)\b|\bdefect[- ]free\b|\bwithout\s+(?:any\s+)?(?:\w+\s+)?(?:defects?|anomal\w*|"
    r"abnormalit\w*|flaws?|damage)\b|\bidentical\b|\bthe\s+same\s+as\b|\bconsistent\s+with\b|\bmatch(?:es)?\b"
    r"|\bqualified\b|\bacceptable\b|\bpass(?:es)?\s+(?:the\s+)?(?:quality\s+)?(?:inspection|check)\b"
    r"|\bin\s+good\s+condition\b|\bflawless\b"
)
_SPECIFIC_NORMAL_Q = re.compile(r"\bintact\b|\bcomplete\b|\bundamaged\b|\bunbroken\b|\bclean\b")
_PROPERTY_BEFORE = re.compile(rf"\b(?:{_PROPERTY})\b")
# Defect nouns that are not also names of objects or their parts ("the chip", "the hole of the nut").
_PRESUPPOSED = (r"defects?|anomal(?:y|ies)|abnormalit(?:y|ies)|flaws?|faults?|damages?|cracks?|scratch(?:es)?|dents?|"
                r"stains?|contaminations?|breakages?|fractures?|tears?|deformations?|discolou?rations?|impurit(?:y|ies)|"
                r"foreign\s+(?:matter|objects?|bod(?:y|ies)|particles?)|residues?|burrs?|rust|corrosion|blemish(?:es)?|"
                r"imperfections?|irregularit(?:y|ies)|abrasions?|punctures?|misalignments?")
_PRESUPPOSES = re.compile(
    rf"\b(?:the|this|that|these|those|its|their)\s+(?:\w+\s+){{0,2}}?(?:{_PRESUPPOSED})\b"
    rf"|\b(?:the|this|that|its)\s+(?:{_ADJS})\s+(?:area|region|part|portion|spot|section|edge|side)\b"
    r"|\b(?:type|kind|cause|category|class|location|position|size|severity)\s+of\s+(?:the\s+)?(?:defect|anomaly|damage|"
    r"abnormality|flaw)\b|\bdefect\s+type\b"
)


def question_polarity(question: str, category: str | None = None) -> tuple[int | None, bool]:
    """(+1 yes = defective / -1 yes = normal / None, generic): how a question's answer bears on the label.

    ``generic``: both answers count (rule 3); otherwise only the one that implies a defect does.
    """
    t = _norm(question)
    if not t or _about_reference(t):
        return None, False
    m = _GENERIC_NORMAL_Q.search(t)
    if m:
        # "Is the object's color the same as the reference?": only the property, not the whole object
        return -1, not _PROPERTY_BEFORE.search(t[: m.start()])
    taken = [m.span() for m in _PRESUPPOSES.finditer(t)]
    m = next((m for m in _GENERIC_DEFECT_Q.finditer(t) if not any(a <= m.start() < b for a, b in taken)), None)
    if m and not _negated_before(t, m.start()):  # not "Is the abnormal region on the left?" (rule 4)
        property_diff = "differ" in m.group(0) and _PROPERTY_BEFORE.search(t[: m.start()])
        return +1, not property_diff
    if _SPECIFIC_NORMAL_Q.search(t):
        return -1, False
    for m in _defect_hits(t, category):
        if not any(a <= m.start() < b for a, b in taken):  # not "the crack" (rule 4) nor "the test chip"
            if not _negated_before(t, m.start()):
                return +1, False  # "Is the tablet broken?", "Is there a crack?", "Is anything missing?"
            break
    if taken:  # "Is the crack on the left?": its answer says where, not whether (rule 4)
        return None, False
    try:
        from sage_cli.bench.verdict import detection_polarity

        pol = detection_polarity(question)
    except Exception:  # noqa: BLE001
        pol = None
    return (pol if pol in (1, -1) else None), False


def _from_questions(questions, category: str | None = None) -> tuple[bool | None, str | None]:
    for i, q in enumerate(questions):
        pol, generic = question_polarity(q.question, category)
        if pol is None:
            continue
        defective = bool(q.answer) if pol > 0 else not q.answer
        if defective or generic:
            return defective, f"question:{i}"
    for i, q in enumerate(questions):
        t = _norm(q.question)
        if q.answer and not _about_reference(t) and _PRESUPPOSES.search(t):
            return True, f"presupposition:{i}"
    return None, None


_PAIR_ABNORMAL = re.compile(r"\b(?:abnormal|anomalous|anomaly|anomalies|defective|ng|bad|faulty|damaged)\b")
_PAIR_NORMAL = re.compile(r"\b(?:normal|good|ok|defect[- ]free|qualified)\b")


def pair_type_claim(word: object) -> bool | None:
    """What a raw MANTA pair_type word says about the test object (rule 5), or None."""
    if not isinstance(word, str):
        return None
    t = " ".join(word.lower().replace("_", " ").replace("-", " ").split())
    if _PAIR_ABNORMAL.search(t):
        return True
    if _PAIR_NORMAL.search(t):
        return False
    return None


def anomaly_label(group, pair_type_word: object = None) -> tuple[bool | None, str | None]:
    """(anomalous, source) of a QAGroup by the rules in the module doc; ``pair_type_word`` is the raw
    pair_type of a MANTA record (the group's own ``pair_type`` is only its difficulty level)."""
    if group.defect is not None:
        return True, LABEL_ANNOTATION
    if group.anomalous is not None and group.label_source == LABEL_ANNOTATION:
        return group.anomalous, LABEL_ANNOTATION
    v = conclusion_claim(group.conclusion, group.category)
    if v is not None:
        return v, "conclusion"
    v, source = _from_questions(group.questions, group.category)
    if v is not None:
        return v, source
    v = pair_type_claim(pair_type_word)
    if v is not None:
        return v, "pair_type"
    return None, None
