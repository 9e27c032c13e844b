"""MLE scores of a benchmark's answers (paper Eq. 3) through the existing judges: an LLM endpoint or offline SBERT.

An answer is judged against the top-ranked option of its question with the score recipe's rubric; an
empty answer gets 1 on every criterion without asking; items without a QA group (MMAD) are not judged.
"""

from __future__ import annotations

from dataclasses import replace

from sage_cli.bench.items import BenchItem
from sage_cli.errors import SageError


class BenchJudge:
    """MLE scores of the model's answers through the existing judges (an LLM endpoint or offline SBERT)."""

    def __init__(self, spec: str, model: str | None):
        from sage_cli.config import load_recipe
        from sage_cli.judge.judges import SBertJudge, make_judge

        cfg = load_recipe("default", "score")
        if spec.startswith(("http://", "https://")):
            cfg.endpoint.base_url = spec
            spec = "endpoint"
        if model:
            cfg.endpoint.model = model
        if spec == "endpoint" and not cfg.endpoint.base_url:
            raise SageError("--judge endpoint needs a URL: give --judge http://HOST:PORT/v1 (or set endpoint.base_url "
                            "in the score recipe)")
        self.judge = SBertJudge() if spec == "offline:sbert" else make_judge(spec, cfg)

    @property
    def name(self) -> str:
        return self.judge.name

    def prepare(self, sbert=None) -> None:
        """Check the endpoint; the offline judge shares the SBERT model the run already loaded."""
        from sage_cli.judge.judges import SBertJudge

        if sbert is not None and isinstance(self.judge, SBertJudge):
            self.judge = SBertJudge(sbert)
        self.judge.prepare()

    def scores(self, item: BenchItem, answers: dict[int, str]) -> dict[int, dict]:
        """q -> {type, location, logic, mle} or {failed}; answers of items without a QA group are not judged."""
        from sage_cli.data.records import Question
        from sage_cli.judge.judges import Item

        group = item.group
        if group is None:
            return {}
        out: dict[int, dict] = {}
        todo = []
        for q, text in answers.items():
            if not text.strip():
                out[q] = {"type": 1, "location": 1, "logic": 1, "mle": 1.0}
                continue
            orig = group.questions[q]
            best = orig.options[0] if orig.options else "(no reference answer)"
            questions = list(group.questions)
            questions[q] = Question(orig.question, orig.answer, [best, text], group.level_of(orig))
            todo.append(Item(replace(group, questions=questions), q, 1))
        for it, res in self.judge.score(todo):
            out[it.q] = ({k: res[k] for k in ("type", "location", "logic", "mle")} if "failed" not in res
                         else {"failed": res["failed"]})
        return out
