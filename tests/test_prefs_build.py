"""`sage prefs build` on image data sets: group shape, grounding, ranking, determinism, split, errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import make_tiny_visa, write_image, write_mask

from sage_cli.cli import run
from sage_cli.data.qa_jsonl import read_qa_jsonl
from sage_cli.data.records import PAIR_TYPES
from sage_cli.prefs.knowledge import defect_info
from sage_cli.prefs.templates import cells_touched

HAZELNUT_TOY = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hazelnut_toy"
GRID = ("upper left", "upper center", "upper right", "middle left", "center", "middle right",
        "lower left", "lower center", "lower right")
SIZE_WORDS = ("tiny", "small", "medium-sized", "large")
# Nouns a hallucinating answer may use; a normal image's best answer must name none of them.
DEFECT_NOUNS = {defect_info(k).noun for k in
                ("crack", "scratch", "stain", "hole", "contamination", "dent", "colour", "broken", "print", "cut")}


def mentions(text: str, phrase: str) -> bool:
    """``phrase`` as whole words ("hole" is not in "whole")."""
    return re.search(rf"\b{re.escape(phrase)}\b", text) is not None


@pytest.fixture
def hazelnut() -> Path:
    if not (HAZELNUT_TOY / "hazelnut").is_dir():
        pytest.skip(f"the real hazelnut photos are not here: {HAZELNUT_TOY.resolve()} does not exist")
    return HAZELNUT_TOY


def build(capsys, src, out, *args):
    rc = run(["prefs", "build", "--from", str(src), "--out", str(out), *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def load(out: Path):
    """(train groups, val groups, manifest), read back through the sage-qa reader with the manifest's root."""
    manifest = json.loads((out / "prefs.json").read_text())
    root = Path(manifest["root"])
    train = list(read_qa_jsonl(out / "train.jsonl", root=root))
    val = list(read_qa_jsonl(out / "val.jsonl", root=root))
    return train, val, manifest


def verdict(option: str) -> bool:
    word = option.split()[0].strip(".,;:").lower()
    assert word in ("yes", "no"), option
    return word == "yes"


def check_group(g):
    """The shape every built group has, and the ranking rules that can be checked mechanically."""
    assert len(g.questions) == 5
    levels = [q.level for q in g.questions]
    assert levels.count("standard") == 2 and levels.count("identification") == 2 and levels.count("diagnosis") == 1
    assert g.pair_type == "identification"  # the 2/2 tie goes to the harder level
    std = [q.answer for q in g.questions if q.level == "standard"]
    assert sorted(std) == [False, True]  # one "yes = defect" and one "yes = normal" question
    for q in g.questions:
        assert q.question.endswith("?")
        assert len(q.options) == 4 and len(set(q.options)) == 4
        a1, a2, a3, a4 = q.options
        assert verdict(a1) == verdict(a2) == verdict(a3) == q.answer, q
        assert verdict(a4) != q.answer, q
        assert len(a1) > len(a2)  # the expert answer says more than the vague one


# ------------------------------------------------------------------------------------------ the real photos


