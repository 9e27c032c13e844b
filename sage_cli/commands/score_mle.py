"""`sage score mle`: MLE scores from an LLM judge, then entropy-based E-DPO pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sage_cli.commands.recipe_opts import OVERRIDES, PRINT_CONFIG, recipe_option
from sage_cli.errors import SageError

MANIFEST_FORMAT = "sage-score-run/1"


def mle(
    qa_file: Optional[Path] = typer.Argument(None, help="QA groups (JSON Lines from `sage prefs build`), or use --qa.",
                                             show_default=False),
    overrides: Optional[list[str]] = OVERRIDES,
    qa: Optional[Path] = typer.Option(None, "--qa", help="QA groups file (same as QA_FILE)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder: scores.jsonl, pairs.jsonl, score.json."),
    recipe: str = recipe_option("default"),
    print_config: bool = PRINT_CONFIG,
    judge: str = typer.Option("endpoint", "--judge", help="endpoint (the LLM behind the recipe's endpoint) or "
                              "offline:sbert (similarity to the top-ranked answer; no LLM)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible URL; overrides endpoint.base_url."),
    model: Optional[str] = typer.Option(None, "--model", help="Judge model; overrides endpoint.model."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Score only the first N QA groups (pairs.jsonl still holds every group scored so far in OUT)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be scored and the first judge prompt; "
                                 "send nothing."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Score again the options recorded as failed."),
) -> None:
    """Score every ranked answer with an LLM judge (type, location, logic: 1-5, S = their mean; paper Eq. 3),
    then select per question the ΔH_min and ΔH_max answer pairs (Eqs. 4-5) for `sage train edpo`.

    Resumable: OUT/scores.jsonl is appended one line per option, and a rerun skips the options already
    scored (failed ones too, unless --retry-failed). OUT/pairs.jsonl is rebuilt from the scores on every
    run; questions with a failed or missing score get no pairs. The API key comes from the environment
    variable named by endpoint.api_key_env (default OPENAI_API_KEY) and is never written anywhere.
    """
    from sage_cli.config import load_recipe, to_yaml

    # QA_FILE is optional, so a lone override in its place (`sage score mle key=value --qa F`) is an override.
    if qa_file is not None and "=" in str(qa_file) and not qa_file.exists():
        overrides = [str(qa_file), *(overrides or [])]
        qa_file = None
    cfg = load_recipe(recipe, "score", overrides or [])
    if base_url:
        cfg.endpoint.base_url = base_url
    if model:
        cfg.endpoint.model = model
    if print_config:
        typer.echo(to_yaml(cfg), nl=False)
        raise typer.Exit(0)

    if qa_file is not None and qa is not None and qa_file != qa:
        raise SageError(f"two QA files given ({qa_file} and --qa {qa}); give one")
    path = qa_file or qa
    if path is None:
        raise SageError("no QA file: give QA_FILE or --qa FILE (QA groups from `sage prefs build`)")
    if out is None:
        raise SageError("no output folder: give --out DIR")
    groups = _read_groups(path)
    run_groups = groups[:limit] if limit else groups

    from sage_cli.judge.judges import make_judge

    the_judge = make_judge(judge, cfg, dry_run=dry_run)
    if dry_run:
        _dry_run(the_judge, run_groups, groups, out, retry_failed)
        return
    _run(the_judge, cfg, recipe, path, groups, run_groups, out, retry_failed)


# ---------------------------------------------------------------------------------------------- input


def _read_groups(path: Path) -> list:
    from sage_cli.data.problems import Problems
    from sage_cli.data.qa_jsonl import read_qa_jsonl

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


def _plan(groups, scores: dict, retry_failed: bool):
    """(items to score, already scored, failed and left alone)."""
    from sage_cli.judge.files import answer_sha, usable_score
    from sage_cli.judge.judges import Item

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


# ---------------------------------------------------------------------------------------------- running


def _dry_run(judge, run_groups, groups, out: Path, retry_failed: bool) -> None:
    from sage_cli.judge.files import read_scores

    todo, done, failed = _plan(run_groups, read_scores(out / "scores.jsonl"), retry_failed)
    n_q = sum(len(g.questions) for g in run_groups)
    typer.echo(f"dry run: {len(run_groups)} of {len(groups)} QA groups, {n_q} questions, "
               f"{len(todo) + done + failed} options: {len(todo)} to score, {done} already scored, "
               f"{failed} failed before (rescored only with --retry-failed)")
    typer.echo(f"judge: {judge.name}; nothing was sent")
    if judge.kind != "endpoint":
        return
    item = todo[0] if todo else None
    if item is None:
        return
    typer.echo(f"first prompt (group {item.group.id}, question {item.q}, option {item.option}):")
    for m in judge.messages(item):
        typer.echo(f"--- {m['role']}")
        typer.echo(m["content"].rstrip("\n"))


def _check_out(out: Path, judge_name: str, digest: str | None, scores: dict) -> dict:
    """The previous manifest; refuses an OUT scored by another judge or rubric (mixed scores mean nothing)."""
    import json

    manifest = {}
    mpath = out / "score.json"
    if mpath.exists():
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = {}
    others = {str(r.get("judge")) for r in scores.values()} - {judge_name}
    if others:
        raise SageError(f"{out} holds scores from another judge ({sorted(others)[0]}), not {judge_name}; "
                        f"use another --out")
    if scores and manifest.get("rubric_sha") not in (None, digest):
        raise SageError(f"{out} was scored with another rubric or template (score.json rubric_sha "
                        f"{manifest.get('rubric_sha')}); use another --out")
    return manifest


def _write_manifest(out: Path, data: dict) -> None:
    import json

    from sage_cli.atomic import write_text

    write_text(out / "score.json", json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def _run(judge, cfg, recipe_name: str, qa_path: Path, groups, run_groups, out: Path, retry_failed: bool) -> None:
    import datetime

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sage_cli import __version__
    from sage_cli.config import to_dict
    from sage_cli.endpoint import EndpointError
    from sage_cli.judge.files import ScoreWriter, answer_sha, pair_records, read_scores, write_pairs
    from sage_cli.judge.judges import rubric_digest

    if out.exists() and not out.is_dir():
        raise SageError(f"{out}: --out must be a folder")
    scores_path, pairs_path = out / "scores.jsonl", out / "pairs.jsonl"
    judge.prepare()  # the endpoint check: before anything is written
    name = judge.name
    digest = rubric_digest(cfg) if judge.kind == "endpoint" else None
    scores = read_scores(scores_path)
    _check_out(out, name, digest, scores)
    todo, done, skipped_failed = _plan(run_groups, scores, retry_failed)

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
    _write_manifest(out, {**manifest, "status": "running", "updated": _now(datetime)})

    new = {"scored": 0, "failed": 0}
    err = Console(stderr=True)
    try:
        with ScoreWriter(scores_path) as w, Progress(
            TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            transient=True, console=err, disable=not err.is_terminal,  # no stray lines in logs
        ) as bar:
            task = bar.add_task("score", total=len(todo))
            for item, res in judge.score(todo):
                g, qi, k = item.key
                w.write({"group_id": g, "q": qi, "option": k, **res, "judge": name,
                         "answer_sha": answer_sha(item.answer)})
                new["failed" if "failed" in res else "scored"] += 1
                bar.advance(task)
    except EndpointError as e:
        raise SageError(f"{e}; {new['scored'] + new['failed']} new scores are kept in {scores_path}: "
                        f"rerun the same command to resume") from None

    scores = read_scores(scores_path)
    records, st = pair_records(groups, scores, name)
    write_pairs(pairs_path, records)
    retries = getattr(getattr(judge, "endpoint", None), "retries", 0)
    counts = {
        "groups": len(groups), "groups_this_run": len(run_groups), "options_scored_now": new["scored"],
        "options_failed_now": new["failed"], "options_already_scored": done,
        "options_failed_before": skipped_failed, "questions": st.questions, "questions_paired": st.paired,
        "questions_with_failed_option": st.failed, "questions_incomplete": st.incomplete, "pairs": st.pairs,
        "endpoint_retries": retries,
    }
    _write_manifest(out, {**manifest, "status": "done", "counts": counts, "updated": _now(datetime)})
    _summary(name, out, counts)


def _now(datetime) -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _summary(judge_name: str, out: Path, c: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=f"sage score mle: {escape(judge_name)}", show_header=False)
    t.add_column("what")
    t.add_column("count", justify="right")
    rows = [
        ("options scored now", c["options_scored_now"]),
        ("options failed now", c["options_failed_now"]),
        ("options already scored", c["options_already_scored"]),
        ("options failed before (use --retry-failed)", c["options_failed_before"]),
        ("questions with pairs", f"{c['questions_paired']} of {c['questions']}"),
        ("questions without pairs: a failed option", c["questions_with_failed_option"]),
        ("questions without pairs: not all scored", c["questions_incomplete"]),
        ("preference pairs", c["pairs"]),
        ("endpoint retries", c["endpoint_retries"]),
    ]
    for k, v in rows:
        t.add_row(k, str(v))
    con = Console(highlight=False)
    con.print(t)
    con.print(f"scores: {escape(str(out / 'scores.jsonl'))}  pairs: {escape(str(out / 'pairs.jsonl'))}",
              soft_wrap=True)
