"""Each benchmark format as bench items: levels, truths, references, detection questions, filters, errors."""

from __future__ import annotations

import pytest
from conftest import make_qa_root, make_tiny_manta, make_tiny_mmad, manta_record, mmad_entry, qa_group

from sage_cli.bench.items import LETTER_INSTRUCTION, load_items
from sage_cli.data.qa_jsonl import write_qa_jsonl
from sage_cli.data.records import Question
from sage_cli.errors import SageError


def test_manta_items_keep_truths_levels_and_best_options(tmp_path):
    root = make_tiny_manta(tmp_path / "m", [manta_record(), manta_record(pair_type="Deep diagnosis")])
    loaded = load_items("manta", root, shots=1)
    a, b = loaded.items
    assert [q.truth for q in a.questions] == [True, False, True, False, True]
    assert {q.level for q in a.questions} == {"standard"} and {q.level for q in b.questions} == {"diagnosis"}
    assert a.questions[2].best_option == "option 2.0" and a.questions[2].prompt == "Question 2?"
    assert a.reference_image.endswith("rice/ref_001.png") and a.path(a.test_image).is_file()
    assert a.category == "rice" and a.kind == "yesno"
    assert load_items("mpdd", root, shots=0).items[0].reference_image is None  # zero-shot: no reference


def test_missing_reference_is_left_out_of_one_shot_and_counted(tmp_path):
    recs = [manta_record(), manta_record(test_image="rice/test_002.png", reference_image=None)]
    root = make_tiny_manta(tmp_path / "m", recs)
    one = load_items("manta", root, shots=1)
    assert len(one.items) == 1 and one.no_reference == 1
    assert len(load_items("manta", root, shots=0).items) == 2
    only = make_tiny_manta(tmp_path / "n", [manta_record(reference_image=None)])
    with pytest.raises(SageError, match="use --shots 0"):
        load_items("manta", only, shots=1)


def test_group_with_fewer_questions_and_repeated_ids(tmp_path):
    short = manta_record(question_answer=manta_record()["question_answer"][:3])
    root = make_tiny_manta(tmp_path / "m", {"r1": short, "r2": manta_record()})
    items = load_items("manta", root, shots=1).items
    assert [len(it.questions) for it in items] == [3, 5]
    qa = make_qa_root(tmp_path / "qa")
    write_qa_jsonl(qa / "groups.jsonl", [qa_group(0), qa_group(0)])  # the same id twice
    assert [it.id for it in load_items("qa", qa / "groups.jsonl", shots=1).items] == ["g0", "g0#2"]


def test_detection_question_is_the_first_standard_one_about_defects(tmp_path):
    qa = make_qa_root(tmp_path / "qa")
    qs = [Question("Where is the spot?", True, ["a"] * 4, "identification"),
          Question("Is the test rice free of defects?", False, ["a"] * 4, "standard"),
          Question("Is there any defect on the test rice?", True, ["a"] * 4, "standard")]
    write_qa_jsonl(qa / "groups.jsonl", [qa_group(0, questions=qs)])
    item = load_items("qa", qa, shots=1).items[0]
    assert [q.detect for q in item.questions] == [None, -1, None]
    assert [q.level for q in item.questions] == ["identification", "standard", "standard"]


def test_mmad_items_ask_with_letters_and_use_the_first_similar_template(tmp_path):
    entries = {"MVTec-AD/bottle/test/broken/000.png": mmad_entry(),
               "MVTec-AD/bottle/test/good/000.png": mmad_entry(similar_templates=[], random_templates=[], mask_path=None)}
    root = make_tiny_mmad(tmp_path / "mmad", entries)
    one = load_items("mmad", root, shots=1)
    assert len(one.items) == 1 and one.no_reference == 1  # the entry without templates
    it = one.items[0]
    assert it.kind == "choice" and it.category == "bottle"
    assert it.reference_image == "MVTec-AD/bottle/train/good/000.png"
    q0, q1 = it.questions
    assert q0.truth == "A" and q0.level == "standard" and q0.type == "Anomaly Detection"
    assert q1.level == "identification" and q1.options == {"A": "Crack", "B": "Stain", "C": "None"}
    assert q1.prompt.splitlines() == ["What is the defect?", "A. Crack", "B. Stain", "C. None", LETTER_INSTRUCTION]
    assert q0.best_option is None and q0.detect is None
    assert len(load_items("mmad", root, shots=0).items) == 2


