"""Dataset readers: MVTec/MPDD, VisA, MANTA, MMAD, sage-qa JSONL, format detection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import (
    TINY_DEFECT_BOX,
    make_qa_root,
    make_tiny_manta,
    make_tiny_mmad,
    make_tiny_visa,
    manta_record,
    mmad_entry,
    qa_group,
    truncate,
    write_image,
    write_mask,
)

from sage_cli.data._common import choose_reference
from sage_cli.data.formats import FORMATS, detect_format, open_dataset
from sage_cli.data.manta import PAIR_TYPE_WORDS, pair_type_of, read_manta
from sage_cli.data.mmad import MMADItem
from sage_cli.data.mvtec import CATEGORIES, MPDD_CATEGORIES, read_mvtec
from sage_cli.data.problems import Problems
from sage_cli.data.qa_jsonl import append_qa_jsonl, existing_ids, read_qa_jsonl, write_qa_jsonl
from sage_cli.data.records import PAIR_TYPES, QAGroup
from sage_cli.data.visa import CATEGORIES as VISA_CATEGORIES
from sage_cli.data.visa import read_visa
from sage_cli.errors import SageError


def _open_both(root, fmt=None, check=False):
    """Strict mode must raise; skip mode must return the data set with the problem counted."""
    with pytest.raises(SageError) as err:
        open_dataset(root, fmt=fmt, strict=True, check_images=check)
    ds = open_dataset(root, fmt=fmt, strict=False, check_images=check)
    return str(err.value), ds


# ================================================================================================ MVTec


def test_category_lists():
    assert len(CATEGORIES) == 15 and "hazelnut" in CATEGORIES
    assert len(MPDD_CATEGORIES) == 6
    assert len(VISA_CATEGORIES) == 12


def test_mvtec_reads_tiny_tree(make_tiny_mvtec):
    root = make_tiny_mvtec()
    ds = open_dataset(root, strict=True)
    assert ds.format == "mvtec" and len(ds.problems) == 0
    train = [r for r in ds.records if r.split == "train"]
    test = [r for r in ds.records if r.split == "test"]
    assert len(train) == 4 and len(test) == 3
    assert {r.category for r in ds.records} == {"widget"}
    assert all(not Path(r.image).is_absolute() and r.path().is_file() for r in ds.records)
    bad = [r for r in test if r.is_anomaly]
    assert [r.label for r in bad] == ["scratch", "scratch"]
    d = bad[0].defect
    assert d.type == "scratch" and d.mask == "widget/ground_truth/scratch/000_mask.png"
    assert d.bbox == TINY_DEFECT_BOX
    assert d.location == "upper right"
    assert d.area_frac == pytest.approx(8 / 256)
    good = [r for r in test if not r.is_anomaly]
    assert good[0].label == "good" and good[0].defect is None
    train_good = {r.image for r in train}
    assert all(r.reference in train_good for r in test)
    assert all(r.reference is None for r in train)


def test_mvtec_root_may_be_one_category(make_tiny_mvtec):
    root = make_tiny_mvtec()
    ds = open_dataset(root / "widget", strict=True)
    assert ds.format == "mvtec"
    assert {r.category for r in ds.records} == {"widget"}
    assert any(r.image == "test/scratch/000.png" for r in ds.records)


def test_mvtec_mask_named_like_image_stem(make_tiny_mvtec):
    root = make_tiny_mvtec(defects={"dent": 1})
    gt = root / "widget" / "ground_truth" / "dent"
    (gt / "000_mask.png").rename(gt / "000.png")
    (rec,) = [r for r in read_mvtec(root) if r.is_anomaly]
    assert rec.defect.mask == "widget/ground_truth/dent/000.png"


def test_reference_is_deterministic_and_from_train_good(make_tiny_mvtec):
    root = make_tiny_mvtec(n_train=12, n_good=6)
    refs = lambda seed: [(r.image, r.reference) for r in read_mvtec(root, seed=seed) if r.split == "test"]  # noqa: E731
    a, b = refs(0), refs(0)
    assert a == b
    assert all(ref.startswith("widget/train/good/") for _, ref in a)
    assert refs(0) != refs(7)  # 8 test images over 12 normals: some choice changes with the seed


def test_choose_reference_is_stable_when_images_are_added():
    normals = [f"c/train/good/{i:03d}.png" for i in range(50)]
    keys = [f"c/test/x/{i:03d}.png" for i in range(200)]
    before = {k: choose_reference(normals, 3, k) for k in keys}
    assert before == {k: choose_reference(list(reversed(normals)), 3, k) for k in keys}  # order-free
    after = {k: choose_reference(normals + ["c/train/good/new.png"], 3, k) for k in keys}
    changed = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == "c/train/good/new.png" for k in changed)
    assert len(changed) < 20  # about 1 in 51, not a reshuffle
    assert choose_reference([], 0, "x") is None


def test_hazelnut_toy(hazelnut_root):
    ds = open_dataset(hazelnut_root, strict=True, seed=0)
    assert ds.format == "mvtec"
    s = ds.summary()
    assert s["categories"]["hazelnut"] == {
        "train": {"good": 28},
        "test": {"good": 6, "colour": 17, "crack": 1},
        "masks": 18,
    }
    crack = next(r for r in ds.records if r.label == "crack")
    assert crack.image == "hazelnut/test/crack/00.jpg"
    assert crack.defect.mask == "hazelnut/ground_truth/crack/00.png"
    assert crack.defect.bbox is not None and 0 < crack.defect.area_frac < 0.5
    assert crack.reference.startswith("hazelnut/train/good/")
    again = open_dataset(hazelnut_root, strict=True, seed=0)
    assert [r.reference for r in again.records] == [r.reference for r in ds.records]


def test_hazelnut_toy_check_images(hazelnut_root):
    ds = open_dataset(hazelnut_root, strict=True, check_images=True)
    assert len(ds.records) == 52 and len(ds.problems) == 0


def test_image_without_mask(make_tiny_mvtec):
    root = make_tiny_mvtec()
    (root / "widget/ground_truth/scratch/001_mask.png").unlink()
    msg, ds = _open_both(root)
    assert "widget/test/scratch/001.png" in msg and "no mask" in msg
    assert len(ds.problems) == 1
    assert len([r for r in ds.records if r.is_anomaly]) == 1


def test_mask_without_image(make_tiny_mvtec):
    root = make_tiny_mvtec()
    write_mask(root / "widget/ground_truth/scratch/007_mask.png", box=TINY_DEFECT_BOX)
    write_mask(root / "widget/ground_truth/hole/000_mask.png", box=TINY_DEFECT_BOX)  # no test/hole at all
    msg, ds = _open_both(root)
    assert "007_mask.png" in msg and "no test image" in msg
    assert len(ds.problems) == 2
    assert any("hole/000_mask.png" in p for p in ds.problems.items)
    assert len(ds.records) == 7  # nothing else skipped


def test_mask_size_mismatch(make_tiny_mvtec):
    root = make_tiny_mvtec()
    write_mask(root / "widget/ground_truth/scratch/000_mask.png", size=(8, 8), box=(1, 1, 3, 3))
    msg, ds = _open_both(root)
    assert "000_mask.png" in msg and "8x8" in msg and "16x16" in msg
    assert len(ds.problems) == 1


def test_empty_mask_for_defect_image(make_tiny_mvtec):
    root = make_tiny_mvtec()
    write_mask(root / "widget/ground_truth/scratch/000_mask.png", box=None)
    msg, ds = _open_both(root)
    assert "empty" in msg
    assert len(ds.problems) == 1


def test_truncated_image_found_only_with_check(make_tiny_mvtec):
    root = make_tiny_mvtec()
    write_image(root / "widget/train/good/000.png", (64, 64), (1, 2, 3))
    truncate(root / "widget/train/good/000.png")
    lazy = open_dataset(root, strict=True)  # lazy: existence only
    assert len(lazy.records) == 7
    msg, ds = _open_both(root, check=True)
    assert "widget/train/good/000.png" in msg and "truncated" in msg
    assert len(ds.problems) == 1 and len(ds.records) == 6
    assert all(r.reference != "widget/train/good/000.png" for r in ds.records)


def test_garbage_mask_is_one_line(make_tiny_mvtec):
    root = make_tiny_mvtec()
    (root / "widget/ground_truth/scratch/000_mask.png").write_bytes(b"not a png")
    msg, ds = _open_both(root)
    assert "000_mask.png" in msg and "\n" not in msg
    assert len(ds.problems) == 1


def test_missing_root(tmp_path):
    with pytest.raises(SageError, match="no such directory"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(SageError, match="no such directory"):
        detect_format(tmp_path / "nope")


def test_unknown_layout_lists_known_ones(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hi")
    with pytest.raises(SageError) as err:
        open_dataset(tmp_path / "junk")
    assert "unknown dataset layout" in str(err.value)
    for fmt in FORMATS:
        assert f"{fmt}:" in str(err.value)


def test_unknown_format_name(make_tiny_mvtec):
    with pytest.raises(SageError, match="known formats"):
        open_dataset(make_tiny_mvtec(), fmt="coco")


# ================================================================================================ VisA


def test_visa_reads_tiny_tree(tmp_path):
    root = make_tiny_visa(tmp_path / "visa")
    ds = open_dataset(root, strict=True)
    assert ds.format == "visa" and len(ds.problems) == 0
    assert [r.split for r in ds.records].count("train") == 3
    bad = [r for r in ds.records if r.is_anomaly]
    assert [r.defect.type for r in bad] == ["chunk of wax missing", "anomaly"]
    assert bad[0].defect.location == "lower left" and bad[0].defect.bbox == (0, 12, 4, 16)
    assert bad[0].label == "chunk of wax missing"
    normals = {r.image for r in ds.records if r.split == "train"}
    assert all(r.reference in normals for r in ds.records if r.split == "test")
    assert ds.summary()["benchmark"] == "VisA"


def test_visa_without_annotations_types_are_anomaly(tmp_path):
    root = make_tiny_visa(tmp_path / "visa", anno=False)
    assert {r.defect.type for r in read_visa(root) if r.is_anomaly} == {"anomaly"}


@pytest.mark.parametrize(
    "row, expect",
    [
        ("candle,test,anomaly,,candle/Data/Masks/Anomaly/000.png", "missing field 'image'"),
        ("candle,test,anomaly,../../etc/passwd,candle/Data/Masks/Anomaly/000.png", "escapes the dataset root"),
        ("candle,test,anomaly,candle/Data/Images/Anomaly/404.JPG,candle/Data/Masks/Anomaly/000.png", "not found"),
        ("candle,test,broken,candle/Data/Images/Anomaly/000.JPG,", "label must be normal or anomaly"),
        ("candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,", "has no mask"),
    ],
)
def test_visa_bad_rows(tmp_path, row, expect):
    root = make_tiny_visa(tmp_path / "visa")
    with open(root / "split_csv/1cls.csv", "a") as f:
        f.write(row + "\n")
    msg, ds = _open_both(root)
    assert expect in msg and "split_csv/1cls.csv line 8" in msg
    assert len(ds.problems) == 1
    assert len(ds.records) == 6


def test_visa_mask_problems(tmp_path):
    root = make_tiny_visa(tmp_path / "visa")
    write_mask(root / "candle/Data/Masks/Anomaly/001.png", size=(20, 16), box=(0, 0, 2, 2))
    write_mask(root / "candle/Data/Masks/Anomaly/099.png", box=(0, 0, 2, 2))  # in no row
    msg, ds = _open_both(root)
    assert "20x16" in msg
    assert len(ds.problems) == 2
    assert any("099.png" in p and "has no image" in p for p in ds.problems.items)


# ================================================================================================ MANTA


def test_manta_reads_list(tmp_path):
    zero_shot = manta_record(test_image="rice/test_002.png", reference_image=None, pair_type="diagnosis")
    root = make_tiny_manta(tmp_path / "manta", [manta_record(), zero_shot])
    ds = open_dataset(root, strict=True)
    assert ds.format == "manta"
    g, z = ds.records
    assert isinstance(g, QAGroup)
    assert g.domain == "grain" and g.category == "rice" and g.id == "grain-0"
    assert g.test_image == "ImageData/grain/rice/test_001.png"
    assert g.reference_image == "ImageData/grain/rice/ref_001.png"
    assert g.pair_type == "standard" and g.conclusion == "The kernel has a dark spot."
    assert len(g.questions) == 5 and g.questions[0].answer is True and g.questions[1].answer is False
    assert g.questions[2].options == ["option 2.0", "option 2.1", "option 2.2", "option 2.3"]
    assert z.reference_image is None and z.pair_type == "diagnosis"
    assert (g.root / g.test_image).is_file()
    # MANTA annotates no defect: the label is what the record says ("The kernel has a dark spot.")
    assert g.defect is None and (g.anomalous, g.label_source) == (True, "conclusion")


@pytest.mark.parametrize("fields, label, defect", [
    ({"label": "good"}, False, None),
    ({"is_anomaly": "true"}, True, None),
    ({"defect_type": "none"}, False, None),
    ({"defect_type": "crack"}, True, "crack"),
    ({"label": "kernel"}, True, None),  # not a label word: the conclusion decides
])
def test_manta_explicit_labels(tmp_path, fields, label, defect):
    (g,) = read_manta(make_tiny_manta(tmp_path / "manta", [manta_record(**fields)]))
    source = "conclusion" if fields == {"label": "kernel"} else "annotation"
    assert (g.anomalous, g.label_source) == (label, source)
    assert (g.defect.type if g.defect else None) == defect


def test_manta_reads_dict_keyed_by_id(tmp_path):
    records = {"a1": manta_record(), "b2": manta_record(pair_type="Defect identification")}
    root = make_tiny_manta(tmp_path / "manta", records)
    groups = list(read_manta(root))
    assert [g.id for g in groups] == ["a1", "b2"]
    assert [g.pair_type for g in groups] == ["standard", "identification"]


@pytest.mark.parametrize(
    "word, expect",
    [
        ("standard", "standard"),
        ("Standard comparison", "standard"),
        ("standard_comparison", "standard"),
        ("identification", "identification"),
        ("Defect identification", "identification"),
        ("diagnosis", "diagnosis"),
        ("Deep diagnosis", "diagnosis"),
        ("reasoning", "diagnosis"),
        ("Deep Diagnosis Question", "diagnosis"),
        (2, "identification"),
        ("banana", None),
    ],
)
def test_pair_type_words(word, expect):
    assert pair_type_of(word) == expect


def test_pair_type_words_map_into_pair_types():
    assert set(PAIR_TYPE_WORDS.values()) == set(PAIR_TYPES)


@pytest.mark.parametrize(
    "bad, expect",
    [
        ({"test_image": None}, "missing field 'test_image'"),
        ({"question_answer": [{"answer": True}]}, "missing field 'question_answer[0].question_en'"),
        ({"test_image": "../../etc/passwd"}, "escapes the dataset root"),
        ({"reference_image": "/etc/passwd"}, "escapes the dataset root"),
        ({"test_image": "rice/missing.png"}, "not found"),
        ({"pair_type": "banana"}, "unknown pair_type"),
        ({"question_answer": [{"question_en": "q?", "answer": "maybe"}]}, "must be true or false"),
    ],
)
def test_manta_bad_records(tmp_path, bad, expect):
    rec = manta_record(**bad)
    if bad.get("test_image", 1) is None:
        del rec["test_image"]
    root = make_tiny_manta(tmp_path / "manta", [manta_record(), rec])
    msg, ds = _open_both(root)
    assert expect in msg and "JsonData/grain_QA.json record 1" in msg
    assert len(ds.problems) == 1 and len(ds.records) == 1


def test_manta_bad_json_file(tmp_path):
    root = make_tiny_manta(tmp_path / "manta", [manta_record()])
    (root / "JsonData/other_QA.json").write_text("[{oops")
    msg, ds = _open_both(root)
    assert "other_QA.json" in msg and "not valid JSON" in msg
    assert len(ds.records) == 1


def test_manta_check_images(tmp_path):
    root = make_tiny_manta(tmp_path / "manta", [manta_record()])
    truncate(write_image(root / "ImageData/grain/rice/ref_001.png", (64, 64), (9, 9, 9)))
    assert len(open_dataset(root, strict=True).records) == 1
    msg, ds = _open_both(root, check=True)
    assert "ref_001.png" in msg and len(ds.records) == 0


# ================================================================================================ MMAD


def test_mmad_reads(tmp_path):
    root = make_tiny_mmad(
        tmp_path / "mmad",
        {
            "MVTec-AD/bottle/test/broken/000.png": mmad_entry(),
            "MVTec-AD/bottle/test/good/000.png": mmad_entry(mask_path=None),
        },
    )
    ds = open_dataset(root, strict=True)
    assert ds.format == "mmad"
    a, b = ds.records
    assert isinstance(a, MMADItem)
    assert (a.dataset, a.category, a.label) == ("MVTec-AD", "bottle", "broken")
    assert a.mask == "MVTec-AD/bottle/ground_truth/broken/000_mask.png"
    assert a.conversation[1].question == "What is the defect?"
    assert a.conversation[1].answer == "B" and a.conversation[1].options["B"] == "Stain"
    assert a.conversation[0].type == "Anomaly Detection"
    q, opts, ans, typ = a.conversation[0]  # a plain tuple too
    assert ans == "A"
    assert a.references == ["MVTec-AD/bottle/train/good/000.png", "MVTec-AD/bottle/train/good/001.png"]
    assert b.mask is None and b.label == "good"
    s = ds.summary()["categories"]["MVTec-AD/bottle"]
    types = {"Anomaly Detection": 2, "Defect Classification": 2}
    assert s == {"images": 2, "questions": 4, "with_mask": 1, "question_types": types}


@pytest.mark.parametrize(
    "over, expect",
    [
        ({"conversation": [{"Question": "q", "Options": {"A": "x"}}]}, "missing field 'conversation[0].Answer'"),
        ({"conversation": [{"Question": "q", "Options": {"A": "x"}, "Answer": "C"}]}, "is not one of its options"),
        ({"similar_templates": ["../../../etc/passwd"]}, "escapes the dataset root"),
        ({"mask_path": "ground_truth/broken/404.png"}, "not found"),
    ],
)
def test_mmad_bad_entries(tmp_path, over, expect):
    root = make_tiny_mmad(
        tmp_path / "mmad",
        {
            "MVTec-AD/bottle/test/good/000.png": mmad_entry(mask_path=None),
            "MVTec-AD/bottle/test/broken/000.png": mmad_entry(**over),
        },
    )
    msg, ds = _open_both(root)
    assert expect in msg and "mmad.json record 1 ('MVTec-AD/bottle/test/broken/000.png')" in msg
    assert len(ds.problems) == 1 and len(ds.records) == 1


def test_mmad_image_key_escaping_root(tmp_path):
    root = make_tiny_mmad(tmp_path / "mmad", {"../outside.png": mmad_entry(mask_path=None)})
    write_image(tmp_path / "outside.png")
    msg, ds = _open_both(root)
    assert "escapes the dataset root" in msg and len(ds.records) == 0


# ================================================================================================ sage-qa JSONL


def test_qa_jsonl_roundtrip_atomic_and_append(tmp_path):
    root = make_qa_root(tmp_path / "qa")
    out = root / "groups.jsonl"
    assert write_qa_jsonl(out, [qa_group(0), qa_group(1)]) == 2
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temp file left
    groups = list(read_qa_jsonl(out))
    assert [g.id for g in groups] == ["g0", "g1"]
    assert groups[0].to_json() == qa_group(0).to_json()
    assert groups[0].root == root
    assert json.loads(out.read_text().splitlines()[0])["format"] == "sage-qa/1"
    assert append_qa_jsonl(out, [qa_group(2)]) == 1
    assert existing_ids(out) == {"g0", "g1", "g2"}
    assert detect_format(root) == "qa" and detect_format(out) == "qa"
    assert len(open_dataset(out, strict=True).records) == 3


def test_qa_jsonl_failed_write_keeps_old_file(tmp_path):
    out = tmp_path / "groups.jsonl"
    write_qa_jsonl(out, [qa_group(0)])
    before = out.read_bytes()

    def boom():
        yield qa_group(1)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_qa_jsonl(out, boom())
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["groups.jsonl"]


def test_qa_jsonl_append_after_torn_line(tmp_path):
    root = make_qa_root(tmp_path / "qa")
    out = root / "groups.jsonl"
    write_qa_jsonl(out, [qa_group(0)])
    with open(out, "a") as f:
        f.write('{"format": "sage-qa/1", "id": "g1", "dom')  # killed mid-write
    append_qa_jsonl(out, [qa_group(2)])
    msg, ds = _open_both(out)
    assert "groups.jsonl line 2" in msg and "not valid JSON" in msg
    assert [g.id for g in ds.records] == ["g0", "g2"]
    assert existing_ids(out) == {"g0", "g2"}


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: d.pop("category"), "missing field 'category'"),
        (lambda d: d.update(format="sage-qa/9"), "is not sage-qa/1"),
        (lambda d: d.update(test_image="../../etc/passwd"), "escapes the dataset root"),
        (lambda d: d.update(reference_image="img/none.png"), "not found"),
        (lambda d: d.update(pair_type="easy"), "pair_type must be one of"),
        (lambda d: d.update(anomalous="yes"), "anomalous must be true, false or null"),
        (lambda d: d.update(anomalous=False), "a defect is annotated but anomalous is false"),
    ],
)
def test_qa_jsonl_bad_lines(tmp_path, mutate, expect):
    root = make_qa_root(tmp_path / "qa")
    bad = qa_group(1).to_json()
    mutate(bad)
    out = root / "groups.jsonl"
    write_qa_jsonl(out, [qa_group(0)])
    with open(out, "a") as f:
        f.write(json.dumps(bad) + "\n")
    msg, ds = _open_both(root)
    assert expect in msg and "groups.jsonl line 2" in msg
    assert len(ds.problems) == 1 and [g.id for g in ds.records] == ["g0"]


def test_qa_jsonl_label_fields(tmp_path):
    root = make_qa_root(tmp_path / "qa")
    normal = qa_group(1, defect=None, anomalous=False, label_source="annotation", conclusion="")
    unknown = qa_group(2, defect=None, conclusion="")  # stored as null: read from its text again
    write_qa_jsonl(root / "groups.jsonl", [qa_group(0), normal, unknown])
    lines = [json.loads(x) for x in (root / "groups.jsonl").read_text().splitlines()]
    assert [(d["anomalous"], d["label_source"]) for d in lines] == [(True, "annotation"), (False, "annotation"),
                                                                    (None, None)]
    g0, g1, g2 = read_qa_jsonl(root / "groups.jsonl")
    assert (g0.anomalous, g0.label_source) == (True, "annotation")  # a defect is an annotation
    assert (g1.anomalous, g1.label_source) == (False, "annotation")
    assert (g2.anomalous, g2.label_source) == (None, None)  # "q0?" ... say nothing


def _old_file(folder: Path, groups: list[dict]) -> Path:
    """A sage-qa/1 file as sage wrote it before `anomalous` / `label_source` existed."""
    for d in groups:
        d.pop("anomalous"), d.pop("label_source")
    out = folder / "train.jsonl"
    out.write_text("".join(json.dumps(d) + "\n" for d in groups))
    return out


def test_qa_jsonl_files_without_label_fields(tmp_path):
    root = make_qa_root(tmp_path / "data")
    good = qa_group(1, defect=None, conclusion="The test rice matches the reference; no defect found.").to_json()
    quiet = qa_group(2, defect=None, conclusion="").to_json()
    # written by `sage prefs build` from images (its manifest says so): defect null means normal, as before
    built = tmp_path / "built"
    built.mkdir()
    (built / "prefs.json").write_text(json.dumps({"root": str(root), "source_format": "mvtec"}))
    g0, g1, g2 = read_qa_jsonl(_old_file(built, [qa_group(0).to_json(), dict(good), dict(quiet)]))
    assert [(g.anomalous, g.label_source) for g in (g0, g1, g2)] == [(True, "annotation"), (False, "annotation"),
                                                                     (False, "annotation")]
    # imported from MANTA (or no manifest): defect null says nothing by itself; the text is read
    imported = tmp_path / "imported"
    imported.mkdir()
    (imported / "prefs.json").write_text(json.dumps({"root": str(root), "source_format": "manta"}))
    g0, g1, g2 = read_qa_jsonl(_old_file(imported, [qa_group(0).to_json(), dict(good), dict(quiet)]))
    assert [(g.anomalous, g.label_source) for g in (g0, g1, g2)] == [(True, "annotation"), (False, "conclusion"),
                                                                     (None, None)]


def test_write_keeps_permissions_readable(tmp_path):
    out = tmp_path / "g.jsonl"
    write_qa_jsonl(out, [qa_group(0)])
    assert os.stat(out).st_mode & 0o444 == 0o444 & ~_umask()


def _umask():
    m = os.umask(0)
    os.umask(m)
    return m


# ================================================================================================ detection


def test_detect_each_format(tmp_path, make_tiny_mvtec):
    assert detect_format(make_tiny_mvtec()) == "mvtec"
    assert detect_format(make_tiny_visa(tmp_path / "visa")) == "visa"
    assert detect_format(make_tiny_manta(tmp_path / "manta", [manta_record()])) == "manta"
    assert detect_format(make_tiny_mmad(tmp_path / "mmad", {})) == "mmad"
    out = tmp_path / "qa" / "g.jsonl"
    write_qa_jsonl(out, [qa_group(0)])
    assert detect_format(out.parent) == "qa"


def test_problems_accumulate_in_given_object(make_tiny_mvtec):
    root = make_tiny_mvtec()
    (root / "widget/ground_truth/scratch/000_mask.png").unlink()
    p = Problems()
    recs = list(read_mvtec(root, p))
    assert len(recs) == 6 and len(p) == 1
    with pytest.raises(SageError):
        list(read_mvtec(root))  # no Problems given: strict
