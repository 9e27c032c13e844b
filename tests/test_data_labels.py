"""Whether a QA group's test object is anomalous (data/labels.py): MANTA's realistic wordings, every rule."""

from __future__ import annotations

import pytest
from conftest import make_tiny_manta

from sage_cli.bench.items import load_items
from sage_cli.data.labels import anomaly_label, conclusion_claim, pair_type_claim, question_polarity
from sage_cli.data.manta import read_manta
from sage_cli.data.records import Defect, QAGroup, Question

FILLERS = [("Is the object centred in the test image?", True), ("Was the photo taken from above?", True),
           ("Is the test image sharp enough to inspect?", True), ("Is the object lying flat?", True)]


def rec(conclusion: str, qas: list[tuple[str, bool]], pair_type: str = "Standard comparison",
        test: str = "rice/test_001.png", **extra) -> dict:
    """A MANTA record with `qas` first, filled up to five questions with questions that say nothing."""
    qas = (qas + FILLERS)[:5]
    r = {"test_image": test, "reference_image": "rice/ref_001.png", "pair_type": pair_type,
         "conclusion_en": conclusion,
         "question_answer": [{"question_en": q, "answer": a,
                              "answer_options": [{"answer_en": f"{'Yes' if a else 'No'} ({k})"} for k in range(4)]}
                             for q, a in qas]}
    r.update(extra)
    return r


# id -> (record, expected label, expected source). The first questions are worded the many ways MANTA
# words them; most groups are labelled by their conclusion, the rest by the later rules.
CASES = {
    "m01": (rec("Compared with the reference image, the test tablet shows a dent on its rim.",
                [("Does the test image show any abnormality compared with the reference?", True)]), True, "conclusion"),
    "m02": (rec("The tablet in the test image is broken into two pieces, unlike the reference.",
                [("Is the tablet in the test image broken?", True)]), True, "conclusion"),
    "m03": (rec("The test object is normal; it is identical to the reference.",
                [("Are there differences between the two images?", False)]), False, "conclusion"),
    "m04": (rec("The test bean is discoloured: a brown patch covers its upper half.",
                [("Is the object's color the same as the reference?", False)]), True, "conclusion"),
    "m05": (rec("No defects are visible; the test pill matches the reference in shape and color.",
                [("Is the color of the test pill consistent with the reference?", True)]), False, "conclusion"),
    "m06": (rec("The thread of the test screw has a scratch near the head.",
                [("Is the screw in the test image the same as the one in the reference image?", False)]),
            True, "conclusion"),
    "m07": (rec("A black speck of foreign matter sits on the left side of the grain.",
                [("Can any foreign matter be seen on the test rice grain?", True)]), True, "conclusion"),
    "m08": (rec("The two images show the same capsule with no visible difference.",
                [("Does the test capsule look different from the reference?", False)]), False, "conclusion"),
    "m09": (rec("The test nut is missing a piece of its edge, while the reference nut is complete.",
                [("Is there anything wrong with the test object compared with the reference?", True)]),
            True, "conclusion"),
    "m10": (rec("The test sample looks exactly like the reference.",
                [("Is the test sample normal?", True)]), False, "conclusion"),
    "m11": (rec("The screw looks normal except for a small scratch near the head.",
                [("Is the test screw free of defects?", False)]), True, "conclusion"),
    "m12": (rec("Compared to the reference image, the test image shows a chip on the upper edge, indicating a defect.",
                [("Is the surface of the test tablet intact?", False)]), True, "conclusion"),
    "m13": (rec("The test image is consistent with the reference image, indicating no defects.",
                [("Does the test tablet differ from the reference tablet?", False)]), False, "conclusion"),
    # no conclusion: the questions and their answers
    "m14": (rec("", [("Is the tablet round?", True), ("Is there any crack on the tablet surface?", True)]),
            True, "question:1"),
    "m15": (rec("", [("Is the pill's shape the same as the reference?", True),  # a property: says nothing
                     ("Is the pill in the test image free of defects?", True)]), False, "question:1"),
    "m16": (rec("", [("Is the object's color the same as the reference?", False)]), True, "question:0"),
    "m17": (rec("See the answers above.", [("Is the object's position the same as in the reference?", True),
                                           ("Is the crack located on the left half of the tablet?", True),
                                           ("Does the crack reach the edge?", False)]), True, "presupposition:1"),
    "m18": (rec("", [("Is there any defect in the reference image?", False),  # about the reference: skipped
                     ("Is the test kernel the same as the reference kernel?", False)]), True, "question:1"),
    # explicit labels and pair_type
    "m19": (rec("", [("Is the grain's orientation the same as the reference?", True)],
                pair_type="Standard comparison (normal-normal)"), False, "pair_type"),
    "m20": (rec("The test tablet has a crack across its face.", [("Is the tablet broken?", True)],
                defect_type="crack"), True, "annotation"),
    "m21": (rec("", [("Is the grain's orientation the same as the reference?", True)], is_anomaly=False),
            False, "annotation"),
}


@pytest.fixture
def manta_root(tmp_path):
    return make_tiny_manta(tmp_path / "manta", {k: v[0] for k, v in CASES.items()})


def test_every_manta_group_gets_the_right_label(manta_root):
    groups = {g.id: g for g in read_manta(manta_root)}
    assert set(groups) == set(CASES)
    got = {k: (g.anomalous, g.label_source) for k, g in groups.items()}
    assert got == {k: (v[1], v[2]) for k, v in CASES.items()}
    assert groups["m20"].defect == Defect("crack") and all(groups[k].defect is None for k in CASES if k != "m20")


