"""The judge's messages (from a score recipe's rubric and template) and the strict reading of its reply."""

from __future__ import annotations

import json
import re
import string

from sage_cli.data.records import LABEL_ANNOTATION, Defect, QAGroup
from sage_cli.errors import SageError

CRITERIA = ("type", "location", "logic")
PLACEHOLDERS = ("category", "level", "question", "truth", "defect", "conclusion", "reference", "answer")
_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


class MalformedReply(ValueError):
    """The judge's reply is not the JSON object asked for; the message says what is wrong."""


def check_template(template: str) -> None:
    """SageError naming an unknown placeholder or a stray brace, before any request is sent."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise SageError(f"score recipe template: {e} (write literal braces as {{{{ }}}})") from None
    for f in fields:
        if f not in PLACEHOLDERS:
            raise SageError(f"score recipe template: unknown placeholder {{{f}}} (known: "
                            f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    if "answer" not in fields:
        raise SageError("score recipe template: it never shows the answer to grade ({answer})")


NOT_ANNOTATED = ("not annotated: whether the test object is defective is unknown, and so are the defect type "
                 "and location; judge them against the inspection conclusion and the reference answer")
TYPE_NOT_ANNOTATED = ("defective, type not annotated (take the defect type and location from the inspection "
                      "conclusion and the reference answer)")
_SAYS_NORMAL = {"conclusion": "the inspection conclusion", "pair_type": "the record's pair type"}


def describe_defect(defect: Defect | None, anomalous: bool | None = None, label_source: str | None = None) -> str:
    """What is known about the test object, in words: the annotated defect ("crack, upper left, 2.1% of the
    image"), "no defect (the test object is normal)" only when the data set's own labels say so
    (``label_source == "annotation"``), "defective, type not annotated (...)", or that nothing is known.

    ``anomalous`` / ``label_source`` are the group's (records.py); a normal label read from the record's
    text is reported as the record's claim, naming where it was read.
    """
    if defect is not None:
        parts = [defect.type]
        if defect.location:
            parts.append(defect.location)
        if defect.area_frac is not None:
            parts.append(f"{100 * defect.area_frac:.1f}% of the image")
        return ", ".join(parts)
    if anomalous is True:
        return TYPE_NOT_ANNOTATED
    if anomalous is False:
        if label_source == LABEL_ANNOTATION:
            return "no defect (the test object is normal)"
        where = _SAYS_NORMAL.get(label_source or "", "the record's correct answers to its questions")
        return (f"not annotated; {where} says the test object has no defect (the defect type is unknown; "
                "judge against the inspection conclusion and the reference answer)")
    return NOT_ANNOTATED


def build_messages(recipe, group: QAGroup, q: int, option: int) -> list[dict]:
    """System = the rubric; user = the template filled for option `option` of question `q`.

    Where the defect is not annotated, the judge has only the record's own words: if the template does
    not show the conclusion ({conclusion}) or the reference answer ({reference}), ``{defect}`` carries them.
    """
    question = group.questions[q]
    defect = describe_defect(group.defect, group.anomalous, group.label_source)
    if group.defect is None and not group.normal_by_annotation:
        fields = {f for _, f, _, _ in string.Formatter().parse(recipe.template) if f}
        if "conclusion" not in fields and group.conclusion:
            defect += f'; inspection conclusion: "{group.conclusion}"'
        if "reference" not in fields and question.options:
            defect += f'; reference answer: "{question.options[0]}"'
    values = {
        "category": group.category,
        "level": group.level_of(question),
        "question": question.question,
        "truth": "yes" if question.answer else "no",
        "defect": defect,
        "conclusion": group.conclusion or "(none)",
        "reference": question.options[0],
        "answer": question.options[option],
    }
    messages = []
    if recipe.rubric.strip():
        messages.append({"role": "system", "content": recipe.rubric})
    messages.append({"role": "user", "content": recipe.template.format_map(values)})
    return messages


def parse_reply(text: str | None) -> dict[str, int]:
    """{"type", "location", "logic"} as integers 1..5 from a JSON object (a ``` fence around it is fine).

    Anything else raises MalformedReply: other text around the object, a missing key, a non-integer
    (4.0 and "4" included), a value outside 1..5. Extra keys (e.g. a "reason") are ignored.
    """
    s = (text or "").strip()
    if not s:
        raise MalformedReply("empty reply")
    m = _FENCE.match(s)
    if m:
        s = m.group(1).strip()
    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        raise MalformedReply(f"not a JSON object ({e.msg})") from None
    if not isinstance(d, dict):
        raise MalformedReply(f"not a JSON object but a {type(d).__name__}")
    out = {}
    for key in CRITERIA:
        if key not in d:
            raise MalformedReply(f"no {key!r} score")
        v = d[key]
        if not isinstance(v, int) or isinstance(v, bool):
            raise MalformedReply(f"{key!r} is {v!r}, not an integer")
        if not 1 <= v <= 5:
            raise MalformedReply(f"{key!r} is {v}, outside 1..5")
        out[key] = v
    return out
