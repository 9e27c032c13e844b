"""`sage facts extract`: which images to ask about, and asking them (local backbone or an endpoint).

`plan` says what a run will do (what is done already, what is asked, what shares its category's
facts) and `run` does it; the command and the demo call both. Each finished image becomes one appended
record (store.py), so a killed run loses at most the images in flight and a rerun asks only for what is
missing. Images are keyed by content hash, not by name.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sage_cli import jsonl
from sage_cli.errors import SageError
from sage_cli.facts.store import FACTS_FORMAT, prompt_set_id, read_facts, sha256_file
from sage_cli.endpoint import endpoint_secrets, redact
from sage_cli.facts.writer import sentences, split_sentences


@dataclass
class Target:
    path: Path  # the file
    rel: str  # as recorded: relative to the data set root
    category: str
    sha256: str = ""


def targets(root: Path, fmt: str | None = None, which: str = "test", strict: bool = False) -> list[Target]:
    """The images of a data set to write facts for, each once: test images (default) or every image."""
    from sage_cli.data.formats import open_dataset
    from sage_cli.data.images import IMAGE_SUFFIXES

    root = Path(root)
    if root.is_dir() and fmt is None and not any(p.is_dir() for p in root.iterdir()):
        # a plain folder of photos
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SageError(f"{root}: no images here")
        return [Target(p, p.name, "") for p in files]
    ds = open_dataset(root, fmt, strict=strict)
    found: dict[str, Target] = {}
    for r in ds.records:
        if ds.kind == "image":
            pairs = [(r.image, r.category)] if which == "test" and r.split == "test" else []
            if which == "all":
                pairs = [(r.image, r.category)] + ([(r.reference, r.category)] if r.reference else [])
            base = r.root
        elif ds.kind == "qa":
            pairs = [(r.test_image, r.category)]
            if which == "all" and r.reference_image:
                pairs.append((r.reference_image, r.category))
            base = r.root or root
        else:  # MMAD items
            pairs = [(r.image, r.category)]
            base = root
        for rel, cat in pairs:
            found.setdefault(str(rel), Target(Path(base, rel), str(rel), cat))
    if not found:
        raise SageError(f"{root}: no {'test ' if which == 'test' else ''}images to write facts for")
    return list(found.values())


def context_line(context: str, category: str) -> str:
    """The recipe's context with the category filled in ("" when either is missing)."""
    if not context or not category:
        return ""
    try:
        return context.format(category=category.replace("_", " "))
    except (KeyError, IndexError, ValueError) as e:
        raise SageError(f"facts recipe: the context {context!r} has a bad placeholder ({e}); use {{category}}")


def prompts_for(context: str, prompts: list[str], category: str) -> list[str]:
    """The recipe's prompts, each after the context line when the category is known."""
    line = context_line(context, category)
    return [f"{line} {p}" if line else p for p in prompts]


def pending(todo: list[Target], out: Path, model: str, prompt_id: str) -> tuple[list[Target], int]:
    """Hash the images and drop those with a record for (hash, model, prompt_id) in `out` already."""
    done = read_facts(out)
    left, seen = [], set()
    for t in todo:
        t.sha256 = sha256_file(t.path)
        if (t.sha256, model, prompt_id) in done or t.sha256 in seen:
            continue
        seen.add(t.sha256)
        left.append(t)
    return left, len(todo) - len(left)


def asked_by_category(out: Path, model: str, prompt_id: str) -> dict[str, dict]:
    """{category: the first record of an image asked (not shared) with this model and prompt set}."""
    first: dict[str, dict] = {}
    for r in read_facts(out).values():
        if r["model"] == model and r["prompt_id"] == prompt_id and "shared_from" not in r:
            first.setdefault(r.get("category", ""), r)
    return first


def split_by_category(left: list[Target], out: Path, model: str, prompt_id: str) -> tuple[list[Target], list[Target]]:
    """(one image to ask per category that has no record yet, the images that will share its facts)."""
    have = asked_by_category(out, model, prompt_id)
    ask: dict[str, Target] = {}
    share = []
    for t in left:
        if t.category in have or t.category in ask:
            share.append(t)
        else:
            ask[t.category] = t
    return list(ask.values()), share


def share_category_facts(share: list[Target], out: Path, model: str, prompt_id: str) -> int:
    """Give each image the facts of the first image of its category asked with this model and prompt set.

    The record names the image asked (`shared_from`), so a facts file says which facts were not about
    the image itself. Images whose category has no asked record yet are left for the next run."""
    first = asked_by_category(out, model, prompt_id)  # read again: the asking just appended to `out`
    recs = []
    for t in share:
        src = first.get(t.category)
        if src is not None:
            recs.append({"format": FACTS_FORMAT, "image": t.rel, "image_sha256": t.sha256, "model": model,
                         "prompt_id": prompt_id, "category": t.category, "prompts": src.get("prompts", []),
                         "facts": src["facts"], "shared_from": src.get("image", src["image_sha256"])})
    return jsonl.append(out, recs) if recs else 0


def record(t: Target, model: str, prompt_id: str, prompts: list[str], replies: list[str], limit: int,
           context: str = "") -> dict:
    echo = tuple(split_sentences(context_line(context, t.category))) if context else ()  # not a fact
    return {"format": FACTS_FORMAT, "image": t.rel, "image_sha256": t.sha256, "model": model,
            "prompt_id": prompt_id, "category": t.category, "prompts": prompts,
            "facts": sentences(replies, drop=echo, limit=limit), "replies": replies}