def test_mvtec_groups_are_built_from_the_annotations(make_tiny_mvtec):
    root = make_tiny_mvtec()
    items = load_items("mvtec", root, shots=1).items
    assert len(items) == 3  # test/good 000, test/scratch 000-001
    for it in items:
        assert len(it.questions) == 5 and it.reference_image.startswith("widget/train/good/")
        assert sorted(q.level for q in it.questions).count("standard") == 2
        det = [q for q in it.questions if q.detect is not None]
        assert len(det) == 1 and det[0].level == "standard"
        # the detection question's truth says whether the part is defective (flipped when it asks "free of")
        defective = it.group.defect is not None
        assert (det[0].truth if det[0].detect > 0 else not det[0].truth) == defective
        assert (it.defective, it.label_source) == (defective, "annotation")  # the folder label, not a question


def test_defective_is_the_group_label_not_the_first_question(tmp_path):
    """MANTA: a first question that is no detection question still leaves a label (here from the conclusion)."""
    rec = manta_record(conclusion_en="The test tablet is broken into two pieces.")
    rec["question_answer"][0]["question_en"] = "Is the tablet in the test image broken?"
    normal = manta_record(conclusion_en="The test object is identical to the reference.", test_image="rice/test_002.png")
    items = load_items("manta", make_tiny_manta(tmp_path / "m", [rec, normal]), shots=1).items
    assert [(it.defective, it.label_source) for it in items] == [(True, "conclusion"), (False, "conclusion")]
    # qa groups: the stored label; an unlabelled group with nothing to read stays unknown
    qa = make_qa_root(tmp_path / "qa")
    write_qa_jsonl(qa / "groups.jsonl", [qa_group(0), qa_group(1, defect=None, conclusion="")])
    labelled, unknown = load_items("qa", qa, shots=1).items
    assert (labelled.defective, labelled.label_source) == (True, "annotation")
    assert (unknown.defective, unknown.label_source) == (None, None)


def test_categories_and_limit(make_tiny_mvtec, tmp_path):
    root = make_tiny_mvtec()
    make_tiny_mvtec(root, category="gadget", defects={"dent": 1})
    assert {it.category for it in load_items("mvtec", root, 1, categories=["gadget"]).items} == {"gadget"}
    limited = load_items("mvtec", root, 1, limit=1).items
    assert sorted(it.category for it in limited) == ["gadget", "widget"]  # N per category
    with pytest.raises(SageError, match="no such category: nope"):
        load_items("mvtec", root, 1, categories=["nope"])
    manta = make_tiny_manta(tmp_path / "m", [manta_record()])
    with pytest.raises(SageError, match="no such category"):
        load_items("manta", manta, 1, categories=["wheat"])


def test_wrong_layout_and_missing_root_are_one_line(tmp_path, make_tiny_mvtec):
    manta = make_tiny_manta(tmp_path / "m", [manta_record()])
    with pytest.raises(SageError, match=r"not mmad data .*looks like manta data \(try `sage bench manta`\)"):
        load_items("mmad", manta, 1)
    with pytest.raises(SageError, match="no such file or directory"):
        load_items("manta", tmp_path / "nowhere", 1)
    with pytest.raises(SageError, match="not qa data"):
        load_items("qa", make_tiny_mvtec(), 1)
    empty = make_tiny_manta(tmp_path / "e", [])
    with pytest.raises(SageError, match="no usable QA groups"):
        load_items("manta", empty, 1)
