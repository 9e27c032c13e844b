"""models/guide.py: which answers the calibrated detection starts, and the engine's forced first word.

The engine tests use a tiny random composed model (its byte tokenizer's yes tokens are "Y", "y", "T", "t");
the CLI and bench paths run in test_calibration.py, on a calibrated checkpoint and on sage-smol.
"""

import pytest
import torch

from sage_cli.bench import lexicon as lx
from sage_cli.bench.metrics import guided
from sage_cli.bench.verdict import contradicts
from sage_cli.models.engine import AnomalyMap, Engine
from sage_cli.models.guide import cells_of, hot_cells, verdict_for
from sage_cli.models.sage import SageModel
from sage_cli.prefs.wordings import PLACES
from tiny_models import noise_image as _img
from tiny_models import tiny_composed

DEFECT, NORMAL = {"verdict": "defect"}, {"verdict": "normal"}
CELLS = {"upper left": (0, 0), "upper center": (0, 1), "upper right": (0, 2), "middle left": (1, 0), "center": (1, 1),
         "middle right": (1, 2), "lower left": (2, 0), "lower center": (2, 1), "lower right": (2, 2)}


def _map(row: int, col: int, grid=(9, 9)) -> AnomalyMap:
    """A map whose peak is the middle patch of 3x3 cell (row, col)."""
    r, c = row * 3 + 1, col * 3 + 1
    m = torch.zeros(grid)
    m[r, c] = 1.0
    return AnomalyMap(m, grid, [r * grid[1] + c], 1.0, float(m.mean()), (r, c))


@pytest.mark.parametrize("question,detection,want", [
    ("Is there any defect on the test object?", DEFECT, True),
    ("Is there any defect on the test object?", NORMAL, False),
    ("Is this hazelnut in perfect condition?", DEFECT, False),  # yes means normal
    ("Do both photos show the hazelnut in the same condition?", NORMAL, True),
    ("Should this hazelnut be scrapped or sent back for repair?", DEFECT, True),
    ("Can this hazelnut be shipped as it is?", DEFECT, False),
    ("Is the damage near the top-left corner?", NORMAL, False),  # nothing there, so nowhere
    ("Is the damage near the top-left corner?", DEFECT, True),  # the map peaks in the upper left
    ("Is the damage near the bottom edge?", DEFECT, False),
    ("Is the flaw a fracture?", DEFECT, None),  # type: the model's
    ("Could what you see on this hazelnut stop it from working?", DEFECT, None),  # consequence: the model's
    ("Is the scratch on the head of the screw?", DEFECT, None),  # a part, not a place the map can say
    ("Is there any defect on the test object?", None, None),  # no calibration, or zero-shot
])
def test_verdict_for_the_kinds_it_answers(question, detection, want):
    assert verdict_for(question, detection, _map(0, 0)) is want


def test_every_held_out_place_names_its_own_cell():
    """Every vocabulary of wordings.PLACES (the held-out location family) reads as a set of cells holding
    the cell it was written for, and the centre words name the centre alone."""
    for cell, phrases in PLACES.items():
        for phrase in phrases:
            cells = cells_of(lx.places(lx.words(phrase)))
            assert CELLS[cell] in cells, (phrase, cells)
            assert (1, 1) not in cells or cell == "center", (phrase, cells)
    assert cells_of({"center"}) == {(1, 1)}
    assert cells_of({"top", "left", "corner", "edge"}) == {(0, 0)}


@pytest.mark.parametrize("grid", [(9, 9), (16, 16), (8, 8)])
def test_a_lone_hot_patch_is_in_the_cell_location_words_names(grid):
    from sage_cli.data.masks import location_words

    for r in range(grid[0]):
        for c in range(grid[1]):
            m = torch.zeros(grid)
            m[r, c] = 1.0
            want = CELLS[location_words((c, r, c + 1, r + 1), grid[1], grid[0])]
            assert hot_cells(AnomalyMap(m, grid, [], 1.0, float(m.mean()), (r, c))) == {want}


def test_a_defect_across_cells_is_hot_in_each_and_a_faint_patch_is_not():
    m = torch.zeros(9, 9)
    m[4, 2], m[4, 3], m[0, 8] = 1.0, 0.8, 0.3  # a crack across the middle-left and centre cells; a faint spot
    hot = hot_cells(AnomalyMap(m, (9, 9), [], 1.0, float(m.mean()), (4, 2)))
    assert hot == {(1, 0), (1, 1)}
    assert verdict_for("Is the damage at the centre?", DEFECT, AnomalyMap(m, (9, 9), [], 1.0, float(m.mean()), (4, 2)))
    # a region question counts the defect only where it reaches
    amap = AnomalyMap(m, (9, 9), [], 1.0, float(m.mean()), (4, 2))
    assert verdict_for("Is the upper right of the test hazelnut consistent with the reference?", DEFECT, amap)
    assert not verdict_for("Does the middle left of the test hazelnut look as it should?", DEFECT, amap)


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return Engine(SageModel(tiny_composed(), k_patches=2), "tiny")