def run_local(engine, todo: list[Target], out: Path, recipe, model: str, prompt_id: str, limit: int,
              on_image=None) -> int:
    """Batches of images; each image encoded once, a batch's prompts decoded together (writer.ask)."""
    from sage_cli.data.images import load_rgb
    from sage_cli.facts.writer import ask

    written = 0
    for start in range(0, len(todo), recipe.batch_size):
        batch = todo[start:start + recipe.batch_size]
        asks = [prompts_for(recipe.context, recipe.prompts, t.category) for t in batch]
        replies = ask(engine, [load_rgb(t.path) for t in batch], asks, recipe.max_new_tokens, recipe.temperature)
        for t, qs, rs in zip(batch, asks, replies):
            jsonl.append(out, [record(t, model, prompt_id, qs, rs, limit, recipe.context)])
            written += 1
            if on_image:
                on_image()
    return written


def run_endpoint(ep, todo: list[Target], out: Path, recipe, model: str, prompt_id: str, limit: int,
                 on_image=None) -> tuple[int, list[str]]:
    """Images in parallel (at most the endpoint's concurrency); each image's prompts in turn.

    A request the server rejects skips that image (listed in the returned failures, retried on the next
    run); an endpoint that cannot serve at all (auth, unknown model) stops the run.
    """
    from sage_cli.endpoint import RequestRejected, image_part

    lock = threading.Lock()
    failures: list[str] = []
    secrets = endpoint_secrets(recipe.endpoint)  # a server echoing the key must not get it written

    def one(t: Target) -> int:
        asks = prompts_for(recipe.context, recipe.prompts, t.category)
        try:
            part = image_part(t.path)  # one encoding of the image, sent with every prompt
            replies = [ep.chat([{"role": "user", "content": [{"type": "text", "text": q}, part]}],
                               max_tokens=recipe.max_new_tokens, temperature=recipe.temperature) for q in asks]
        except RequestRejected as e:
            with lock:
                failures.append(redact(f"{t.rel}: {e}", secrets))
            return 0
        rec = redact(record(t, model, prompt_id, asks, redact(replies, secrets), limit, recipe.context), secrets)
        with lock:  # one writer at a time keeps lines whole
            jsonl.append(out, [rec])
        if on_image:
            on_image()
        return 1

    pool = ThreadPoolExecutor(max_workers=ep.concurrency)
    try:
        futures = [pool.submit(one, t) for t in todo]
        written = sum(f.result() for f in futures)  # the first fatal endpoint error stops the run
    except SageError as e:
        raise e.__class__(redact(str(e), secrets)) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return written, failures


# ---------------------------------------------------------------------------------------------- a run


@dataclass
class Plan:
    """What one run does: `left` asked now, `share` given their category's facts, `done` skipped."""

    todo: list[Target]  # every image of the data set
    left: list[Target]
    share: list[Target]
    done: int
    model: str  # as recorded: the local backbone or the endpoint's model
    prompt_id: str


def check(recipe, recipe_name: str, src: Path | None, out: Path | None, which: str) -> None:
    """The request's own errors, before anything is read."""
    if src is None or out is None:
        raise SageError("give the images with --from ROOT and the facts file with --out FILE")
    if not recipe.prompts:
        raise SageError(f"recipe {recipe_name!r} has no prompts")
    if which not in ("test", "all"):
        raise SageError(f"--which must be test or all, not {which!r}")
    if out.exists() and out.is_dir():
        raise SageError(f"{out}: is a folder; --out takes a .jsonl file")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:  # the folders --out would make
        parent = parent.parent
    if not parent.is_dir():
        raise SageError(f"{out}: cannot write the facts file there ({parent} is not a folder)")


def plan(src: Path, out: Path, recipe, model: str, which: str = "test", fmt: str | None = None,
         limit: int | None = None, per_category: bool = False) -> Plan:
    """The images of `src`, less those with a record for (model, the recipe's prompts) in `out`."""
    pid = prompt_set_id([recipe.context, *recipe.prompts])
    todo = targets(src, fmt, which)
    left, done = pending(todo, out, model, pid)
    left = left[:limit] if limit else left
    share: list[Target] = []
    if per_category:
        left, share = split_by_category(left, out, model, pid)
    return Plan(todo, left, share, done, model, pid)


def run(p: Plan, out: Path, recipe, endpoint=None, device: str = "auto", dtype: str = "auto", max_facts: int = 16,
        on_image=None) -> tuple[int, list[str], int]:
    """Ask about `p.left` (the endpoint, else the recipe's local backbone), then share category facts.

    Returns (images written, images the endpoint refused, images given their category's facts).
    """
    written, failed = 0, []
    if endpoint is not None and p.left:
        written, failed = run_endpoint(endpoint, p.left, out, recipe, p.model, p.prompt_id, max_facts, on_image)
    elif p.left:
        from sage_cli.models.engine import Engine

        engine = Engine.load(recipe.backbone, dtype=dtype, device=device)
        written = run_local(engine, p.left, out, recipe, p.model, p.prompt_id, max_facts, on_image)
    shared = share_category_facts(p.share, out, p.model, p.prompt_id) if p.share else 0
    return written, failed, shared
