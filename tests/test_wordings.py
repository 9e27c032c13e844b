"""Seen and held-out question wordings (prefs/wordings.py): training never writes a held-out family, the
held-out questions' truths follow the annotation, and `sage bench` reports accuracy per wording."""

from __future__ import annotations

import json
import random

import pytest

from sage_cli.bench.metrics import baselines, by_wording
from sage_cli.cli import run
from sage_cli.prefs.build import group_for, image_groups
from sage_cli.prefs.knowledge import defect_info, distractors, object_info
from sage_cli.prefs.templates import Finding, Writer
from sage_cli.prefs.wordings import FAMILIES, PLACES, SYNONYMS, held_out_questions, seen, wording_of


def _finding(defect: str | None, location: str | None = "upper left", reference: bool = True) -> Finding:
    info = defect_info(defect) if defect else None
    return Finding(obj=object_info("hazelnut"), defect=info, location=location if defect else None,
                   area_frac=0.01 if defect else None, bbox=(0, 0, 20, 20) if defect else None,
                   image_size=(300, 300) if defect else None, has_reference=reference,
                   wrong=distractors(info or defect_info("anomaly"), ["crack", "cut", "hole", "print"], 2,
                                     random.Random(0)))


def _held_out(f: Finding, seed: int):
    rng = random.Random(seed)
    return held_out_questions(Writer(f, rng), rng)


def test_training_builds_only_seen_wordings(make_tiny_mvtec):
    """Every question `sage prefs build` writes (many seeds, defective and normal images) is matched by the
    training templates, and none by a held-out family."""
    from sage_cli.data.formats import open_dataset

    root = make_tiny_mvtec(defects={"crack": 2, "scratch": 2, "hole": 1}, n_good=3)
    tests = [r for r in open_dataset(root).records if r.split == "test"]
    asked = [q.question for s in range(40) for g in image_groups(tests, s) for q in g.questions]
    assert len(set(asked)) > 100
    assert all(wording_of(q) == ("seen", None) for q in asked), [q for q in asked if not seen(q)][:3]


def test_no_held_out_template_is_a_training_wording():
    for seed in range(60):
        for f in (_finding("crack"), _finding(None), _finding("print", "center", reference=False)):
            for q in _held_out(f, seed):
                split, family = wording_of(q.question)
                assert split == "unseen" and family is not None, q.question
    assert not seen("Can this hazelnut be shipped as it is?") and seen("Can the test hazelnut be released as it is?")


def test_held_out_truths_follow_the_annotation():
    by_intent: dict[str, set] = {}
    for seed in range(80):
        for defect in ("crack", "print", None):
            f = _finding(defect)
            qs = _held_out(f, seed)
            assert [q.level for q in qs].count("standard") == 2 and [q.level for q in qs].count("diagnosis") == 1
            assert sorted(q.answer for q in qs[:2]) == [False, True]  # one of each polarity at the standard level
            for q in qs:
                family = wording_of(q.question)[1]
                by_intent.setdefault((family, defect), set()).add(q.answer)
                assert q.options[0].startswith("Yes." if q.answer else "No.")
                text = q.question.lower()
                if family == "location":
                    named = {cell for cell, words in PLACES.items() if any(w in text for w in words)}
                    assert q.answer == (defect is not None and "upper left" in named), q.question
                if family == "type":
                    own = defect is not None and any(w in text for w in SYNONYMS[defect])
                    assert q.answer == own, q.question
    assert by_intent[("presence", "crack")] == {True} and by_intent[("presence", None)] == {False}
    assert by_intent[("absence", "crack")] == {False} and by_intent[("absence", None)] == {True}
    assert by_intent[("consequence", "crack")] == {True}  # a crack can spread: functional
    assert by_intent[("consequence", "print")] == {False}  # a misprint is cosmetic
    assert by_intent[("ship", None)] == {True} and by_intent[("reject", "print")] == {True}
    assert by_intent[("location", "crack")] == {True, False} and by_intent[("type", "crack")] == {True, False}
    assert by_intent[("location", None)] == {False}


