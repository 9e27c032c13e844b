"""What `sage infer` does, for the command and the demo: check the inputs, answer over one encoding,
draw the heatmap, and report (the --json object, the anomaly line).

The command only parses options and prints; everything that can fail on the input (images, questions,
a facts file, where the heatmap goes) fails in `Inputs.read`, before a model is loaded.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sage_cli.defaults import DEFAULT_QUESTION
from sage_cli.errors import SageError
from sage_cli.heatmap import check_suffix



def check_output_file(path: Path, what: str) -> None:
    """Refuse an output path that cannot be written (a folder, under a file, unwritable), before any work."""
    path = Path(path)
    if path.is_dir():
        raise SageError(f"{path}: is a folder; the {what} needs a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:  # the folders to be made, up to one that exists
        parent = parent.parent
    if not parent.is_dir():
        raise SageError(f"{path}: cannot write the {what} there ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SageError(f"{path}: cannot write the {what} there ({parent} is not writable)")


def check_heatmap_path(path: Path) -> None:
    """The heatmap's suffix picks its format; checked with the rest of the request, not after inference."""
    check_suffix(path)
    check_output_file(path, "heatmap")


@dataclass
class Inputs:
    """A checked request: the questions, the decoded images, and where the heatmap goes.

    Several normal references (`references`, `ref_imgs`): Eq. 1 compares the test image with the union
    of their patches and the prompt shows the first (`Engine.encode`); `reference` / `ref_img` are the first.
    """

    test: Path
    reference: Path | None
    questions: list[str]
    test_img: object  # PIL
    ref_img: object | None
    heatmap: Path | None = None
    facts_file: Path | None = None  # --facts FILE, read here ('auto' is written later, by the model)
    file_facts: list[str] | None = None
    references: list[Path] = field(default_factory=list)  # every reference, the first = `reference`
    ref_imgs: list = field(default_factory=list)  # their PIL images

    @property
    def reference_images(self):
        """What `Engine.encode` takes: the one reference image, the list of several, or None."""
        return self.ref_imgs if len(self.ref_imgs) > 1 else self.ref_img

    @classmethod
    def read(cls, test: Path, reference: Path | list[Path] | None, questions: list[str] | None = None,
             questions_file: Path | None = None, heatmap: Path | None = None, facts: str | None = None) -> Inputs:
        """Questions (-q, then the file's; DEFAULT_QUESTION without any), images of one size (one or
        several references), where the heatmap goes, the test image's facts from a --facts file."""
        from sage_cli.data.images import load_rgb
        from sage_cli.models.engine import read_questions

        qs = list(questions or []) + (read_questions(questions_file) if questions_file is not None else [])
        qs = qs or [DEFAULT_QUESTION]
        if any(not q.strip() for q in qs):
            raise SageError("a question is empty (-q needs text)")
        refs = [Path(r) for r in (reference if isinstance(reference, (list, tuple)) else [reference])
                if r is not None]
        if heatmap is not None and not refs:
            raise SageError("--heatmap needs a reference image: the anomaly map compares the test image with it")
        if heatmap is not None:
            check_heatmap_path(heatmap)
        test_img = load_rgb(test)
        ref_imgs = [load_rgb(r) for r in refs]
        for r, img in zip(refs, ref_imgs):
            if img.size != test_img.size:
                raise SageError(f"{r}: the reference is {img.size[0]}x{img.size[1]} but the test image is "
                                f"{test_img.size[0]}x{test_img.size[1]}; use a reference taken like the test image")
        facts_file = file_facts = None
        if facts is not None and facts != "auto":
            from sage_cli.facts.store import facts_for_image

            facts_file = Path(facts)
            file_facts = facts_for_image(facts_file, test)
        return cls(Path(test), refs[0] if refs else None, qs, test_img, ref_imgs[0] if ref_imgs else None, heatmap,
                   facts_file, file_facts, refs, ref_imgs)


