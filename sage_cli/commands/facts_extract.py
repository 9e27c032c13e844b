"""`sage facts extract`: fact sentences about each image, from the local backbone or an endpoint, cached."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sage_cli.commands.options import Device, Dtype

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
    device: Device = "auto",
    dtype: Dtype = "auto",
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
    from rich.markup import escape

    from sage_cli.facts import extract as fx
    from sage_cli.endpoint import endpoint_secrets, redact

    cfg = resolve(recipe, "facts", overrides, print_config)
    fx.check(cfg, recipe, src, out, which)
    console = Console(stderr=True, soft_wrap=True)
    ep = _endpoint(cfg, base_url, model, check=not dry_run)
    secrets = endpoint_secrets(cfg.endpoint)  # a served model's name may echo the key: records hold it redacted
    name = redact(ep.model or "(served model)", secrets) if ep else cfg.backbone
    p = fx.plan(src, out, cfg, name, which, fmt, limit, per_category)
    source = escape(redact(ep.describe(), secrets)) if ep else f"local {escape(cfg.backbone)}"
    shared = f" ({len(p.share)} more share their category's facts)" if per_category else ""
    console.print(f"{len(p.todo)} images · {p.done} have facts already · {len(p.left)} to ask{shared} · "
                  f"{len(cfg.prompts)} prompts each · {source}")
    if dry_run:
        if p.left:
            first = fx.prompts_for(cfg.context, cfg.prompts, p.left[0].category)
            console.print(f"first image: {escape(p.left[0].rel)}\nfirst prompt: {escape(first[0])}")
        return
    if not p.left and not p.share:
        console.print(f"nothing to do: {out}")
        return
    written, failed, n_shared = _run(console, p, out, cfg, ep, device, dtype, max_facts)
    if p.share:
        console.print(f"{n_shared} images share their category's facts")
    for f in failed[:5]:
        console.print(f"[yellow]skipped[/] {escape(f)}")
    console.print(f"wrote facts for {written} images ({len(failed)} skipped, asked again on the next run) → {out}")
    if failed:
        raise typer.Exit(1)


def _endpoint(cfg, base_url: str | None, model: str | None, check: bool):
    """The endpoint when one is set (checked before any work: reachable, key accepted, model served)."""
    if not (base_url or cfg.endpoint.base_url):
        return None
    from sage_cli.endpoint import Endpoint
    from sage_cli.errors import SageError
    from sage_cli.endpoint import endpoint_secrets, redact

    ep = Endpoint.from_config(cfg.endpoint, base_url=base_url, model=model)
    if check:
        try:
            ep.check()
        except SageError as e:  # it may list the served model names, which a hostile server controls
            raise e.__class__(redact(str(e), endpoint_secrets(cfg.endpoint))) from None
    return ep


def _run(console, p, out: Path, cfg, ep, device: str, dtype: str, max_facts: int):
    """fx.run under a progress bar: (written, refused by the endpoint, shared)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sage_cli.facts import extract as fx

    columns = (TextColumn("facts"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("facts", total=len(p.left))
        return fx.run(p, out, cfg, ep, device, dtype, max_facts, on_image=lambda: bar.advance(task))