def test_a_defect_over_the_whole_grid_gets_no_place_question():
    f = Finding(obj=object_info("hazelnut"), defect=defect_info("crack"), location="center", area_frac=0.9,
                bbox=(0, 0, 300, 300), image_size=(300, 300), wrong=_finding("crack").wrong)
    for seed in range(20):
        assert all(wording_of(q.question)[1] != "location" for q in _held_out(f, seed))


def test_zero_shot_groups_never_ask_about_the_reference():
    for seed in range(30):
        assert all(wording_of(q.question)[1] != "same" for q in _held_out(_finding(None, reference=False), seed))


def test_both_keeps_the_seen_questions_as_they_were(make_tiny_mvtec):
    from sage_cli.data.formats import open_dataset

    rec = next(r for r in open_dataset(make_tiny_mvtec()).records if r.split == "test")
    seen_only, both = group_for(rec, ["scratch"], 3), group_for(rec, ["scratch"], 3, "both")
    assert [q.question for q in both.questions[:5]] == [q.question for q in seen_only.questions]
    assert [wording_of(q.question)[0] for q in both.questions] == ["seen"] * 5 + ["unseen"] * 5


def test_accuracy_by_wording_and_the_constant_baselines():
    def s(gid, question, truth, correct):
        return {"group_id": gid, "question": question, "truth": truth, "correct": correct, "level": "standard"}

    samples = [s("a", "Can the test hazelnut be released as it is?", True, True),
               s("a", "Can this hazelnut be shipped as it is?", True, False),
               s("b", "Is the damage near the top-left corner?", False, True),
               s("b", "Is the test hazelnut free of any crack?", False, True)]
    w = by_wording(samples)
    assert (w["seen"]["questions"], w["seen"]["accuracy"]) == (2, 1.0)
    assert (w["unseen"]["questions"], w["unseen"]["accuracy"]) == (2, 0.5)
    assert set(w["families"]) == {"ship", "location"} and w["families"]["ship"]["accuracy"] == 0.0
    b = baselines(samples)
    assert b["always_no"] == {"average": 0.5, "acc_g": 0.5} and b["always_yes"] == {"average": 0.5, "acc_g": 0.5}
    assert by_wording([{"group_id": "m", "question": "Which?", "truth": "B", "correct": True}]) is None