@dataclass
class Inference:
    """The answers to one request, with what they were computed from."""

    engine: object
    inputs: Inputs
    prefix: object  # engine.Prefix
    answers: list  # engine.Answer per question
    anomaly: object | None  # engine.AnomalyMap; None zero-shot
    timings: dict = field(default_factory=dict)
    # the checkpoint's calibrated detection (models/calibration.detect): {question, p_yes, p_defect, verdict,
    # threshold}; None without a calibration (zero-shot: without one fitted with --shots 0)
    detection: dict | None = None
    calibration: dict | None = None  # the checkpoint's stored calibration, as read

    @property
    def facts(self) -> list[str]:
        """What the model read: the checkpoint's defaults when none were given."""
        return self.prefix.encoding.facts[0]

    def report(self) -> dict:
        """The --json object."""
        from sage_cli import __version__
        from sage_cli.models import guide

        a, i = self.anomaly, self.inputs
        return {
            "sage": __version__,
            "backbone": self.engine.backbone_name,
            "checkpoint": self.engine.checkpoint,
            "test": str(i.test),
            "reference": str(i.reference) if i.reference is not None else None,
            "references": [str(r) for r in i.references],
            "facts": self.facts,
            "answers": [{"question": x.question, "answer": x.text, "p_yes": x.p_yes, "guided": x.guided,
                         "contradicted": guide.contradicted(x), **self._calibrated(x),
                         "new_tokens": x.new_tokens, "prompt_tokens": x.prompt_tokens, "ttft_s": x.ttft_s,
                         "tokens_per_s": x.tokens_per_s}
                        for x in self.answers],
            "detection": self.detection_report(),
            "anomaly": {**a.summary(), "map": a.rounded()} if a is not None else None,
            "heatmap": str(i.heatmap) if i.heatmap is not None else None,
            "timings": self.timings,
        }

    def _calibrated(self, answer) -> dict:
        """p_defect and verdict for an answer to the calibration's own question (its P(yes) is the feature)."""
        d = self.detection
        if d is None or answer.question.strip() != d["question"]:
            return {}
        return {"p_defect": d["p_defect"], "verdict": d["verdict"]}

    def detection_report(self) -> dict | None:
        """The calibrated detection with where its calibration comes from (--json's "detection")."""
        if self.detection is None:
            return None
        val = (self.calibration or {}).get("val") or {}
        return {**self.detection, "calibration": {"val": val.get("name"), "pairs": val.get("pairs"),
                                                  "date": (self.calibration or {}).get("date"),
                                                  "features": (self.calibration or {}).get("features")}}

    def detection_line(self) -> str | None:
        """The calibrated verdict in words; None without a calibration for this number of references."""
        d = self.detection
        if d is None:
            return None
        val = (self.calibration or {}).get("val") or {}
        fitted, given = (self.calibration or {}).get("shots", 1), len(self.inputs.references)
        other = (f"; fitted on {fitted}-reference maps, this one has {given}: `sage calibrate --shots {given}` "
                 "fits these" if given != fitted else "")
        raw = f"; raw P(yes) {d['p_yes']:.2f} to {d['question']!r}" if d["p_yes"] is not None else ""
        return (f"detection: P(defect) {d['p_defect']:.2f} -> {d['verdict']} (threshold {d['threshold']:.2f}{raw}; "
                f"calibrated{' zero-shot' if fitted == 0 else ''} on {val.get('pairs')} pairs of {val.get('name')}{other})")

    def anomaly_line(self) -> str | None:
        """Where the map peaks, in words and patches; None zero-shot."""
        from sage_cli.data.masks import location_words

        a = self.anomaly
        if a is None:
            return None
        (r, c), (gh, gw) = a.peak, a.grid
        where = location_words((c, r, c + 1, r + 1), gw, gh)
        return f"anomaly map: peak {a.max:.3f} at the {where} (patch row {r}, col {c} of {gh}x{gw}); mean {a.mean:.3f}"


