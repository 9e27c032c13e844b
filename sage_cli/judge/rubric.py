"""The judge's messages (from a score recipe's rubric and template) and the strict reading of its reply."""

from __future__ import annotations

import json
import re
import string

from sage_cli.data.records import Defect, QAGroup
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


def describe_defect(defect: Defect | None) -> str:
    """The annotation in words, e.g. "crack, upper left, 2.1% of the image"."""
    if defect is None:
        return "no defect (the test object is normal)"
    parts = [defect.type]
    if defect.location:
        parts.append(defect.location)
    if defect.area_frac is not None:
        parts.append(f"{100 * defect.area_frac:.1f}% of the image")
    return ", ".join(parts)


def build_messages(recipe, group: QAGroup, q: int, option: int) -> list[dict]:
    """System = the rubric; user = the template filled for option `option` of question `q`."""
    question = group.questions[q]
    values = {
        "category": group.category,
        "level": group.level_of(question),
        "question": question.question,
        "truth": "yes" if question.answer else "no",
        "defect": describe_defect(group.defect),
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
