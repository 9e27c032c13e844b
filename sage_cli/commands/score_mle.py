"""`sage score mle`: MLE scores from an LLM judge, then entropy-based E-DPO pairs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sage_cli.commands.recipe_opts import OVERRIDES, PRINT_CONFIG, recipe_option
from sage_cli.errors import SageError


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

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sage_cli.judge.scoring import DryRun, score_mle

    err = Console(stderr=True)
    with Progress(
        TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        transient=True, console=err, disable=not err.is_terminal,  # no stray lines in logs
    ) as bar:
        task = None

        def start(total: int) -> None:
            nonlocal task
            task = bar.add_task("score", total=total)

        result = score_mle(cfg, recipe, path, out, judge=judge, limit=limit, dry_run=dry_run, retry_failed=retry_failed,
                           on_start=start, on_scored=lambda: bar.advance(task))
    if isinstance(result, DryRun):
        _print_dry_run(result)
    else:
        _summary(result)


def _print_dry_run(d) -> None:
    typer.echo(f"dry run: {d.groups} of {d.groups_total} QA groups, {d.questions} questions, "
               f"{d.to_score + d.done + d.failed} options: {d.to_score} to score, {d.done} already scored, "
               f"{d.failed} failed before (rescored only with --retry-failed)")
    typer.echo(f"judge: {d.judge}; nothing was sent")
    if d.first is None:
        return
    typer.echo(f"first prompt (group {d.first.group.id}, question {d.first.q}, option {d.first.option}):")
    for m in d.messages:
        typer.echo(f"--- {m['role']}")
        typer.echo(m["content"].rstrip("\n"))


def _summary(result) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    c = result.counts
    t = Table(title=f"sage score mle: {escape(result.judge)}", show_header=False)
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
    con.print(f"scores: {escape(str(result.scores))}  pairs: {escape(str(result.pairs))}", soft_wrap=True)
