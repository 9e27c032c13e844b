"""The `sage score mle` workflow: score every ranked option with a judge, then rebuild the E-DPO pairs.

OUT holds ``scores.jsonl`` (appended, one line per option: a rerun skips what is scored), ``pairs.jsonl``
(rebuilt from all the scores on every run) and ``score.json``, the manifest: judge, rubric digest,
recipe, QA file, status and counts, rewritten atomically at the start ("running") and the end ("done").
Scores from different judges or rubrics mean different things, so an OUT holding another judge's
scores, or scores made with another rubric, is refused.

:func:`score_mle` is the one entry point; the command only parses options and prints what it returns.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sage_cli import __version__, runfolder
from sage_cli.config import to_dict
from sage_cli.data.problems import Problems
from sage_cli.data.qa_jsonl import read_qa_jsonl
from sage_cli.endpoint import EndpointError
from sage_cli.errors import SageError
from sage_cli.endpoint import endpoint_secrets, redact
from sage_cli.judge.files import ScoreWriter, answer_sha, pair_records, read_scores, usable_score, write_pairs
from sage_cli.judge.judges import Item, make_judge, rubric_digest

MANIFEST_FORMAT = "sage-score-run/1"
MANIFEST, SCORES, PAIRS = "score.json", "scores.jsonl", "pairs.jsonl"


@dataclass
class DryRun:
    """What a run would do; nothing was sent or written."""

    judge: str
    groups: int  # QA groups this run covers (after --limit)
    groups_total: int
    questions: int
    to_score: int
    done: int  # options already scored
    failed: int  # options that failed before (rescored only with retry_failed)
    first: Item | None = None  # the first option to score, when the judge is an LLM
    messages: list[dict] | None = None  # the judge prompt for `first`


@dataclass
class ScoreResult:
    judge: str
    out: Path
    counts: dict  # as written into score.json

    @property
    def scores(self) -> Path:
        return self.out / SCORES

    @property
    def pairs(self) -> Path:
        return self.out / PAIRS


def read_groups(path: Path) -> list:
    """The QA groups of `path`, checked for what scoring needs: unique ids, ranked options."""
    if not path.is_file():
        raise SageError(f"{path}: QA file not found")
    groups = list(read_qa_jsonl(path, Problems(strict=True)))
    if not groups:
        raise SageError(f"{path}: no QA groups in this file")
    seen = set()
    for g in groups:
        if g.id in seen:
            raise SageError(f"{path}: group id {g.id!r} appears twice; scores are keyed by group id")
        seen.add(g.id)
        for qi, q in enumerate(g.questions):
            if len(q.options) < 2:
                raise SageError(f"{path}: group {g.id!r} question {qi} has {len(q.options)} option(s); scoring "
                                f"needs ranked options (four per question, from `sage prefs build`)")
    return groups


def plan(groups, scores: dict, retry_failed: bool) -> tuple[list[Item], int, int]:
    """(items to score, already scored, failed and left alone)."""
    todo, done, failed = [], 0, 0
    for g in groups:
        for qi, q in enumerate(g.questions):
            for k, text in enumerate(q.options):
                rec = scores.get((g.id, qi, k))
                if usable_score(rec, text):
                    done += 1
                elif rec is not None and "failed" in rec and rec.get("answer_sha") == answer_sha(text) \
                        and not retry_failed:
                    failed += 1
                else:
                    todo.append(Item(g, qi, k))
    return todo, done, failed


def check_out(out: Path, judge_name: str, digest: str | None, scores: dict) -> dict:
    """The previous manifest ({} when none or unreadable); refuses an OUT scored by another judge or rubric."""
    manifest = runfolder.read_manifest(out / MANIFEST, lenient=True) or {}
    others = {str(r.get("judge")) for r in scores.values()} - {judge_name}
    if others:
        raise SageError(f"{out} holds scores from another judge ({sorted(others)[0]}), not {judge_name}; "
                        f"use another --out")
    if scores and manifest.get("rubric_sha") not in (None, digest):
        raise SageError(f"{out} was scored with another rubric or template ({MANIFEST} rubric_sha "
                        f"{manifest.get('rubric_sha')}); use another --out")
    return manifest


def score_mle(cfg, recipe_name: str, qa_path: Path, out: Path, *, judge: str = "endpoint", limit: int | None = None,
              dry_run: bool = False, retry_failed: bool = False, on_start: Callable[[int], None] | None = None,
              on_scored: Callable[[], None] | None = None) -> ScoreResult | DryRun:
    """Score the QA groups of `qa_path` (the first `limit`) into `out` with the judge called `judge`
    (judges.JUDGES) under the score recipe `cfg`; with `dry_run`, only say what would be done.
    `on_start(n)` gets the number of options to score now, `on_scored()` is called after each."""
    groups = read_groups(qa_path)
    run_groups = groups[:limit] if limit else groups
    the_judge = make_judge(judge, cfg, dry_run=dry_run)
    if dry_run:
        todo, done, failed = plan(run_groups, read_scores(out / SCORES), retry_failed)
        first = todo[0] if todo and the_judge.kind == "endpoint" else None
        return DryRun(the_judge.name, len(run_groups), len(groups), sum(len(g.questions) for g in run_groups),
                      len(todo), done, failed, first, the_judge.messages(first) if first is not None else None)
    counts = score_file(the_judge, cfg, recipe_name, qa_path, groups, run_groups, out, retry_failed, on_start, on_scored)
    return ScoreResult(the_judge.name, out, counts)


def score_offline(qa_path: Path, out: Path) -> dict:
    """`sage score mle QA --out OUT --judge offline:sbert` with the default recipe: the counts."""
    from sage_cli.config import load_recipe

    return score_mle(load_recipe("default", "score", []), "default", Path(qa_path), Path(out), judge="offline:sbert").counts


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def score_file(judge, cfg, recipe_name: str, qa_path: Path, groups, run_groups, out: Path, retry_failed: bool = False,
               on_start: Callable[[int], None] | None = None, on_scored: Callable[[], None] | None = None) -> dict:
    """Score what `run_groups` still lacks into OUT/scores.jsonl with `judge`, rebuild OUT/pairs.jsonl
    from every group's scores, write score.json; returns the counts recorded there."""
    runfolder.refuse_file(out)
    scores_path, pairs_path = out / SCORES, out / PAIRS
    judge.prepare()  # the endpoint check: before anything is written
    name = judge.name
    digest = rubric_digest(cfg) if judge.kind == "endpoint" else None
    scores = read_scores(scores_path)
    check_out(out, name, digest, scores)
    todo, done, skipped_failed = plan(run_groups, scores, retry_failed)

    config = None
    if judge.kind == "endpoint":
        config = to_dict(cfg)
        config["endpoint"]["base_url"] = judge.endpoint.url  # without any user:password in the URL
    manifest = {
        "format": MANIFEST_FORMAT, "sage_version": __version__, "judge": name, "judge_kind": judge.kind,
        "recipe": recipe_name, "rubric_sha": digest, "config": config,
        "qa_file": str(qa_path.resolve()), "root": str(Path(groups[0].root).resolve()),
        "files": {"scores": scores_path.name, "pairs": pairs_path.name},
    }
    out.mkdir(parents=True, exist_ok=True)
    runfolder.write_manifest(out / MANIFEST, {**manifest, "status": "running", "updated": _now()}, indent=1)
    if on_start is not None:
        on_start(len(todo))
    secrets = endpoint_secrets(cfg.endpoint) if judge.kind == "endpoint" else ()
    new = _judge_all(judge, name, todo, scores_path, on_scored, secrets)

    records, st = pair_records(groups, read_scores(scores_path), name)
    write_pairs(pairs_path, records)
    counts = {
        "groups": len(groups), "groups_this_run": len(run_groups), "options_scored_now": new["scored"],
        "options_failed_now": new["failed"], "options_already_scored": done,
        "options_failed_before": skipped_failed, "questions": st.questions, "questions_paired": st.paired,
        "questions_with_failed_option": st.failed, "questions_incomplete": st.incomplete, "pairs": st.pairs,
        "endpoint_retries": getattr(getattr(judge, "endpoint", None), "retries", 0),
    }
    runfolder.write_manifest(out / MANIFEST, {**manifest, "status": "done", "counts": counts, "updated": _now()},
                             indent=1)
    if todo and not new["scored"]:  # a judge that scored nothing is not a success, whatever was written
        raise SageError(f"all {new['failed']} options failed to score (first: {new['first_failure']}); the failures "
                        f"are recorded in {scores_path}: fix the judge, then rerun with --retry-failed")
    return counts


def _judge_all(judge, name: str, todo: list[Item], scores_path: Path, on_scored,
               secrets: tuple[str, ...] = ()) -> dict:
    """Score `todo`, appending each result to scores.jsonl as it comes; {"scored": n, "failed": n,
    "first_failure": reason}. An endpoint that gives up keeps what was scored: a rerun resumes from there.
    `secrets` (the API key) are redacted from what is written: a failure's reason may quote the reply."""
    new = {"scored": 0, "failed": 0, "first_failure": None}
    try:
        with ScoreWriter(scores_path) as w:
            for item, res in judge.score(todo):
                g, qi, k = item.key
                res = redact(res, secrets)
                w.write({"group_id": g, "q": qi, "option": k, **res, "judge": name,
                         "answer_sha": answer_sha(item.answer)})
                if "failed" in res:
                    new["failed"] += 1
                    new["first_failure"] = new["first_failure"] or " ".join(str(res["failed"]).split())[:200]
                else:
                    new["scored"] += 1
                if on_scored is not None:
                    on_scored()
    except EndpointError as e:
        raise SageError(redact(f"{e}; {new['scored'] + new['failed']} new scores are kept in {scores_path}: "
                               f"rerun the same command to resume", secrets)) from None
    return new
