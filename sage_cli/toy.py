"""A toy data set made from the bundled hazelnut photos: synthetic defects, QA groups, preference pairs.

It is what `sage bench speed train` trains on when given no data, and the first steps of the demo:
the same `sage` commands a user would type, run in-process, so what it makes is what they make.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

from sage_cli.errors import SageError

SAMPLE = Path(__file__).resolve().parent / "assets" / "hazelnut_sample"
FIXED_FACTS = [  # used where the content of the facts does not matter (speed measurements)
    "Hazelnuts can show cracks, holes, stains or print marks on the shell.",
    "A normal hazelnut has a smooth, evenly brown shell with a pale base.",
    "Cracks let moisture and mould into the kernel.",
    "Holes in the shell are often left by insects.",
    "Dark stains come from moisture or bruising in storage.",
    "Foreign particles on the shell come from handling or packaging.",
    "The shell should be free of cuts and missing pieces.",
    "Defects on the shell lower the grade of the nut.",
]


def run_captured(argv: list[str]) -> tuple[int, str, str]:
    """Run one `sage` command in-process with its output captured: (exit code, stdout, stderr)."""
    from sage_cli.cli import run

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = run(argv)
    return rc, out.getvalue(), err.getvalue()


def last_line(text: str) -> str:
    return (text.strip().splitlines() or ["(no message)"])[-1]


def sage_step(argv: list[str]) -> None:
    """Run one `sage` command quietly; a failure becomes a SageError naming the command."""
    rc, _, err = run_captured(argv)
    if rc != 0:
        raise SageError(f"`sage {' '.join(argv)}` failed: {last_line(err)}")


def write_fixed_facts(qa_file: Path, out: Path) -> Path:
    """A facts file giving FIXED_FACTS to every test image of a QA file."""
    from sage_cli.data.qa_jsonl import read_qa_jsonl
    from sage_cli.facts.store import FACTS_FORMAT, prompt_set_id, sha256_file

    lines = []
    for g in read_qa_jsonl(qa_file):
        sha = sha256_file(Path(g.root, g.test_image))
        lines.append(json.dumps({"format": FACTS_FORMAT, "image": g.test_image, "image_sha256": sha, "model": "fixed",
                                 "prompt_id": prompt_set_id([]), "facts": FIXED_FACTS}))
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def make_toy_data(out: Path, image_size: int = 224, seed: int = 0) -> dict:
    """synth -> prefs -> offline scores (+ fixed facts) under `out`; returns the paths training needs."""
    out = Path(out)
    synth, prefs, scores = out / "synth", out / "prefs", out / "scores"
    sage_step(["data", "synth", "--from", str(SAMPLE), "--out", str(synth), "--image-size", str(image_size),
               "--per-image", "1", "--seed", str(seed)])
    sage_step(["prefs", "build", "--from", str(synth), "--out", str(prefs), "--seed", str(seed), "--val-frac", "0"])
    sage_step(["score", "mle", str(prefs / "train.jsonl"), "--out", str(scores), "--judge", "offline:sbert"])
    facts = write_fixed_facts(prefs / "train.jsonl", out / "facts.jsonl")
    return {"root": synth, "qa": prefs / "train.jsonl", "pairs": scores / "pairs.jsonl", "facts": facts}
