"""The scorers of `sage score mle`: an LLM judge behind an OpenAI-compatible endpoint, or offline SBERT.

Both take Items (one ranked option of one question) and yield (item, result) as results come in;
a result is {"type", "location", "logic", "mle", "attempts"} or {"failed": reason, "attempts"}.
A failure is recorded as such, never replaced by a default score.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sage_cli.data.records import QAGroup
from sage_cli.errors import SageError
from sage_cli.judge.mle import mle_score
from sage_cli.judge.rubric import MalformedReply, build_messages, check_template, parse_reply

log = logging.getLogger(__name__)

JUDGES = ("endpoint", "offline:sbert")


@dataclass(frozen=True)
class Item:
    group: QAGroup
    q: int  # question index in the group
    option: int  # rank index, 0 = best

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.group.id, self.q, self.option)

    @property
    def answer(self) -> str:
        return self.group.questions[self.q].options[self.option]


class LLMJudge:
    """Γ_LLM of Eq. 3: the recipe's rubric and template, the reply read strictly, `concurrency` requests at once."""

    kind = "endpoint"

    def __init__(self, endpoint, recipe):
        check_template(recipe.template)
        self.endpoint = endpoint
        self.recipe = recipe

    @property
    def name(self) -> str:
        return self.endpoint.describe() if self.endpoint is not None else "(no endpoint set)"

    def prepare(self) -> None:
        """Check the endpoint (reachable, key accepted, model served) before any scoring."""
        self.endpoint.check()

    def messages(self, item: Item) -> list[dict]:
        return build_messages(self.recipe, item.group, item.q, item.option)

    def score_one(self, item: Item) -> dict:
        """Ask, read, and on a malformed reply ask again (saying what was wrong) up to retries_malformed times."""
        from sage_cli.endpoint import RequestRejected

        r = self.recipe
        fmt = {"type": "json_object"} if r.json_mode else None
        messages = self.messages(item)
        tries = r.retries_malformed + 1
        reason = ""
        for attempt in range(1, tries + 1):
            try:
                text = self.endpoint.chat(messages, max_tokens=r.max_tokens, temperature=r.temperature,
                                          response_format=fmt)
            except RequestRejected as e:
                return {"failed": f"request rejected: {e}", "attempts": attempt}
            try:
                s = parse_reply(text)
            except MalformedReply as e:
                reason = str(e)
                log.info("malformed judge reply for %s (try %d of %d): %s", item.key, attempt, tries, reason)
                # Same question again, with the bad reply and what was wrong: at temperature 0 a bare
                # repeat would usually get the same reply.
                messages = self.messages(item) + [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"That reply could not be read ({reason}). Reply with only the "
                                                'JSON object {"type": N, "location": N, "logic": N}, each N an '
                                                "integer from 1 to 5."},
                ]
                continue
            return {**s, "mle": mle_score(s["type"], s["location"], s["logic"]), "attempts": attempt}
        return {"failed": f"malformed reply {tries} times (last: {reason})", "attempts": tries}

    def score(self, items: Iterable[Item]) -> Iterator[tuple[Item, dict]]:
        """Results in completion order, with at most `concurrency` requests in flight. An EndpointError
        (server gone, key refused) stops the run: nothing more is sent, results already yielded stand."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        todo = iter(items)
        running: dict = {}
        with ThreadPoolExecutor(self.endpoint.concurrency, thread_name_prefix="judge") as pool:

            def fill() -> None:
                # Submitting only as slots free up (not all at once) means a fatal error sends nothing more.
                while len(running) < self.endpoint.concurrency:
                    item = next(todo, None)
                    if item is None:
                        return
                    running[pool.submit(self.score_one, item)] = item

            fill()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                error = None
                for f in done:
                    item = running.pop(f)
                    if f.exception() is not None:
                        error = error or f.exception()
                    else:
                        yield item, f.result()
                if error is not None:
                    # The requests in flight still finish: keep what they got, then stop.
                    for f in wait(running).done:
                        if f.exception() is None:
                            yield running[f], f.result()
                    raise error
                fill()


class SBertJudge:
    """Offline stand-in for an LLM judge: cosine similarity to the top-ranked option with all-MiniLM-L6-v2,
    mapped linearly from [0, 1] to [1, 5] (negative cosines count as 0); type = location = logic = that.

    It measures closeness to the experts' best answer, not correctness: use it to run the pipeline
    without an LLM, not as the paper's MLE."""

    kind = "offline:sbert"
    name = "offline:sbert (all-MiniLM-L6-v2)"

    def __init__(self, sbert=None):
        self._sbert = sbert

    def prepare(self) -> None:
        pass  # the model loads on the first item, so a run with nothing to score starts at once

    def score(self, items: Iterable[Item]) -> Iterator[tuple[Item, dict]]:
        from sage_cli.models.sbert import SBert

        by_question: dict[tuple[str, int], list[Item]] = {}
        for it in items:
            by_question.setdefault((it.group.id, it.q), []).append(it)
        questions = list(by_question.values())
        for start in range(0, len(questions), self.CHUNK):
            chunk = questions[start:start + self.CHUNK]
            if self._sbert is None:
                self._sbert = SBert.load()
            # one encoder call per chunk of questions, each distinct text once (templated options repeat)
            texts = list(dict.fromkeys(t for todo in chunk for t in self._texts(todo)))
            emb = dict(zip(texts, self._sbert.encode(texts)))
            for todo in chunk:
                best = emb[todo[0].group.questions[todo[0].q].options[0]]
                for it in todo:
                    c = float(emb[it.answer] @ best)
                    v = round(1.0 + 4.0 * min(max(c, 0.0), 1.0), 4)
                    yield it, {"type": v, "location": v, "logic": v, "mle": v, "attempts": 1}

    CHUNK = 64  # questions per encoder call

    @staticmethod
    def _texts(todo: list[Item]) -> list[str]:
        return [todo[0].group.questions[todo[0].q].options[0]] + [it.answer for it in todo]


def make_judge(name: str, recipe, *, dry_run: bool = False):
    """The judge called `name` (JUDGES); `endpoint` uses the recipe's endpoint section. A dry run may
    lack an endpoint URL: it only shows the prompts."""
    if name == "endpoint":
        from sage_cli.endpoint import Endpoint

        if dry_run and not recipe.endpoint.base_url:
            return LLMJudge(None, recipe)
        return LLMJudge(Endpoint.from_config(recipe.endpoint), recipe)
    if name == "offline:sbert":
        return SBertJudge()
    from sage_cli.errors import did_you_mean

    raise SageError(f"unknown judge {name!r}{did_you_mean(name, JUDGES)}; choose one of: {', '.join(JUDGES)}")


def rubric_digest(recipe) -> str:
    """A short hash of what the LLM judge is told: scores made with another rubric must not be mixed."""
    import hashlib

    text = json.dumps([recipe.rubric, recipe.template], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
