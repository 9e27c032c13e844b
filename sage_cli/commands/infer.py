"""`sage infer TEST [REF] -q ...`: answers with their reasoning, P(yes) and where the anomaly is."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from sage_cli.defaults import DEFAULT_QUESTION


def infer(
    test: Path = typer.Argument(..., help="Test image (PNG, JPEG, BMP, TIFF or WebP)."),
    reference: Optional[Path] = typer.Argument(None, help="Normal reference image of the same part, same size; omit for zero-shot."),
    question: Optional[list[str]] = typer.Option(None, "--question", "-q", help=f"A question (repeatable; all share one image encoding). Default: {DEFAULT_QUESTION!r}"),
    questions_file: Optional[Path] = typer.Option(None, "--questions-file", help="More questions, one per line (# comments allowed)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A sage checkpoint directory, or sage-smol for the one shipped with sage (the default when neither --checkpoint nor --backbone is given)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone name or local VLM path, with untrained SAGE layers (no checkpoint)."),
    facts: Optional[str] = typer.Option(None, "--facts", help="Fact sentences: a facts JSONL from `sage facts extract` (matched by image hash), a text file with one fact per line, or 'auto' to write them with the backbone now. Without it, a checkpoint's own generic facts (facts.txt) if it has any."),
    heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Write the test image with the anomaly map and the K selected patches drawn on it (.png/.jpg; needs REF)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: answers, P(yes), anomaly-map stats, timings."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Longest answer, in tokens."),
    repetition_penalty: float = typer.Option(1.15, "--repetition-penalty", min=1.0, help="Discourage repeating generated tokens (1 = off; small models loop without it)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on a GPU, float32 on CPU), float32, bfloat16 or float16."),
    seed: int = typer.Option(0, "--seed", help="Seeds the untrained SAGE layers when no checkpoint is given."),
) -> None:
    """Answer questions about a test image against a normal reference, with the anomaly map.

    The images are encoded and the shared prompt prefilled once; every question reuses them. The
    answer is streamed on a terminal. P(yes) is read from the first answer token's yes/no
    probabilities. Without REF the model answers zero-shot and there is no anomaly map.
    """
    from sage_cli.data.images import load_rgb
    from sage_cli.errors import SageError
    from sage_cli.models.checkpoint import resolve as resolve_checkpoint
    from sage_cli.models.engine import Engine, read_questions

    questions = list(question or [])
    if questions_file is not None:
        questions += read_questions(questions_file)
    if not questions:
        questions = [DEFAULT_QUESTION]
    for q in questions:
        if not q.strip():
            raise SageError("a question is empty (-q needs text)")
    if heatmap is not None and reference is None:
        raise SageError("--heatmap needs a reference image: the anomaly map compares the test image with it")
    checkpoint = resolve_checkpoint(checkpoint, backbone)

    test_img = load_rgb(test)
    ref_img = load_rgb(reference) if reference is not None else None
    if ref_img is not None and ref_img.size != test_img.size:
        raise SageError(f"{reference}: the reference is {ref_img.size[0]}x{ref_img.size[1]} but the test image is "
                        f"{test_img.size[0]}x{test_img.size[1]}; use a reference taken like the test image")

    t0 = time.perf_counter()
    engine = Engine.load(backbone, str(checkpoint) if checkpoint else None, dtype=dtype, device=device, seed=seed,
                         repetition_penalty=repetition_penalty)
    load_s = time.perf_counter() - t0
    fact_list = _facts(facts, test, test_img, engine)

    prefix = engine.encode(test_img, ref_img, fact_list)
    stream = not as_json and sys.stdout.isatty()
    out = sys.stdout
    answers = []
    for q in questions:
        if not as_json:
            out.write(f"Q: {q}\nA: ")
            out.flush()
        on_text = (lambda s: (out.write(s), out.flush())) if stream else None
        a = engine.answer(prefix, q, max_new_tokens=max_new_tokens, on_text=on_text)
        answers.append(a)
        if not as_json:
            out.write(("" if stream else a.text) + "\n")
            p = f"P(yes) {a.p_yes:.2f} · " if a.p_yes is not None else ""
            out.write(f"   {p}{a.new_tokens} tokens · {a.tokens_per_s:.1f} tokens/s\n\n")

    anomaly = engine.anomaly(prefix)
    if heatmap is not None:
        from sage_cli import heatmap as hm

        hm.save(hm.render(test_img, anomaly["map"].numpy(), anomaly["selected"], tuple(anomaly["grid"])), heatmap)

    timings = {"load_s": load_s, "encode_s": prefix.encode_s, "prefill_s": prefix.prefill_s}
    if as_json:
        used = prefix.encoding.facts[0]  # what the model read: the checkpoint's defaults when none were given
        out.write(json.dumps(_report(engine, test, reference, used, answers, anomaly, heatmap, timings),
                             indent=2) + "\n")
        return
    if anomaly is not None:
        from sage_cli.data.masks import location_words

        r, c = anomaly["peak"]
        gh, gw = anomaly["grid"]
        where = location_words((c, r, c + 1, r + 1), gw, gh)
        out.write(f"anomaly map: peak {anomaly['max']:.3f} at the {where} (patch row {r}, col {c} of "
                  f"{gh}x{gw}); mean {anomaly['mean']:.3f}\n")
    if heatmap is not None:
        out.write(f"heatmap: {heatmap}\n")
    if not fact_list and engine.default_facts:
        out.write(f"facts: the checkpoint's {len(engine.default_facts)} generic sentences (facts.txt); --facts gives "
                  "your own\n")
    if engine.checkpoint is None:
        out.write(f"note: {engine.backbone_name} with untrained SAGE layers (no --checkpoint); answers are not "
                  "those of a trained inspector\n")


def _facts(spec: str | None, test: Path, test_img, engine) -> list[str]:
    if spec is None:
        return []
    if spec == "auto":
        from sage_cli.config import load_recipe
        from sage_cli.facts.writer import local_facts

        recipe = load_recipe("default", "facts")
        return local_facts(engine, test_img, recipe.prompts, recipe.max_new_tokens, limit=engine.model.num_facts)
    from sage_cli.facts.store import facts_for_image

    return facts_for_image(Path(spec), test)


def _report(engine, test, reference, facts, answers, anomaly, heatmap, timings) -> dict:
    from sage_cli import __version__

    amap = None
    if anomaly is not None:
        amap = {k: v for k, v in anomaly.items() if k != "map"}
        amap["map"] = [[round(float(x), 4) for x in row] for row in anomaly["map"].tolist()]
    return {
        "sage": __version__,
        "backbone": engine.backbone_name,
        "checkpoint": engine.checkpoint,
        "test": str(test),
        "reference": str(reference) if reference is not None else None,
        "facts": facts,
        "answers": [{"question": a.question, "answer": a.text, "p_yes": a.p_yes, "new_tokens": a.new_tokens,
                     "prompt_tokens": a.prompt_tokens, "ttft_s": a.ttft_s, "tokens_per_s": a.tokens_per_s}
                    for a in answers],
        "anomaly": amap,
        "heatmap": str(heatmap) if heatmap is not None else None,
        "timings": timings,
    }
