"""`sage infer TEST [REF...] -q ...`: answers with their reasoning, P(yes) and where the anomaly is."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from sage_cli.commands.options import Backbone, Checkpoint, Device, Dtype
from sage_cli.defaults import DEFAULT_QUESTION


def infer(
    test: Path = typer.Argument(..., help="Test image (PNG, JPEG, BMP, TIFF or WebP)."),
    reference: Optional[list[Path]] = typer.Argument(None, help="Normal reference image(s) of the same part, same size; omit for zero-shot. With several, the anomaly map compares each test patch with its nearest patch in any of them; the prompt shows the first."),
    question: Optional[list[str]] = typer.Option(None, "--question", "-q", help=f"A question (repeatable; all share one image encoding). Default: {DEFAULT_QUESTION!r}"),
    questions_file: Optional[Path] = typer.Option(None, "--questions-file", help="More questions, one per line (# comments allowed)."),
    checkpoint: Checkpoint = None,
    backbone: Backbone = None,
    facts: Optional[str] = typer.Option(None, "--facts", help="Fact sentences: a facts JSONL from `sage facts extract` (matched by image hash), a text file with one fact per line, or 'auto' to write them with the backbone now. Without it, a checkpoint's own generic facts (facts.txt) if it has any."),
    heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="Write the test image with the anomaly map and the K selected patches drawn on it (.png/.jpg; needs REF)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: answers, P(yes), anomaly-map stats, timings."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", min=1, help="Longest answer, in tokens."),
    repetition_penalty: float = typer.Option(1.15, "--repetition-penalty", min=1.0, help="Discourage repeating generated tokens (1 = off; small models loop without it)."),
    device: Device = "auto",
    dtype: Dtype = "auto",
    seed: int = typer.Option(0, "--seed", help="Seeds the untrained SAGE layers when no checkpoint is given."),
    guided: bool = typer.Option(True, "--guided/--no-guided", help="With a calibrated checkpoint: the first word (yes/no) of an answer on whether the part is defective or normal, or where the defect is, comes from the calibrated detection and the anomaly map (without REF: from the zero-shot calibration, `sage calibrate --shots 0`, and not for places); the model writes the rest. --no-guided: the model's own first word."),
) -> None:
    """Answer questions about a test image against a normal reference, with the anomaly map.

    The images are encoded and the shared prompt prefilled once; every question reuses them. The
    answer is streamed on a terminal. P(yes) is read from the first answer token's yes/no
    probabilities. Without REF the model answers zero-shot and there is no anomaly map. Several REFs:
    Eq. 1 runs over the union of their patches (a memory bank of normal patches); the prompt shows the
    first reference. A checkpoint calibrated with `sage calibrate` also reports P(defect) and its verdict
    at the stored threshold, beside the raw P(yes), and (unless --no-guided) that verdict starts the
    answers to questions on whether the part is defective or normal and where the defect is: they are
    marked "guided", and P(yes) stays the model's own. A guided answer whose following words say the
    opposite of its first word is marked "contradicted".
    """
    from sage_cli.infer import Inputs, facts_for, load_engine, run_infer

    inputs = Inputs.read(test, reference, question, questions_file, heatmap, facts)  # every input check, no model yet
    engine, load_s = load_engine(backbone, checkpoint, dtype, device, seed, repetition_penalty)
    given = facts_for(facts, inputs, engine)
    if as_json:
        done = run_infer(engine, inputs, given, max_new_tokens, timings={"load_s": load_s}, guided=guided)
        sys.stdout.write(json.dumps(done.report(), indent=2) + "\n")
        return
    done = run_infer(engine, inputs, given, max_new_tokens, timings={"load_s": load_s}, guided=guided,
                     **_printer(sys.stdout))
    _epilogue(sys.stdout, done, given)


def _printer(out) -> dict:
    """run_infer's callbacks printing "Q: ... A: ..." and the answer's figures (streamed on a terminal)."""
    from sage_cli.models.guide import contradicted

    stream = out.isatty()

    def question(q):
        out.write(f"Q: {q}\nA: ")
        out.flush()

    def answer(a):
        out.write(("" if stream else a.text) + "\n")
        p = f"P(yes) {a.p_yes:.2f} · " if a.p_yes is not None else ""
        g = "yes/no from the detection · " if a.guided else ""
        if contradicted(a):
            g += "the words after it say otherwise: trust the yes/no and the map · "
        out.write(f"   {g}{p}{a.new_tokens} tokens · {a.tokens_per_s:.1f} tokens/s\n\n")

    text = (lambda s: (out.write(s), out.flush())) if stream else None
    return {"on_question": question, "on_text": text, "on_answer": answer}


def _epilogue(out, done, given: list[str]) -> None:
    """The anomaly line, where the heatmap went, and what the facts and weights were."""
    engine = done.engine
    for line in (done.detection_line(), done.anomaly_line()):
        if line:
            out.write(line + "\n")
    if len(done.inputs.references) > 1:
        out.write(f"references: {len(done.inputs.references)} (the map compares with the union of their patches; the "
                  "prompt shows the first)\n")
    if done.inputs.heatmap is not None:
        out.write(f"heatmap: {done.inputs.heatmap}\n")
    if not given and engine.default_facts:
        out.write(f"facts: the checkpoint's {len(engine.default_facts)} generic sentences (facts.txt); --facts gives "
                  "your own\n")
    if engine.checkpoint is None:
        out.write(f"note: {engine.backbone_name} with untrained SAGE layers (no --checkpoint); answers are not "
                  "those of a trained inspector\n")