def test_a_verdict_sets_the_first_word_and_the_model_writes_the_rest(engine):
    prefix = engine.encode(_img(1), _img(2), [])
    q = "Is there any defect on the test object?"
    free = engine.answer(prefix, q, max_new_tokens=6)
    for v in (True, False):
        a = engine.answer(prefix, q, max_new_tokens=6, verdict=v)
        ids = engine.model.backbone.tokenizer(a.text, add_special_tokens=False)["input_ids"]
        assert ids[0] in (engine.yes_ids if v else engine.no_ids), a.text
        assert a.guided and a.p_yes == pytest.approx(free.p_yes)  # P(yes) stays the model's own
    assert not free.guided


def test_verdicts_in_a_batch_match_one_at_a_time(engine):
    prefix = engine.encode(_img(3), _img(4), [])
    qs = ["Is it damaged?", "Is it free of defects?", "Where is it?"]
    verdicts = [True, False, None]
    batch = engine.answer_group(prefix, qs, max_new_tokens=5, verdicts=verdicts)
    alone = [engine.answer(prefix, q, max_new_tokens=5, verdict=v) for q, v in zip(qs, verdicts)]
    assert [a.text for a in batch] == [a.text for a in alone]
    assert [a.guided for a in batch] == [True, True, False]


def test_zero_shot_the_guide_gives_presence_and_normality_not_places():
    q = "Is the damage near the top-left corner?"
    assert verdict_for("Is this hazelnut flawless?", DEFECT, None) is False
    assert verdict_for("Is there any defect on the test object?", NORMAL, None) is False
    assert verdict_for(q, DEFECT, None) is None  # no map says where
    assert verdict_for(q, NORMAL, None) is False  # nothing anywhere


@pytest.mark.parametrize("question,answer,want", [
    # sage-smol 2's own words after a given "No" / "Yes" (release benches): flagged
    ("Is the defect in the center of this hazelnut?", "No. There is a small crack in the center.", True),
    ("Is the test hazelnut without any flaw?", "Yes. There is a small hole in the middle left, covering 1% of the image.", True),
    ("Is there any defect on the test object?", "No. There is a crack near the top.", True),
    ("Is the defect in the lower left?", "Yes. The test part shows a scratch in the upper right.", True),
    # words that agree, or say nothing either way: not flagged
    ("Is there any defect on the test object?", "Yes. There is a small crack in the lower left.", False),
    ("Is the test hazelnut without any flaw?", "Yes. The test hazelnut matches the reference in shape and colour.", False),
    ("Is there any defect on the test object?", "No. The test hazelnut matches the reference.", False),
    ("Is there any defect on the test object?", "Yes.", False),
    ("Is there any defect on the test object?", "The test part shows a scratch.", False),  # no leading yes/no
    ("Is there any defect on the test object?", "", False),
])
def test_words_that_contradict_the_given_first_word_are_flagged(question, answer, want):
    assert contradicts(answer, question) is want


def test_bench_counts_guided_answers_and_their_contradictions():
    q = "Is there any defect on the test object?"
    samples = [{"question": q, "answer": "No. There is a crack near the top.", "guided": True, "correct": True},
               {"question": q, "answer": "Yes. A crack in the lower left.", "guided": True, "correct": False},
               {"question": q, "answer": "No. There is a crack near the top.", "correct": True}]  # the model's own
    assert guided(samples) == {"answers": 2, "accuracy": 0.5, "contradicted": 1, "contradicted_share": 0.5}
    assert guided(samples[2:]) is None


def test_infer_says_when_the_words_after_a_guided_verdict_disagree():
    import io

    from sage_cli.commands.infer import _printer
    from sage_cli.models.engine import Answer

    q = "Is there any defect on the test object?"
    for text, guided_, flagged in (("No. There is a crack near the top.", True, True),
                                   ("No. The part matches the reference.", True, False),
                                   ("No. There is a crack near the top.", False, False)):  # the model's own word
        out = io.StringIO()
        _printer(out)["on_answer"](Answer(q, text, 0.4, 9, 20, 0.1, 0.2, guided=guided_))
        assert ("say otherwise: trust the yes/no and the map" in out.getvalue()) is flagged, out.getvalue()
