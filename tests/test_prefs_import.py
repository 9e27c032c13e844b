"""`sage prefs build` on QA data sets: MANTA (and AD-PL / MPDD-QA in its schema), MMAD, sage-qa JSONL."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_qa_root, make_tiny_manta, make_tiny_mmad, manta_record, mmad_entry, qa_group

from sage_cli.cli import run
from sage_cli.data.qa_jsonl import read_qa_jsonl, write_qa_jsonl
from sage_cli.data.records import Question


def build(capsys, src, out, *args):
    rc = run(["prefs", "build", "--from", str(src), "--out", str(out), *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def load(out: Path):
    manifest = json.loads((out / "prefs.json").read_text())
    root = Path(manifest["root"])
    groups = [*read_qa_jsonl(out / "train.jsonl", root=root), *read_qa_jsonl(out / "val.jsonl", root=root)]
    return groups, manifest


def test_manta_groups_are_copied_with_levels(tmp_path, capsys):
    per_question = manta_record(test_image="rice/test_002.png", reference_image=None, pair_type="diagnosis")
    per_question["question_answer"][0]["level"] = "Defect identification"
    root = make_tiny_manta(tmp_path / "manta", {"a1": manta_record(), "b2": per_question})
    rc, _, err = build(capsys, root, tmp_path / "out", "--val-frac", "0.5")
    assert rc == 0, err
    groups, manifest = load(tmp_path / "out")
    assert manifest["source_format"] == "manta" and manifest["root"] == str(root.resolve())
    by_id = {g.id: g for g in groups}
    a1, b2 = by_id["a1"], by_id["b2"]
    assert a1.test_image == "ImageData/grain/rice/test_001.png" and (root / a1.reference_image).is_file()
    assert a1.pair_type == "standard" and all(q.level == "standard" for q in a1.questions)
    assert [q.level for q in b2.questions] == ["identification"] + ["diagnosis"] * 4  # its own level kept
    assert b2.reference_image is None
    src = manta_record()["question_answer"]
    assert [q.question for q in a1.questions] == [q["question_en"] for q in src]
    assert [q.answer for q in a1.questions] == [q["answer"] for q in src]
    assert a1.questions[2].options == [o["answer_en"] for o in src[2]["answer_options"]]
    assert a1.conclusion == "The kernel has a dark spot."
    assert (a1.anomalous, a1.label_source) == (True, "conclusion")  # written out, so read back as stored
    lines = [json.loads(x) for f in ("train.jsonl", "val.jsonl") for x in (tmp_path / "out" / f).read_text().splitlines()]
    line = next(d for d in lines if d["id"] == "a1")
    assert line["anomalous"] is True and line["label_source"] == "conclusion"
    assert manifest["counts"]["total"]["levels"] == {"standard": 5, "identification": 1, "diagnosis": 4}


def test_manta_question_without_four_options_is_a_problem(tmp_path, capsys):
    short = manta_record(test_image="rice/test_002.png")
    short["question_answer"][3]["answer_options"] = short["question_answer"][3]["answer_options"][:3]
    root = make_tiny_manta(tmp_path / "manta", {"ok": manta_record(), "short": short})
    rc, stdout, err = build(capsys, root, tmp_path / "out")
    assert rc == 0, err
    groups, manifest = load(tmp_path / "out")
    assert [g.id for g in groups] == ["ok"]
    assert manifest["problems"]["count"] == 1
    assert "group 'short': question 4 has 3 options" in manifest["problems"]["items"][0]
    rc, _, err = build(capsys, root, tmp_path / "strict", "--strict")
    assert rc == 1 and err.startswith("error: group 'short': question 4 has 3 options")


def test_split_keeps_groups_of_one_image_together(tmp_path, capsys):
    # MANTA can hold one group per level for the same pair: they must land on the same side.
    records = {f"r{i}": manta_record(pair_type=pt) for i, pt in enumerate(["standard", "identification", "diagnosis"])}
    records.update({f"s{i}": manta_record(test_image="rice/test_002.png") for i in range(3)})
    root = make_tiny_manta(tmp_path / "manta", records)
    for seed in range(6):
        out = tmp_path / f"o{seed}"
        assert build(capsys, root, out, "--seed", str(seed), "--val-frac", "0.5")[0] == 0
        train = {g.test_image for g in read_qa_jsonl(out / "train.jsonl", root=root)}
        val = {g.test_image for g in read_qa_jsonl(out / "val.jsonl", root=root)}
        assert not train & val


def test_mmad_items_become_yes_no_groups(tmp_path, capsys):
    entries = {
        "MVTec-AD/bottle/test/broken/000.png": mmad_entry(),
        "MVTec-AD/bottle/test/good/000.png": mmad_entry(
            mask_path=None,
            conversation=[{"Question": "Is there any defect in the object?", "Options": {"A": "Yes.", "B": "No."},
                           "Answer": "B", "type": "Anomaly Detection"}],
        ),
    }
    root = make_tiny_mmad(tmp_path / "mmad", entries)
    rc, _, err = build(capsys, root, tmp_path / "out", "--val-frac", "0")
    assert rc == 0, err
    groups, manifest = load(tmp_path / "out")
    assert manifest["source_format"] == "mmad"
    by_image = {g.test_image: g for g in groups}
    broken = by_image["MVTec-AD/bottle/test/broken/000.png"]
    assert broken.domain == "MVTec-AD" and broken.category == "bottle"
    assert broken.reference_image == "MVTec-AD/bottle/train/good/000.png"  # the first similar template
    assert broken.defect.type == "broken" and broken.defect.location == "center"  # mask box (6, 6, 10, 10)
    detect, classify = broken.questions
    assert (detect.level, classify.level) == ("standard", "identification")
    # The Yes/No question keeps its text; its expert answer is written from the annotation.
    assert detect.question == "Is there any defect in the object?" and detect.answer is True
    assert detect.options[0].startswith("Yes.") and "break" in detect.options[0] and "center" in detect.options[0]
    assert detect.options[3].startswith("No")
    # The multiple-choice question asks about one candidate; A1 names the right option.
    assert classify.question.startswith("What is the defect? Is the answer \"")
    cand = classify.question.split('"')[1]
    assert cand in ("Crack", "Stain", "None") and classify.answer == (cand == "Stain")
    assert '"Stain"' in classify.options[0]
    assert len(set(classify.options)) == 4
    good = by_image["MVTec-AD/bottle/test/good/000.png"]
    assert good.defect is None and good.questions[0].answer is False
    assert (good.anomalous, good.label_source) == (False, "annotation")  # MMAD's folder label
    assert (broken.anomalous, broken.label_source) == (True, "annotation")
    assert good.questions[0].options[0].startswith("No.") and "no defect" in good.conclusion.lower()


def test_mmad_candidates_mix_yes_and_no_answers(tmp_path, capsys):
    conv = [{"Question": f"Which option {k}?", "Options": {"A": "one", "B": "two", "C": "three", "D": "four"},
             "Answer": "C", "type": "Defect Analysis"} for k in range(12)]
    root = make_tiny_mmad(tmp_path / "mmad", {"MVTec-AD/bottle/test/broken/000.png": mmad_entry(conversation=conv)})
    assert build(capsys, root, tmp_path / "out")[0] == 0
    (g,), _ = load(tmp_path / "out")
    assert g.pair_type == "diagnosis" and {q.level for q in g.questions} == {"diagnosis"}
    answers = [q.answer for q in g.questions]
    assert any(answers) and not all(answers)
    for q in g.questions:
        assert q.options[0].startswith("Yes" if q.answer else "No") and '"three"' in q.options[0]
        assert q.options[3].startswith("No" if q.answer else "Yes")


def test_sage_qa_file_is_imported_with_levels(tmp_path, capsys):
    root = make_qa_root(tmp_path / "data")
    groups = [qa_group(0), qa_group(1, test_image="img/ref.png", reference_image=None, pair_type="diagnosis")]
    groups[1].questions[0] = Question("Is it?", True, ["w", "x", "y", "z"], "standard")
    write_qa_jsonl(root / "groups.jsonl", groups)
    rc, _, err = build(capsys, root / "groups.jsonl", tmp_path / "out", "--val-frac", "0")
    assert rc == 0, err
    out, manifest = load(tmp_path / "out")
    assert manifest["root"] == str(root.resolve()) and manifest["source_format"] == "qa"
    assert [g.id for g in out] == ["g0", "g1"]
    assert [q.level for q in out[0].questions] == ["identification"] * 5
    assert [q.level for q in out[1].questions] == ["standard"] + ["diagnosis"] * 4
    assert out[0].defect == groups[0].defect and out[0].questions[1].options == ["a", "b", "c", "d"]


def test_empty_manta_is_an_error(tmp_path, capsys):
    root = make_tiny_manta(tmp_path / "manta", [])
    rc, _, err = build(capsys, root, tmp_path / "out")
    assert rc == 1 and err.startswith("error:") and "no QA groups to import" in err
