"""How `sage bench` grades an answer: the protocol (what is asked and counted) and the grader (who reads it).

Protocols (`--protocol`):

* ``sage`` (default for yes/no sets): the question as the data set words it; the verdict read by the
  grader below; accuracy per level and over all questions (question-weighted, the paper's "Average"
  column); an answer with no verdict counts as wrong.
* ``paper``: the SAGE authors' evaluation code exactly: the question gets the suffix
  PAPER_SUFFIX, and an answer counts as yes when it starts with "true" or "yes" (lower-cased,
  stripped), otherwise as no. Comparable with the paper's Tables 1 and 3.
* ``mmad`` (default for MMAD): MMAD's official summary (`metrics.mmad_summary`): unparseable letters
  dropped, Object Structure and Object Details merged into Object Analysis, Anomaly Detection as
  balanced accuracy over normal ("good" in the image path) and abnormal images, the mean over question
  types per data set, then over data sets. Comparable with the MMAD paper and leaderboard.

Graders (`--grader`, yes/no questions under ``sage``):

* ``text`` (default): `verdict.verdict` reads the words; an answer it cannot read is decided by the
  first answer token's P(yes) >= 0.5 (source "p_yes");
* ``probe``: after the free answer, the same question is asked again with PROBE_SUFFIX and the first
  token's P(yes) >= 0.5 is the verdict (source "probe"), as POPE/MME-style evaluations do; needs a
  local model (not an endpoint's text);
* an OpenAI-compatible URL: an LLM reads every answer beside its question and says yes / no / unclear
  (source "judge"); unclear falls back to P(yes). Checked before the run; unreachable is one error line.

samples.jsonl records per answer how its verdict was reached (`verdict_source`).
"""

from __future__ import annotations

import re

from sage_cli.errors import SageError

PROTOCOLS = ("sage", "paper", "mmad")
PAPER_SUFFIX = " Answer with True or False and provide a reason."
PROBE_SUFFIX = " Answer yes or no."
GRADER_PROMPT = (
    "You grade answers to yes/no questions about a photo of an industrial part. Read the answer and say "
    "whether it answers the question with yes or with no. Reply with exactly one word: yes, no, or unclear "
    "(unclear only when the answer gives no verdict at all).\n\nQuestion: {question}\nAnswer: {answer}")


def resolve_protocol(protocol: str | None, fmt: str) -> str:
    """The protocol to use for `fmt` (its default when None); SageError for one that does not apply."""
    if protocol is None:
        return "mmad" if fmt == "mmad" else "sage"
    if protocol not in PROTOCOLS:
        raise SageError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    if protocol == "mmad" and fmt != "mmad":
        raise SageError(f"--protocol mmad grades MMAD's multiple-choice letters; {fmt} data is yes/no "
                        "(use --protocol sage or paper)")
    if protocol == "paper" and fmt == "mmad":
        raise SageError("--protocol paper is the SAGE authors' True/False rule for yes/no questions; MMAD is "
                        "multiple choice (use --protocol mmad or sage)")
    return protocol


def check_grader(grader: str, protocol: str) -> str:
    if grader in ("text", "probe") or grader.startswith(("http://", "https://")):
        if protocol == "paper" and grader != "text":
            raise SageError("--protocol paper grades by the authors' starts-with rule; leave --grader at text")
        return grader
    raise SageError(f"unknown grader {grader!r}; give text, probe, or an OpenAI-compatible URL (http://HOST:PORT/v1)")


def prompt(question: str, protocol: str) -> str:
    """What the model is asked for `question` under `protocol`."""
    return question + PAPER_SUFFIX if protocol == "paper" else question


def paper_yes(text: str | None) -> bool:
    """The authors' rule: yes iff the answer starts with "true" or "yes" (so "Yesterday..." is yes, as there)."""
    return (text or "").lower().strip().startswith(("true", "yes"))


class LLMGrader:
    """An LLM at an OpenAI-compatible endpoint that reads (question, answer) and says yes / no / unclear."""

    def __init__(self, url: str, model: str | None = None):
        from sage_cli.endpoint import Endpoint

        self.endpoint = Endpoint(url, model)

    @property
    def name(self) -> str:
        return self.endpoint.describe()

    def prepare(self) -> None:
        self.endpoint.check()

    def read(self, question: str, answer: str) -> bool | None:
        reply = self.endpoint.chat([{"role": "user", "content": GRADER_PROMPT.format(question=question, answer=answer)}],
                                   max_tokens=4)
        word = re.match(r"\W*(yes|no|unclear)\b", reply.strip().lower())
        if word is None or word.group(1) == "unclear":
            return None
        return word.group(1) == "yes"


def grade_yes_no(text: str, question: str, protocol: str, grader: str, p_yes: float | None,
                 p_probe: float | None = None, llm: LLMGrader | None = None) -> tuple[bool | None, str]:
    """(verdict, source) for one yes/no answer; source is one of paper, word, claim, probe, judge, p_yes, none."""
    from sage_cli.bench.verdict import verdict

    if protocol == "paper":
        return paper_yes(text), "paper"
    if grader == "probe" and p_probe is not None:
        return p_probe >= 0.5, "probe"
    if llm is not None and text.strip():
        v = llm.read(question, text)
        if v is not None:
            return v, "judge"
    elif grader == "text":
        v, how = verdict(text, question)
        if v is not None:
            return v, how
    if p_yes is not None:
        return p_yes >= 0.5, "p_yes"
    return None, "none"
