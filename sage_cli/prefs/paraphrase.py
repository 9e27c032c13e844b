"""Optional LLM rewording of the ranked options, keeping what each one says (right or wrong).

One chat request per question sends its four options and asks for a JSON array of four rewordings in
the same order. A rewording replaces its option only when it keeps the option's verdict (first word,
Yes or No), every number and every location phrase of the original; otherwise the template text
stays. So the ranking survives: A3 and A4 keep their wrong details, A1 its facts. A request the
server rejects keeps that question's templates; an endpoint that cannot be used stops the run.
Rewording makes a build depend on the model, so its bytes are no longer fixed by the seed alone.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from sage_cli.data.records import QAGroup, Question

PROMPT = """You reword answers written by an industrial visual inspector.
Question: {question}
Below are four answers to it, numbered. Reword each one so it reads naturally and differently, but keep
exactly what it claims: its first word (Yes or No), every defect type, location, size and number, its
reasoning, and its level of detail. Some answers are deliberately wrong or vague: do not fix them,
do not add facts, do not merge them. Reply with a JSON array of four strings, in the same order, and
nothing else.
{numbered}"""

_GRID_WORDS = re.compile(r"\b(?:upper|middle|lower) (?:left|center|right)\b|\bcenter\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _verdict(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.strip().split(" ", 1)[0].lower()) if text.strip() else ""


def keeps_facts(old: str, new: str) -> bool:
    """Whether ``new`` keeps the verdict, numbers and location phrases of ``old``."""
    if not new.strip() or _verdict(new) != _verdict(old):
        return False
    low = new.lower()
    return all(n in new for n in _NUMBER.findall(old)) and all(p in low for p in _GRID_WORDS.findall(old.lower()))


def _parse(reply: str) -> list[str] | None:
    text = reply.strip()
    if text.startswith("```"):  # a fenced block: take what is inside
        text = text.strip("`").split("\n", 1)[-1]
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end < start:
        return None
    try:
        items = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        return None
    return [" ".join(s.split()) for s in items]


class Paraphraser:
    """Rewords options through an ``sage_cli.endpoint.Endpoint``; counts what it replaced and kept."""

    def __init__(self, endpoint):
        self.endpoint = endpoint
        self.replaced = 0  # options reworded
        self.kept = 0  # options left as written (reply unusable, or facts changed)

    @classmethod
    def connect(cls, url: str, model: str | None, api_key_env: str) -> "Paraphraser":
        from sage_cli.endpoint import Endpoint

        ep = Endpoint(url, model, api_key_env=api_key_env)
        ep.check()  # fail before the build: unreachable, key refused, model not served
        return cls(ep)

    def options(self, q: Question) -> list[str]:
        """The reworded options of one question (each original kept where its rewording fails a check)."""
        from sage_cli.endpoint import RequestRejected

        numbered = "\n".join(f"{i + 1}. {o}" for i, o in enumerate(q.options))
        messages = [{"role": "user", "content": PROMPT.format(question=q.question, numbered=numbered)}]
        try:
            new = _parse(self.endpoint.chat(messages, max_tokens=1024, temperature=0.7))
        except RequestRejected:
            new = None
        if new is None or len(new) != len(q.options):
            return list(q.options)
        out = [cand if keeps_facts(old, cand) else old for old, cand in zip(q.options, new)]
        # Options must stay distinct, or a preference pair would compare an answer with itself.
        return out if len(set(out)) == len(out) else list(q.options)

    def groups(self, groups: list[QAGroup]) -> list[QAGroup]:
        """The groups with reworded options; questions are sent in parallel, results kept in order."""
        questions = [q for g in groups for q in g.questions]
        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency) as pool:
            results = list(pool.map(self.options, questions))
        for q, new in zip(questions, results):
            changed = sum(o != n for o, n in zip(q.options, new))
            self.replaced += changed
            self.kept += len(new) - changed
        reworded = iter(results)
        return [replace(g, questions=[replace(q, options=next(reworded)) for q in g.questions]) for g in groups]
