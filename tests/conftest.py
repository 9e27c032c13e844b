"""Shared test fixtures: the real hazelnut_toy data, and tiny data sets written into tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_cli.data.records import Defect, QAGroup, Question

REPO = Path(__file__).resolve().parents[1]
HAZELNUT_TOY = REPO / ".." / "shared" / "data" / "hazelnut_toy"


# ---------------------------------------------------------------------------------------------- images


def write_image(path: Path, size=(16, 16), color=(120, 120, 120)) -> Path:
    """A small solid RGB image (PNG or JPEG by suffix); parents are created."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_mask(path: Path, size=(16, 16), box=None) -> Path:
    """A 0/255 mask, 255 inside ``box`` (x0, y0, x1, y1; x1/y1 exclusive); None = empty mask."""
    import numpy as np
    from PIL import Image

    w, h = size
    m = np.zeros((h, w), dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        m[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m).save(path)
    return path


def write_widget_qa(root: Path, options: list[list[str]]) -> dict:
    """4 widget test/reference pairs under root/data (56x56 PNGs), one QA group each with a question per
    entry of `options` (its four ranked answers; the answer is yes when the best one starts with "Yes"), the
    ΔH_min / ΔH_max pairs of every question, and a facts file. Returns the paths training reads."""
    d = root / "data"
    groups, pairs = [], []
    for g in range(4):
        test, ref = f"widget/test/{g:03d}.png", f"widget/train/{g:03d}.png"
        write_image(d / test, size=(56, 56), color=(200 - 30 * g, 60 + 25 * g, 50))
        write_image(d / ref, size=(56, 56), color=(100 + 10 * g, 100, 100))
        qs = []
        for q, opts in enumerate(options):
            question = f"Question {q} about widget {g}: is anything wrong?"
            qs.append({"question": question, "answer": opts[0].startswith("Yes"), "options": opts})
            for kind, chosen in (("min", opts[1]), ("max", opts[0])):
                pairs.append({"format": "sage-pairs/1", "group_id": f"w{g}", "q": q, "test_image": test,
                              "reference_image": ref, "question": question, "chosen": chosen, "rejected": opts[3],
                              "delta_h": 0.05 * (g + 1) + 0.01 * q + (0.1 if kind == "max" else 0), "kind": kind})
        groups.append({"format": "sage-qa/1", "id": f"w{g}", "domain": "industrial", "category": "widget",
                       "test_image": test, "reference_image": ref, "pair_type": "standard", "questions": qs})
    qa, pairs_path, facts = root / "qa.jsonl", root / "pairs.jsonl", root / "facts.txt"
    qa.write_text("".join(json.dumps(r) + "\n" for r in groups))
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    facts.write_text("The widget is a flat grey square.\nA scratch is a thin bright line.\n")
    return {"qa": qa, "pairs": pairs_path, "facts": facts, "images": d}


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes: the header still opens, decoding fails."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


# ---------------------------------------------------------------------------------------------- data sets

# In every tiny MVTec defect mask: 4x2 defect pixels in a 16x16 image, upper right.
TINY_DEFECT_BOX = (10, 2, 14, 4)


@pytest.fixture
def hazelnut_root() -> Path:
    """The real Hazelnut Toy data (MVTec layout, JPEG images, masks named like the image)."""
    if not (HAZELNUT_TOY / "hazelnut").is_dir():
        pytest.skip(f"../shared/data/hazelnut_toy not found: {HAZELNUT_TOY.resolve()} does not exist in this checkout")
    return HAZELNUT_TOY


@pytest.fixture
def make_tiny_mvtec(tmp_path):
    """Factory: an MVTec-layout root with one category; returns the root.

    Default: ``widget`` with train/good 000-003, test/good 000, test/scratch 000-001 and their
    ``_mask.png`` masks (TINY_DEFECT_BOX). Images are 16x16 PNGs with distinct colours.
    """

    def make(root: Path | None = None, category: str = "widget", n_train: int = 4, n_good: int = 1,
             defects: dict[str, int] | None = None, size=(16, 16)) -> Path:
        root = root or tmp_path / "mvtec"
        cat = root / category
        for i in range(n_train):
            write_image(cat / "train" / "good" / f"{i:03d}.png", size, (10 * i, 100, 100))
        for i in range(n_good):
            write_image(cat / "test" / "good" / f"{i:03d}.png", size, (100, 10 * i, 100))
        for dtype, n in (defects if defects is not None else {"scratch": 2}).items():
            for i in range(n):
                write_image(cat / "test" / dtype / f"{i:03d}.png", size, (100, 100, 10 * i))
                write_mask(cat / "ground_truth" / dtype / f"{i:03d}_mask.png", size, TINY_DEFECT_BOX)
        return root

    return make


# Builders for the other layouts: plain functions (import them from conftest), each writing into ``root``.


def make_tiny_visa(root: Path, anno: bool = True) -> Path:
    """VisA: candle, 3 train normals, 1 test normal, 2 anomalies (lower-left masks); split_csv/1cls.csv lines 2-7."""
    rows = ["object,split,label,image,mask"]
    for i in range(3):
        write_image(root / f"candle/Data/Images/Normal/{i:04d}.JPG", color=(i * 20, 50, 50))
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{i:04d}.JPG,")
    write_image(root / "candle/Data/Images/Normal/0100.JPG")
    rows.append("candle,test,normal,candle/Data/Images/Normal/0100.JPG,")
    for i in range(2):
        write_image(root / f"candle/Data/Images/Anomaly/{i:03d}.JPG", color=(200, 50, i))
        m = root / f"candle/Data/Masks/Anomaly/{i:03d}.png"
        write_mask(m, box=(0, 12, 4, 16))  # lower left
        rows.append(f"candle,test,anomaly,candle/Data/Images/Anomaly/{i:03d}.JPG,candle/Data/Masks/Anomaly/{i:03d}.png")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv/1cls.csv").write_text("\n".join(rows) + "\n")
    if anno:
        (root / "candle/image_anno.csv").write_text(
            "image,label,mask\n"
            "candle/Data/Images/Anomaly/000.JPG,chunk of wax missing,candle/Data/Masks/Anomaly/000.png\n"
            "candle/Data/Images/Normal/0000.JPG,normal,\n"
        )
    return root


def manta_record(**over):
    """One valid MANTA record (standard, one-shot, 5 questions of 4 options); ``over`` replaces fields."""
    rec = {
        "test_image": "rice/test_001.png",
        "reference_image": "rice/ref_001.png",
        "pair_type": "Standard comparison",
        "conclusion_en": "The kernel has a dark spot.",
        "question_answer": [
            {
                "question_en": f"Question {i}?",
                "answer": i % 2 == 0,
                "answer_options": [{"answer_en": f"option {i}.{k}"} for k in range(4)],
            }
            for i in range(5)
        ],
    }
    rec.update(over)
    return rec


def make_tiny_manta(root: Path, records, domain: str = "grain") -> Path:
    """MANTA: JsonData/<domain>_QA.json holding ``records``, images under ImageData/<domain>/rice/."""
    for name in ("test_001.png", "ref_001.png", "test_002.png"):
        write_image(root / "ImageData" / domain / "rice" / name)
    (root / "JsonData").mkdir(parents=True, exist_ok=True)
    (root / "JsonData" / f"{domain}_QA.json").write_text(json.dumps(records))
    return root


def mmad_entry(**over):
    """One valid mmad.json value (two questions, templates, a mask); ``over`` replaces fields."""
    e = {
        "image_path": "ignored",
        "conversation": [
            {
                "Question": "Is there any defect in the object?",
                "Options": {"A": "Yes.", "B": "No."},
                "Answer": "A",
                "type": "Anomaly Detection",
            },
            {
                "Question": "What is the defect?",
                "Options": {"A": "Crack", "B": "Stain", "C": "None"},
                "Answer": "B",
                "type": "Defect Classification",
            },
        ],
        "similar_templates": ["MVTec-AD/bottle/train/good/000.png", "MVTec-AD/bottle/train/good/001.png"],
        "random_templates": ["MVTec-AD/bottle/train/good/001.png"],
        "mask_path": "ground_truth/broken/000_mask.png",
    }
    e.update(over)
    return e


def make_tiny_mmad(root: Path, entries: dict) -> Path:
    """MMAD: mmad.json holding ``entries`` next to MVTec-AD/bottle (train/good, test/broken, its mask)."""
    b = root / "MVTec-AD/bottle"
    for i in range(2):
        write_image(b / f"train/good/{i:03d}.png")
    write_image(b / "test/broken/000.png")
    write_image(b / "test/good/000.png")
    write_mask(b / "ground_truth/broken/000_mask.png", box=(6, 6, 10, 10))
    root.mkdir(parents=True, exist_ok=True)
    (root / "mmad.json").write_text(json.dumps(entries))
    return root


def qa_group(i: int, root: Path | None = None, **over) -> QAGroup:
    """A valid QAGroup ``g<i>`` whose images are the ones make_qa_root writes."""
    kw = dict(
        id=f"g{i}",
        domain="grain",
        category="rice",
        test_image="img/test.png",
        reference_image="img/ref.png",
        pair_type="identification",
        questions=[Question(f"q{k}?", k % 2 == 0, ["a", "b", "c", "d"]) for k in range(5)],
        defect=Defect("spot", "img/mask.png", (1, 2, 3, 4), "upper left", 0.01),
        conclusion="c",
        root=root,
    )
    kw.update(over)
    return QAGroup(**kw)


def make_qa_root(root: Path) -> Path:
    """The images qa_group points at: img/test.png, img/ref.png, img/mask.png."""
    write_image(root / "img/test.png")
    write_image(root / "img/ref.png")
    write_mask(root / "img/mask.png", box=(1, 2, 3, 4))
    return root
