"""A toy data set made from the bundled hazelnut photos: synthetic defects, QA groups, preference pairs.

It is what `sage bench speed train` trains on when given no data, and the first steps of the demo.
Each step calls the library function its `sage` command calls (data.synth, prefs.pipeline,
judge.scoring), with the settings that command would be given, so what it makes is what they make.
"""

from __future__ import annotations

import json
from pathlib import Path

from sage_cli.defaults import SAMPLE

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


def synth(out: Path, image_size: int, seed: int = 0, preview: bool = False) -> str:
    """`sage data synth --from SAMPLE --out OUT --image-size N --per-image 1 --seed S [--preview]`: what it
    did, in one line."""
    from sage_cli.data.synth import SynthOptions, synthesize

    opts = SynthOptions(per_image=1, seed=seed, image_size=image_size).check()
    result = synthesize(SAMPLE, Path(out), opts)
    line = f"{len(result.records)} defect images in {out}; {result.written} written, {result.skipped} already present"
    if preview:
        import numpy as np

        from sage_cli.data.preview import synth_preview
        from sage_cli.data.synth import write_png

        write_png(Path(out) / "preview.png", np.asarray(synth_preview(Path(out), result.records, opts.kinds)))
        line += f"\npreview: {Path(out) / 'preview.png'}"
    return line


def prefs(src: Path, out: Path, seed: int = 0, val_frac: float = 0.2) -> str:
    """`sage prefs build --from SRC --out OUT --seed S --val-frac F`: what it wrote, in one line."""
    from sage_cli.prefs.pipeline import PrefsOptions, build_prefs

    result = build_prefs(PrefsOptions(src=Path(src), out=Path(out), seed=seed, val_frac=val_frac).check())
    c = result.manifest["counts"]
    return (f"{c['train']['groups']} train and {c['val']['groups']} val QA groups in {out} "
            f"(image paths relative to {result.root})")


def scores(qa: Path, out: Path) -> str:
    """`sage score mle QA --out OUT --judge offline:sbert`: what it did, in one line."""
    from sage_cli.config import load_recipe
    from sage_cli.judge.scoring import score_mle

    res = score_mle(load_recipe("default", "score", []), "default", Path(qa), Path(out), judge="offline:sbert")
    c = res.counts
    return f"{c['options_scored_now']} options scored now, {c['pairs']} preference pairs in {res.pairs}"


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
    root, qa = out / "synth", out / "prefs" / "train.jsonl"
    synth(root, image_size, seed)
    prefs(root, qa.parent, seed, val_frac=0.0)
    scores(qa, out / "scores")
    facts = write_fixed_facts(qa, out / "facts.jsonl")
    return {"root": root, "qa": qa, "pairs": out / "scores" / "pairs.jsonl", "facts": facts}