def test_hazelnut_groups_are_grounded_and_ranked(hazelnut, tmp_path, capsys):
    out = tmp_path / "prefs"
    rc, stdout, err = build(capsys, hazelnut, out)
    assert rc == 0, err
    assert "train" in stdout and str(out / "prefs.json") in stdout
    train, val, manifest = load(out)
    groups = train + val
    assert len(groups) == 24  # every test image, the 6 normal ones included
    assert manifest["root"] == str(hazelnut.resolve()) and manifest["source_format"] == "mvtec"
    assert manifest["counts"]["total"]["levels"] == {"standard": 48, "identification": 48, "diagnosis": 24}
    for g in groups:
        check_group(g)
        assert g.category == "hazelnut" and g.domain == "food"
        assert g.reference_image.startswith("hazelnut/train/good/")
        a1s = [q.options[0] for q in g.questions]
        if g.defect is not None:
            noun = defect_info(g.defect.type).noun
            word = {"colour": "colour", "crack": "crack"}[g.defect.type]
            assert g.defect.location == "center"
            for a1 in a1s:
                assert mentions(a1, word) and mentions(a1, noun) and mentions(a1, "center"), a1
            assert noun in g.conclusion and "center" in g.conclusion
            touched = cells_touched(g.defect.bbox, 512, 512)
            for q in g.questions:  # a place named as wrong lies outside the defect's box
                asked = [c for c in GRID if mentions(q.question, c)]
                fine = any(w in q.question for w in ("consistent", "look as it should", "in order"))  # yes = clean there
                if q.level == "identification" and asked and q.answer == fine:
                    assert max(asked, key=len) not in touched, (q.question, g.defect.bbox)
        else:
            for a1 in a1s:
                assert not any(mentions(a1, n) for n in DEFECT_NOUNS), a1
                assert not any(mentions(a1, s) for s in SIZE_WORDS), a1
            assert "no defect" in g.conclusion.lower() or "normal" in g.conclusion.lower()
    # A normal image's wrong answer hallucinates a defect.
    normal = [g for g in groups if g.defect is None]
    assert len(normal) == 6
    assert all(any(mentions(q.options[3], n) for n in DEFECT_NOUNS) for g in normal for q in g.questions)
    # Answers are mixed at every level, so always saying yes (or no) cannot win.
    for level in PAIR_TYPES:
        answers = [q.answer for g in groups for q in g.questions if q.level == level]
        assert 0.2 < sum(answers) / len(answers) < 0.8, level


def test_hazelnut_standard_expert_answer_gives_size_and_share(hazelnut, tmp_path, capsys):
    rc, _, err = build(capsys, hazelnut, tmp_path / "p")
    assert rc == 0, err
    train, val, _ = load(tmp_path / "p")
    crack = next(g for g in train + val if g.defect is not None and g.defect.type == "crack")
    for q in crack.questions:
        if q.level == "standard":
            assert "large crack" in q.options[0] and "16% of the image" in q.options[0]


# ------------------------------------------------------------------------------------------ tiny data sets