def test_bench_items_take_the_label_and_its_source(manta_root):
    items = {it.id: it for it in load_items("manta", manta_root, shots=1).items}
    assert {k: (it.defective, it.label_source) for k, it in items.items()} == {k: (v[1], v[2]) for k, v in CASES.items()}
    # the per-question detection polarity is still only ever on a standard question, at most one per item
    for it in items.values():
        assert sum(q.detect is not None for q in it.questions) <= 1


def test_labels_survive_prefs_build_and_rereading(manta_root, tmp_path):
    from sage_cli.cli import run
    from sage_cli.data.qa_jsonl import read_qa_jsonl

    out = tmp_path / "out"
    assert run(["prefs", "build", "--from", str(manta_root), "--out", str(out), "--val-frac", "0"]) == 0
    groups = {g.id: g for g in read_qa_jsonl(out / "train.jsonl")}
    assert {k: (g.anomalous, g.label_source) for k, g in groups.items()} == {k: (v[1], v[2]) for k, v in CASES.items()}


@pytest.fixture
def own_rules_only(monkeypatch):
    """The verdict parser's helpers (being rewritten elsewhere) say nothing: only labels.py's rules count."""
    import sage_cli.bench.verdict as verdict

    monkeypatch.setattr(verdict, "defect_claim", lambda text: None)
    monkeypatch.setattr(verdict, "detection_polarity", lambda question: None)


@pytest.mark.usefixtures("own_rules_only")
@pytest.mark.parametrize("text, claim", [
    ("The test image shows a dent on the rim.", True),
    ("The test object is normal.", False),
    ("The test object does not match the reference: part of the pin is missing.", True),
    ("The kernel has no husk and shows a dark spot.", True),
    ("There are no visible cracks, scratches or dents and the surface is intact.", False),
    ("The colour of the test pill differs from the reference.", True),
    ("There is no difference between the two images.", False),
    ("The test tablet is not the same as the reference.", True),
    ("The capsule in the test image is intact and shows no abnormalities.", False),
    ("See the answers.", None),
    ("", None),
])
def test_conclusion_rules(text, claim):
    assert conclusion_claim(text) is claim


@pytest.mark.usefixtures("own_rules_only")
def test_object_names_that_are_defect_words():
    assert conclusion_claim("The test chip is identical to the reference.", "chip") is False
    assert conclusion_claim("The test image shows a normal chip.") is False
    assert conclusion_claim("There is a chip on the rim of the cup.") is True
    assert question_polarity("Is the chip in the test image rotated?") == (None, False)


@pytest.mark.usefixtures("own_rules_only")
@pytest.mark.parametrize("question, polarity", [
    ("Does the test image show any abnormality compared with the reference?", (1, True)),
    ("Are there differences between the two images?", (1, True)),
    ("Is the test object normal?", (-1, True)),
    ("Is the grain free of defects?", (-1, True)),
    ("Is the tablet in the test image broken?", (1, False)),  # "no" leaves other defects open
    ("Is there a scratch?", (1, False)),
    ("Is the object's color the same as the reference?", (-1, False)),  # "yes" leaves other defects open
    ("Is the capsule intact?", (-1, False)),
    ("Is the crack on the left side?", (None, False)),  # a presupposition, not a detection question
    ("Is the abnormal region on the left?", (None, False)),
    ("Is there any defect in the reference image?", (None, False)),
    ("Is the tablet round?", (None, False)),
])
def test_question_rules(question, polarity):
    assert question_polarity(question) == polarity


@pytest.mark.usefixtures("own_rules_only")
def test_rule_order():
    qs = [Question("Is there any defect on the test rice?", False, ["a"] * 4)]

    def group(**kw):
        return QAGroup(**{"id": "g", "domain": "d", "category": "rice", "test_image": "t.png", "reference_image": None,
                          "pair_type": "standard", "questions": qs, **kw})

    assert anomaly_label(group(defect=Defect("spot"))) == (True, "annotation")  # annotation over the answer
    assert anomaly_label(group(anomalous=True, label_source="annotation")) == (True, "annotation")
    assert anomaly_label(group(conclusion="A dark spot on the kernel.")) == (True, "conclusion")
    assert anomaly_label(group()) == (False, "question:0")
    # a stored label read from text is read again (rules may have improved); only "annotation" is kept as is
    assert anomaly_label(group(anomalous=True, label_source="question:0")) == (False, "question:0")
    assert anomaly_label(group(questions=[Question("Is it round?", True, [])])) == (None, None)
    assert pair_type_claim("normal-abnormal") is True and pair_type_claim("Deep diagnosis") is None
    assert pair_type_claim("good pair") is False and pair_type_claim(None) is None


def test_verdict_helpers_are_the_fallbacks(monkeypatch):
    import sage_cli.bench.verdict as verdict

    monkeypatch.setattr(verdict, "defect_claim", lambda text: False if "all good" in text else None)
    monkeypatch.setattr(verdict, "detection_polarity", lambda q: -1 if "pass muster" in q else None)
    assert conclusion_claim("All good here.") is False  # no rule of ours fits: defect_claim reads it
    assert question_polarity("Does it pass muster?") == (-1, False)  # taken as specific: only "no" counts
    g = QAGroup("g", "d", "rice", "t.png", None, "standard", [Question("Does it pass muster?", False, [])])
    assert anomaly_label(g) == (True, "question:0")
    monkeypatch.setattr(verdict, "defect_claim", lambda text: 1 / 0)  # a broken helper is no label, not a crash
    assert conclusion_claim("All good here.") is None
