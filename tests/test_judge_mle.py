"""Eqs. 3-5 (MLE score, per-answer entropy, ΔH pairs) on numbers worked out by hand, and the strict
reading of the judge's reply."""

import math
import re

import pytest

from sage_cli.judge.mle import entropies, mle_score, select_pairs, softmax
from sage_cli.judge.rubric import MalformedReply, check_template, describe_defect, parse_reply
from sage_cli.data.records import Defect
from sage_cli.errors import SageError

OPTS = ["a1", "a2", "a3", "a4"]


def test_mle_score_is_the_mean_of_the_three():
    assert mle_score(5, 4, 3) == 4.0
    assert mle_score(1, 2, 2) == pytest.approx(5 / 3)


def test_softmax_and_entropy_by_hand():
    # S = [5, 4, 2, 1]. Shifted by the max: exp([0, -1, -3, -4]) = 1, 0.367879, 0.049787, 0.018316;
    # Z = 1.435982, so p = [0.696387, 0.256187, 0.034671, 0.012755].
    p = softmax([5, 4, 2, 1])
    assert p == pytest.approx([0.696387, 0.256187, 0.034671, 0.012755], abs=1e-6)
    # ln p_i = (S_i - 5) - ln Z with ln Z = 0.361850: -0.361850, -1.361850, -3.361850, -4.361850.
    # H_i = -p_i ln p_i: 0.696387*0.361850 = 0.251987, 0.256187*1.361850 = 0.348888,
    #                    0.034671*3.361850 = 0.116559, 0.012755*4.361850 = 0.055634.
    assert entropies([5, 4, 2, 1]) == pytest.approx([0.251987, 0.348888, 0.116559, 0.055634], abs=2e-6)


def test_uniform_scores_give_ln4_over_4_each():
    # p = 1/4 each, H = (1/4) ln 4 = 0.346574 for every answer.
    assert entropies([3, 3, 3, 3]) == pytest.approx([math.log(4) / 4] * 4)


def test_pairs_by_hand():
    # From the entropies above: |H1-H2| = 0.096901, |H2-H3| = 0.232329, |H3-H4| = 0.060924,
    # so ΔH_min is (a3, a4); ΔH_max is (a1, a4) with |0.251987 - 0.055634| = 0.196353.
    pmin, pmax = select_pairs(OPTS, [5, 4, 2, 1])
    assert (pmin.kind, pmin.chosen_rank, pmin.rejected_rank, pmin.chosen, pmin.rejected) == ("min", 2, 3, "a3", "a4")
    assert pmin.delta_h == pytest.approx(0.060924, abs=2e-6)
    assert (pmax.kind, pmax.chosen_rank, pmax.rejected_rank, pmax.chosen, pmax.rejected) == ("max", 0, 3, "a1", "a4")
    assert pmax.delta_h == pytest.approx(0.196353, abs=2e-6)


def test_middle_pair_with_equal_scores_is_min():
    # S = [5, 4, 4, 3]: a2 and a3 have the same score, hence the same entropy: ΔH = 0 exactly.
    pmin, _ = select_pairs(OPTS, [5, 4, 4, 3])
    assert (pmin.chosen_rank, pmin.rejected_rank, pmin.delta_h) == (1, 2, 0.0)


def test_ties_go_to_the_better_ranked_pair():
    # S = [5, 5, 1, 1]: ΔH is 0 for (a1, a2) and for (a3, a4); the better-ranked (a1, a2) wins.
    pmin, _ = select_pairs(OPTS, [5, 5, 1, 1])
    assert (pmin.chosen_rank, pmin.rejected_rank) == (0, 1)
    # All equal: every adjacent ΔH is 0 -> (a1, a2); ΔH_max (a1, a4) is 0 too.
    pmin, pmax = select_pairs(OPTS, [2, 2, 2, 2])
    assert (pmin.chosen_rank, pmin.rejected_rank, pmax.delta_h) == (0, 1, 0.0)


def test_winner_is_the_better_ranked_whatever_the_scores():
    # The judge disagrees with the experts (a4 scored best): the experts' ranking stays the preference.
    pmin, pmax = select_pairs(OPTS, [1, 2, 3, 5])
    assert pmin.chosen_rank < pmin.rejected_rank and (pmax.chosen, pmax.rejected) == ("a1", "a4")


def test_two_options_give_the_same_pair_twice():
    pmin, pmax = select_pairs(["x", "y"], [4, 2])
    assert (pmin.chosen, pmin.rejected, pmax.chosen, pmax.rejected) == ("x", "y", "x", "y")
    assert pmin.delta_h == pmax.delta_h


def test_large_scores_do_not_overflow():
    assert sum(softmax([1000.0, 999.0])) == pytest.approx(1.0)


@pytest.mark.parametrize("opts, scores", [(["a"], [1.0]), (OPTS, [1, 2, 3])])
def test_bad_pair_input(opts, scores):
    with pytest.raises(ValueError):
        select_pairs(opts, scores)


# ---------------------------------------------------------------------------------------------- replies