def test_tiny_mvtec_types_locations_and_zero_shot(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec(defects={"scratch": 2, "color": 1, "weird_blob": 1}, n_train=0, n_good=2)
    out = tmp_path / "out"
    rc, _, err = build(capsys, root, out, "--val-frac", "0")
    assert rc == 0, err
    train, val, manifest = load(out)
    assert val == [] and len(train) == 6
    nouns = {"scratch": "scratch", "color": "colour discoloration", "weird_blob": "weird blob defect"}
    for g in train:
        check_group(g)
        assert g.reference_image is None  # no train/good: zero-shot groups
        assert all("reference" not in q.question for q in g.questions)
        if g.defect is not None:
            assert g.defect.location == "upper right"
            for q in g.questions:
                assert nouns[g.defect.type] in q.options[0] and "upper right" in q.options[0], q.options[0]
    ids = [g.id for g in train]
    assert len(set(ids)) == len(ids) and "widget-scratch-000" in ids


def test_normal_share_adds_normal_pairs_from_train_good(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec(defects={"scratch": 6}, n_train=3, n_good=1)  # 6 defects, 1 normal test image
    out = tmp_path / "out"
    rc, _, err = build(capsys, root, out, "--val-frac", "0", "--normal-share", "0.5")
    assert rc == 0, err
    train, _, manifest = load(out)
    normal = [g for g in train if g.defect is None]
    assert len(train) == 12 and len(normal) == 6  # 5 extra normal groups: half of the groups
    extra = [g for g in normal if "/train/good/" in g.test_image]
    assert len(extra) == 5 and all(g.reference_image != g.test_image for g in extra)
    pairs = {(g.test_image, g.reference_image) for g in extra}
    assert len(pairs) == 5  # an image used twice gets another reference
    # ... and other questions: the same text on every reuse would let a model learn the image by its wording
    by_image: dict[str, list[list[str]]] = {}
    for g in extra:
        by_image.setdefault(g.test_image, []).append([q.question for q in g.questions])
    reused = [qs for qs in by_image.values() if len(qs) > 1]
    assert reused and all(qs[0] != qs[1] for qs in reused)
    assert len({g.id for g in train}) == 12 and manifest["settings"]["normal_share"] == 0.5
    for g in extra:
        check_group(g)
    rc, _, err = build(capsys, root, tmp_path / "bad", "--normal-share", "1")
    assert rc == 1 and "--normal-share" in err


def test_rerun_is_byte_identical_and_another_seed_rewords(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec(defects={"scratch": 3, "hole": 3}, n_good=3)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, "0"), (b, "0"), (c, "1")):
        rc, _, err = build(capsys, root, out, "--seed", seed)
        assert rc == 0, err
    for name in ("train.jsonl", "val.jsonl", "prefs.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ta, va, _ = load(a)
    tc, vc, _ = load(c)
    texts = lambda gs: sorted(o for g in gs for q in g.questions for o in [q.question, *q.options])  # noqa: E731
    assert texts(ta + va) != texts(tc + vc)
    # A rerun into the same folder with the same settings is fine and writes the same bytes.
    before = (a / "train.jsonl").read_bytes()
    rc, _, err = build(capsys, root, a, "--seed", "0")
    assert rc == 0, err
    assert (a / "train.jsonl").read_bytes() == before


def test_split_is_by_image_and_stable_when_images_are_added(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec(defects={"scratch": 12, "hole": 8}, n_good=10)
    rc, _, err = build(capsys, root, tmp_path / "before", "--val-frac", "0.3")
    assert rc == 0, err
    train, val, manifest = load(tmp_path / "before")
    assert train and val
    assert not {g.test_image for g in train} & {g.test_image for g in val}
    assert manifest["counts"]["val"]["groups"] == len(val)

    for i in range(12, 20):  # more images of a kind the category already has
        write_image(root / "widget/test/scratch" / f"{i:03d}.png", color=(100, 100, 10 * i))
        write_mask(root / "widget/ground_truth/scratch" / f"{i:03d}_mask.png", box=(1, 1, 5, 5))
    rc, _, err = build(capsys, root, tmp_path / "after", "--val-frac", "0.3")
    assert rc == 0, err
    train2, val2, _ = load(tmp_path / "after")
    side = {g.test_image: "train" for g in train2} | {g.test_image: "val" for g in val2}
    old = {g.test_image: "train" for g in train} | {g.test_image: "val" for g in val}
    assert len(side) == len(old) + 8
    assert all(side[img] == s for img, s in old.items())
    # The groups of the old images are unchanged too.
    new_by_id = {g.id: g.to_json() for g in train2 + val2}
    assert all(new_by_id[g.id] == g.to_json() for g in train + val)


def test_limit_and_categories(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec(defects={"scratch": 4}, n_good=3)
    make_tiny_mvtec(root=root, category="gadget", defects={"crack": 3}, n_good=2)
    rc, _, err = build(capsys, root, tmp_path / "o", "--limit", "2", "--val-frac", "0")
    assert rc == 0, err
    train, _, manifest = load(tmp_path / "o")
    assert manifest["counts"]["total"]["categories"] == {"gadget": 2, "widget": 2}
    rc, _, err = build(capsys, root, tmp_path / "g", "--categories", "gadget")
    assert rc == 0, err
    train, val, manifest = load(tmp_path / "g")
    assert {g.category for g in train + val} == {"gadget"} and len(train + val) == 5
    assert manifest["settings"]["categories"] == ["gadget"]


def test_out_folder_rules(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    out = tmp_path / "o"
    assert build(capsys, root, out)[0] == 0
    rc, _, err = build(capsys, root, out, "--seed", "5")
    assert rc == 1 and err.startswith("error:") and "other settings" in err and "seed 0 -> 5" in err
    rc, _, err = build(capsys, root, out, "--seed", "5", "--overwrite")
    assert rc == 0, err
    assert json.loads((out / "prefs.json").read_text())["settings"]["seed"] == 5

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    rc, _, err = build(capsys, root, busy)
    assert rc == 1 and "holds no prefs.json" in err
    assert (busy / "notes.txt").read_text() == "mine" and not (busy / "train.jsonl").exists()


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing", "no such directory"),
        ("unknown", "unknown dataset layout"),
        ("train_only", "no test images"),
        ("val_frac", "--val-frac must be between 0 and 1"),
        ("limit", "--limit must be at least 1"),
        ("category", "no such category: nope (this data set has: widget)"),
        ("format", "unknown format 'bogus'"),
        ("out_is_root", "--out must not be the dataset root"),
        ("strict", "defect image has no mask"),
    ],
)
def test_bad_input_is_one_line(make_tiny_mvtec, tmp_path, capsys, case, expect):
    root = make_tiny_mvtec()
    out = tmp_path / "out"
    extra: list[str] = []
    if case == "missing":
        root = tmp_path / "nowhere"
    elif case == "unknown":
        root = tmp_path / "plain"
        root.mkdir()
        (root / "readme.txt").write_text("hi")
    elif case == "train_only":
        shutil.rmtree(root / "widget" / "test")
        shutil.rmtree(root / "widget" / "ground_truth")
    elif case == "val_frac":
        extra = ["--val-frac", "1.5"]
    elif case == "limit":
        extra = ["--limit", "0"]
    elif case == "category":
        extra = ["--categories", "nope"]
    elif case == "format":
        extra = ["--format", "bogus"]
    elif case == "out_is_root":
        out = root
    elif case == "strict":
        (root / "widget/ground_truth/scratch/001_mask.png").unlink()
        extra = ["--strict"]
    rc, _, err = build(capsys, root, out, *extra)
    assert rc == 1
    assert err.startswith("error:") and err.strip().count("\n") == 0 and expect in err, err
    if case != "out_is_root":
        assert not (out / "prefs.json").exists()


def test_problems_are_skipped_and_counted_without_strict(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    (root / "widget/ground_truth/scratch/001_mask.png").unlink()
    rc, stdout, err = build(capsys, root, tmp_path / "o")
    assert rc == 0, err
    train, val, manifest = load(tmp_path / "o")
    assert len(train + val) == 2  # the good image and the scratch with a mask
    assert manifest["problems"]["count"] == 1 and "001" in manifest["problems"]["items"][0]
    assert "skipped 1 item" in stdout


def test_val_frac_one_puts_everything_in_val(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    assert build(capsys, root, tmp_path / "o", "--val-frac", "1")[0] == 0
    train, val, _ = load(tmp_path / "o")
    assert train == [] and len(val) == 3
    assert (tmp_path / "o" / "train.jsonl").read_text() == ""


def test_visa_annotation_text_becomes_the_defect_words(tmp_path, capsys):
    root = make_tiny_visa(tmp_path / "visa")  # candle: one anomaly named in image_anno.csv, one not
    rc, _, err = build(capsys, root, tmp_path / "out", "--val-frac", "0")
    assert rc == 0, err
    groups, _, manifest = load(tmp_path / "out")
    assert manifest["source_format"] == "visa" and len(groups) == 3
    words = {g.defect.type: g for g in groups if g.defect is not None}
    assert set(words) == {"chunk of wax missing", "anomaly"}
    for label, noun in (("chunk of wax missing", "chunk of wax missing"), ("anomaly", "anomaly")):
        for q in words[label].questions:
            assert mentions(q.options[0], noun) and mentions(q.options[0], "lower left"), q.options[0]
    assert all(g.domain == "consumer goods" for g in groups)