def test_bench_asks_the_held_out_families(make_tiny_mvtec, tmp_path, capsys, monkeypatch):
    from tiny_models import save_tiny_internvl

    monkeypatch.setenv("COLUMNS", "200")
    vlm = save_tiny_internvl(tmp_path / "vlm")
    root = make_tiny_mvtec()
    out = tmp_path / "run"
    assert run(["bench", "mvtec", "--root", str(root), "--backbone", str(vlm), "--out", str(out), "--wordings",
                "both", "--max-new-tokens", "2", "--no-sbert", "--no-plots"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["wordings"] == "both" and res["counts"]["questions"] == 30
    w = res["metrics"]["per_wording"]
    assert w["seen"]["questions"] == 15 and w["unseen"]["questions"] == 15 and "presence" in w["families"]
    assert set(res["metrics"]["baselines"]) == {"always_no", "always_yes"}
    assert "accuracy by wording" in printed and "held-out family: presence" in printed
    assert res["metrics"]["answers_question"]["all"]["n"] == 30 and "answers that carry it" in printed
    assert run(["bench", "compare", str(out), "--out", str(tmp_path / "cmp")]) == 0
    capsys.readouterr()
    head, row = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()
    cols = dict(zip(head.split(","), row.split(",")))
    assert float(cols["Unseen"]) == pytest.approx(100 * w["unseen"]["accuracy"], abs=0.05)
    always_no = res["metrics"]["baselines"]["always_no"]["average"]
    assert float(cols["Always No"]) == pytest.approx(100 * always_no, abs=0.05)
    rc = run(["bench", "mvtec", "--root", str(root), "--backbone", str(vlm), "--out", str(out), "--resume",
              "--max-new-tokens", "2", "--no-sbert", "--no-plots"])
    assert rc == 1 and "wordings" in capsys.readouterr().err  # a resumed run keeps its wordings


@pytest.mark.parametrize("args,message", [
    (["mvtec", "--wordings", "odd"], "--wordings must be seen, held-out or both"),
    (["manta", "--wordings", "held-out"], "bring their own questions"),
])
def test_bad_wordings_are_one_line(args, message, tmp_path, capsys):
    rc = run(["bench", args[0], "--root", str(tmp_path), *args[1:], "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1


def test_the_grader_reads_every_held_out_question_as_what_it_asks():
    """asks.ask sorts each held-out wording into its intent's kind (an asker's wrapper such as "Would you say"
    or "Can you spot" dropped; "take it out of the batch" a rejection), so a statement answer is read against
    the right question."""
    from sage_cli.bench.asks import ask

    kind = {"presence": "presence", "reject": "presence", "absence": "normal", "same": "normal", "ship": "normal",
            "location": "location", "type": "type", "consequence": "other"}
    for fam in FAMILIES:
        for t in fam.templates:
            q = t.format(obj="hazelnut", place="top-left corner", kind="fracture", kind_a="a fracture")
            assert ask(q).kind == kind[fam.intent], q
    assert ask("Should the PCB be sent back for re-soldering?").kind == "presence"
    assert ask("Would you say it could cause leakage?").kind == "other"  # the wrapper dropped, a consequence left


def test_the_grader_reads_every_training_question_with_its_truth():
    """Every standard and decision question a build writes (both polarities, many wordings, one- and
    zero-shot) is read by asks.ask with the polarity its truth has, so a statement is graded against the
    right question; function and cause questions are consequences whose yes is the bad outcome."""
    from sage_cli.bench.asks import ask

    for seed in range(150):
        for f in (_finding("crack"), _finding(None), _finding("print", "center", reference=False)):
            w = Writer(f, random.Random(seed))
            for q in w.standard() + [w.diagnosis()]:
                a = ask(q.question)
                if a.kind == "other":
                    assert not a.good and q.level == "diagnosis", q.question
                    continue
                assert a.polarity == (1 if q.answer == f.anomalous else -1), q.question
    for t in Writer._FUNCTION_Q:
        a = ask(t.format(asked="crack", obj="hazelnut"))
        assert a.kind == "other" and not a.good, t
    for q, kind in [("Does this part have a crack?", "type"), ("Would this part pass inspection?", "normal"),
                    ("Is it ready for delivery?", "normal"), ("Should it be sorted out?", "presence"),
                    ("Does the part fail inspection?", "presence"), ("Will it still work?", "other"),
                    ("Compared with a good screw, is there any defect?", "presence"), ("Is this a good screw?", "normal")]:
        assert ask(q).kind == kind, q
    assert ask("Will it still work?").good and not ask("Does the dent affect how it works?").good


def test_a_build_and_its_checkpoint_record_the_question_bank(make_tiny_mvtec, tmp_path):
    """prefs.json says which version of the training banks worded the questions, and a trained checkpoint
    carries it on (E-DPO pairs through the scored QA file, else the starting checkpoint)."""
    from types import SimpleNamespace

    from sage_cli.prefs.pipeline import PrefsOptions, build_prefs
    from sage_cli.prefs.wordings import TRAINING_WORDINGS
    from sage_cli.train.state import trained_wordings

    root = make_tiny_mvtec(defects={"crack": 2}, n_good=2)
    res = build_prefs(PrefsOptions(src=str(root), out=str(tmp_path / "prefs"), val_frac=0.0))
    assert res.manifest["wordings"] == TRAINING_WORDINGS
    recipe = lambda train, ckpt=None: SimpleNamespace(data=SimpleNamespace(train=train),  # noqa: E731
                                                      model=SimpleNamespace(checkpoint=ckpt))
    assert trained_wordings(recipe(str(res.paths["train"]))) == TRAINING_WORDINGS
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "score.json").write_text(json.dumps({"qa_file": str(res.paths["train"].resolve())}))
    assert trained_wordings(recipe(str(scores / "pairs.jsonl"))) == TRAINING_WORDINGS
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"wordings": "sage-wordings/1"}))
    assert trained_wordings(recipe(str(tmp_path / "elsewhere.jsonl"), str(ckpt))) == "sage-wordings/1"
    assert trained_wordings(recipe(None)) is None