@pytest.mark.parametrize("text", [
    '{"type": 4, "location": 3, "logic": 5}',
    '  {"logic": 5, "location": 3, "type": 4, "reason": "close to the reference"}\n',
    '```json\n{"type": 4, "location": 3, "logic": 5}\n```',
    '```\n{"type": 4, "location": 3, "logic": 5}\n```',
])
def test_good_replies(text):
    assert parse_reply(text) == {"type": 4, "location": 3, "logic": 5}


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    (None, "empty"),
    ("The answer deserves 4/5.", "not a JSON object"),
    ('Sure! {"type": 4, "location": 3, "logic": 5}', "not a JSON object"),
    ("[4, 3, 5]", "not a JSON object but a list"),
    ('{"type": 4, "location": 3}', "no 'logic'"),
    ('{"type": 4.0, "location": 3, "logic": 5}', "not an integer"),
    ('{"type": "4", "location": 3, "logic": 5}', "not an integer"),
    ('{"type": true, "location": 3, "logic": 5}', "not an integer"),
    ('{"type": 6, "location": 3, "logic": 5}', "outside 1..5"),
    ('{"type": 0, "location": 3, "logic": 5}', "outside 1..5"),
])
def test_malformed_replies(text, why):
    with pytest.raises(MalformedReply, match=why):
        parse_reply(text)


def test_template_checks():
    check_template("Q: {question}\nA: {answer} {{literal}}")
    with pytest.raises(SageError, match=r"unknown placeholder \{answr\}"):
        check_template("{answr}")
    with pytest.raises(SageError, match="never shows the answer"):
        check_template("{question}")
    with pytest.raises(SageError, match="literal braces"):
        check_template("{answer} {")


def test_defect_in_words():
    assert describe_defect(None, False, "annotation") == "no defect (the test object is normal)"
    assert describe_defect(Defect("crack", location="upper left", area_frac=0.021)) == \
        "crack, upper left, 2.1% of the image"
    assert describe_defect(None, True, "conclusion").startswith("defective, type not annotated")
    assert describe_defect(None, True, "annotation").startswith("defective, type not annotated")
    unknown = describe_defect(None)  # nothing known: never "normal"
    assert "unknown" in unknown and "normal" not in unknown and "no defect" not in unknown
    read = describe_defect(None, False, "conclusion")  # the record's own claim, said as such
    assert read.startswith("not annotated; the inspection conclusion says") and "type is unknown" in read


def _manta_groups(tmp_path, records):
    from conftest import make_tiny_manta

    from sage_cli.data.manta import read_manta

    return {g.id: g for g in read_manta(make_tiny_manta(tmp_path / "manta", records))}


def _manta_qa(question, answer, options):
    return {"question_en": question, "answer": answer, "answer_options": [{"answer_en": o} for o in options]}


DENT = "The test image shows a dent on the rim of the cap, which the reference does not have."
DENT_OPTIONS = ["Yes. There is a dent on the rim.", "Yes, the rim looks deformed.", "Yes, maybe a scratch.",
                "It looks the same as the reference."]


def test_judge_prompt_for_a_defective_manta_record_never_says_normal(tmp_path):
    """A MANTA record has no defect annotation: the judge gets its conclusion and reference answer, and is
    told the record is defective with its type not annotated, never that the object is normal."""
    from conftest import manta_record

    from sage_cli.config import load_recipe
    from sage_cli.judge.rubric import build_messages

    rec = manta_record(conclusion_en=DENT, question_answer=[
        _manta_qa("Does the test image show any abnormality compared with the reference?", True, DENT_OPTIONS)] * 5)
    g = _manta_groups(tmp_path, [rec])["grain-0"]
    assert g.defect is None and (g.anomalous, g.label_source) == (True, "conclusion")
    recipe = load_recipe("default", "score")
    user = build_messages(recipe, g, 0, 3)[-1]["content"]
    assert not re.search(r"\bnormal\b", user, re.I) and "no defect" not in user.lower()
    assert DENT in user and DENT_OPTIONS[0] in user
    assert "Annotation of the test image: defective, type not annotated" in user

    # a template without {conclusion} / {reference} still gets them, inside {defect}
    recipe.template = "Annotation: {defect}\nAnswer: {answer}"
    user = build_messages(recipe, g, 0, 3)[-1]["content"]
    assert DENT in user and DENT_OPTIONS[0] in user and "no defect" not in user.lower()


def test_judge_prompt_says_normal_only_when_the_record_says_so(tmp_path):
    from conftest import manta_record

    from sage_cli.config import load_recipe
    from sage_cli.judge.rubric import build_messages

    qs = [_manta_qa("Is the tablet round?", True, ["Yes.", "Yes, mostly.", "Maybe.", "No."])] * 5
    groups = _manta_groups(tmp_path, {
        "unknown": manta_record(conclusion_en="", question_answer=qs),
        "labelled": manta_record(conclusion_en="", question_answer=qs, is_anomaly=False),
    })
    recipe = load_recipe("default", "score")
    unknown = build_messages(recipe, groups["unknown"], 0, 0)[-1]["content"]
    assert groups["unknown"].anomalous is None
    assert "no defect" not in unknown.lower() and "test object is normal" not in unknown
    assert "whether the test object is defective is unknown" in unknown
    labelled = build_messages(recipe, groups["labelled"], 0, 0)[-1]["content"]
    assert "Annotation of the test image: no defect (the test object is normal)" in labelled