def load_engine(backbone: str | None, checkpoint: Path | None, dtype: str = "auto", device: str = "auto",
                seed: int = 0, repetition_penalty: float = 1.15):
    """(engine, seconds): `checkpoint` as given (sage-smol or a folder) or the shipped one by default."""
    from sage_cli.models.checkpoint import resolve as resolve_checkpoint
    from sage_cli.models.engine import Engine

    checkpoint = resolve_checkpoint(checkpoint, backbone)
    if checkpoint:
        from sage_cli.models.calibration import of_checkpoint

        of_checkpoint(checkpoint)  # a malformed stored calibration fails now, not after the answers
        of_checkpoint(checkpoint, zero_shot=True)
    t0 = time.perf_counter()
    engine = Engine.load(backbone, str(checkpoint) if checkpoint else None, dtype=dtype, device=device, seed=seed,
                         repetition_penalty=repetition_penalty)
    return engine, time.perf_counter() - t0


def facts_for(spec: str | None, inputs: Inputs, engine) -> list[str]:
    """--facts: none (the checkpoint's defaults), 'auto' (written now by the backbone, as `sage facts
    extract` writes them), a facts JSONL (by image hash) or a text file."""
    if spec is None:
        return []
    if inputs.facts_file is not None and Path(spec) == inputs.facts_file:
        return list(inputs.file_facts)  # read with the inputs, before the model loaded
    if spec == "auto":
        from sage_cli.config import load_recipe
        from sage_cli.facts.writer import local_facts

        recipe = load_recipe("default", "facts")
        return local_facts(engine, inputs.test_img, recipe.prompts, recipe.max_new_tokens,
                           limit=engine.model.num_facts, temperature=recipe.temperature)
    from sage_cli.facts.store import facts_for_image

    return facts_for_image(Path(spec), inputs.test)


def run_infer(engine, inputs: Inputs, facts: list[str], max_new_tokens: int = 128, on_question=None,
              on_text=None, on_answer=None, timings: dict | None = None, guided: bool = True) -> Inference:
    """Encode the pair once, answer every question over it, draw the heatmap if asked.

    `on_question(q)` before each answer, `on_text(str)` as it is decoded (None: not streamed),
    `on_answer(answer)` after it. `guided`: where the checkpoint is calibrated and a reference is given,
    the calibrated detection is read first and sets the first word of the answers it can give
    (models/guide.py).
    """
    from sage_cli.models import calibration as cal
    from sage_cli.models import guide

    prefix = engine.encode(inputs.test_img, inputs.reference_images, facts)
    anomaly = engine.anomaly(prefix)
    stored = cal.of_checkpoint(engine.checkpoint, zero_shot=anomaly is None)  # no reference: the zero-shot fit
    detection = None
    if guided and stored is not None:
        detection = cal.detect(engine, stored, prefix, anomaly)
    answers = []
    for q in inputs.questions:
        if on_question:
            on_question(q)
        answers.append(engine.answer(prefix, q, max_new_tokens=max_new_tokens, on_text=on_text,
                                     verdict=guide.verdict_for(q, detection, anomaly)))
        if on_answer:
            on_answer(answers[-1])
    if inputs.heatmap is not None:
        from sage_cli import heatmap as hm

        hm.save(hm.render_map(inputs.test_img, anomaly), inputs.heatmap)
    asked = next((a for a in answers if stored and a.question.strip() == stored.get("question")), None)
    if detection is None and stored is not None:  # reuses an answer's P(yes) if it can
        detection = cal.detect(engine, stored, prefix, anomaly, asked.p_yes if asked else None,
                               asked.question if asked else None)
    elif detection is not None and detection["p_yes"] is None and asked is not None:
        detection["p_yes"] = asked.p_yes  # the raw figure beside the calibrated one (a map-only fit reads none)
    t = {**(timings or {}), "encode_s": prefix.encode_s, "prefill_s": prefix.prefill_s}
    return Inference(engine, inputs, prefix, answers, anomaly, t, detection, stored)
