"""`sage facts extract`: fact sentences about each image, from the local backbone or an endpoint, cached."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sage_cli.commands.recipe_opts import OVERRIDES, PRINT_CONFIG, recipe_option, resolve


def extract(
    overrides: Optional[list[str]] = OVERRIDES,
    src: Optional[Path] = typer.Option(None, "--from", help="A data set root (MVTec, VisA, MANTA, MMAD, sage-qa), a QA .jsonl file, or a folder of images."),
    out: Optional[Path] = typer.Option(None, "--out", help="Facts JSON Lines to append to (created if missing)."),
    recipe: str = recipe_option("default"),
    which: str = typer.Option("test", "--which", help="test: the test images; all: also the normal references."),
    fmt: Optional[str] = typer.Option(None, "--format", help="Force a reader instead of detecting it."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most this many new images in this run."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Use this OpenAI-compatible endpoint (overrides endpoint.base_url)."),
    model: Optional[str] = typer.Option(None, "--model", help="The endpoint's model (default: the one it serves)."),
    max_facts: int = typer.Option(16, "--max-facts", min=1, help="Keep at most this many sentences per image."),
    device: str = typer.Option("auto", "--device", help="Local backbone: auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="Local backbone: auto, float32, bfloat16 or float16."),
    per_category: bool = typer.Option(False, "--per-category", help="Ask about one image per category and give its facts to the category's other images (recorded as shared_from): facts about the kind of object, at a fraction of the cost."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be asked, ask nothing."),
    print_config: bool = PRINT_CONFIG,
) -> None:
    """Ask a VLM the recipe's prompts about each image and append its fact sentences to --out.

    Records are keyed by image content (sha256) + model + prompt set: a rerun asks only about images
    without a record, and a changed model or prompt list makes new records. With endpoint.base_url (or
    --base-url) the images go to that server as data URLs, several at once; otherwise the local
    backbone (recipe `backbone`) answers, a batch of images at a time. The key comes from the
    environment variable named by endpoint.api_key_env and is never written anywhere.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sage_cli.errors import SageError
    from sage_cli.facts import extract as fx
    from sage_cli.facts.store import prompt_set_id

    cfg = resolve(recipe, "facts", overrides, print_config)
    if src is None or out is None:
        raise SageError("give the images with --from ROOT and the facts file with --out FILE")
    if not cfg.prompts:
        raise SageError(f"recipe {recipe!r} has no prompts")
    if which not in ("test", "all"):
        raise SageError(f"--which must be test or all, not {which!r}")
    if out.exists() and out.is_dir():
        raise SageError(f"{out}: is a folder; --out takes a .jsonl file")
    console = Console(stderr=True, soft_wrap=True)
    remote = bool(base_url or cfg.endpoint.base_url)
    ep = None
    if remote:
        from sage_cli.endpoint import Endpoint

        ep = Endpoint.from_config(cfg.endpoint, base_url=base_url, model=model)
        if not dry_run:
            ep.check()  # before any work: reachable, key accepted, model served
        name = ep.model or "(served model)"
    else:
        name = cfg.backbone
    pid = prompt_set_id([cfg.context, *cfg.prompts])

    todo = fx.targets(src, fmt, which)
    left, done = fx.pending(todo, out, name, pid)
    left = left[:limit] if limit else left
    share: list = []
    if per_category:
        left, share = fx.split_by_category(left, out, name, pid)
    source = ep.describe() if ep else f"local {cfg.backbone}"
    shared = f" ({len(share)} more share their category's facts)" if per_category else ""
    console.print(f"{len(todo)} images · {done} have facts already · {len(left)} to ask{shared} · "
                  f"{len(cfg.prompts)} prompts each · {source}")
    if dry_run:
        if left:
            first = fx.prompts_for(cfg.context, cfg.prompts, left[0].category)
            console.print(f"first image: {left[0].rel}\nfirst prompt: {first[0]}")
        return
    if not left and not share:
        console.print(f"nothing to do: {out}")
        return

    written, failed = 0, []
    columns = (TextColumn("facts"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("facts", total=len(left))
        step = lambda: bar.advance(task)  # noqa: E731
        if ep is not None and left:
            written, failed = fx.run_endpoint(ep, left, out, cfg, name, pid, max_facts, on_image=step)
        elif left:
            from sage_cli.models.engine import Engine

            engine = Engine.load(cfg.backbone, dtype=dtype, device=device)
            written = fx.run_local(engine, left, out, cfg, name, pid, max_facts, on_image=step)
    if share:
        console.print(f"{fx.share_category_facts(share, out, name, pid)} images share their category's facts")
    for f in failed[:5]:
        console.print(f"[yellow]skipped[/] {f}")
    console.print(f"wrote facts for {written} images ({len(failed)} skipped, asked again on the next run) → {out}")
    if failed:
        raise typer.Exit(1)
