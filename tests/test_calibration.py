"""`sage calibrate CKPT --on VAL`: a logistic P(defect) from P(yes) and the anomaly map, fitted on synthetic
validation pairs only, stored in the checkpoint's config and reported by infer and bench.

Fast tests use a tiny random VLM on real-photo and generated synthetic pairs; the slow ones run the
shipped sage-smol (its stored calibration on the bundled pair, and a fit of its own on a small set).
"""

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from sage_cli.bench.verdict import contradicts
from sage_cli.cli import run
from sage_cli.errors import SageError
from sage_cli.models import calibration as cal
from sage_cli.models import checkpoint
from sage_cli.models.engine import Engine
from tiny_models import save_tiny_internvl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PHOTOS = checkpoint.shipped_dir().parent / "hazelnut_sample" / "hazelnut" / "train" / "good"
PAIR = checkpoint.shipped_dir().parent / "hazelnut_pair"
QUESTION = "Is there any defect on the test object?"


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return save_tiny_internvl(tmp_path_factory.mktemp("internvl"))


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_vlm, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "ckpt"
    return checkpoint.save(Engine.load(str(tiny_vlm)).model, out, backbone=str(tiny_vlm))


@pytest.fixture(scope="module")
def val(tmp_path_factory):
    """A small synthetic VAL: generated washers and two real hazelnut train photos (never a test photo, never
    the bundled pair's reference 00.jpg), with stains and holes drawn on them by `sage data synth`."""
    tmp = tmp_path_factory.mktemp("val")
    assert run(["data", "normals", "--out", str(tmp / "normals"), "--categories", "washer", "--count", "3",
                "--test-count", "2", "--image-size", "64"]) == 0
    src = tmp / "src"
    shutil.copytree(tmp / "normals" / "washer", src / "washer")
    (src / "hazelnut" / "train" / "good").mkdir(parents=True)
    (src / "hazelnut" / "test" / "good").mkdir(parents=True)
    shutil.copy(PHOTOS / "01.jpg", src / "hazelnut" / "train" / "good" / "01.jpg")
    shutil.copy(PHOTOS / "02.jpg", src / "hazelnut" / "test" / "good" / "02.jpg")
    assert run(["data", "synth", "--from", str(src), "--out", str(tmp / "val"), "--kinds", "stain,hole",
                "--image-size", "64", "--size", "large", "--seed", "3"]) == 0
    return tmp / "val"


# ---------------------------------------------------------------------------------------------- the math


def test_fit_recovers_a_known_logistic_line():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0], dtype=torch.float64)
    p = torch.sigmoid(1.5 * x[:, 0] - 0.5 * x[:, 1] + 0.3)
    y = (torch.rand(4000, generator=g, dtype=torch.float64) < p).tolist()
    w, b = cal.fit(x.tolist(), y, l2=0.0, balanced=False)
    assert w == pytest.approx([1.5, -0.5], abs=0.12) and b == pytest.approx(0.3, abs=0.12)
    with pytest.raises(ValueError, match="both classes"):
        cal.fit([[0.0], [1.0]], [True, True])


def test_balanced_fit_ignores_how_many_defects_val_has():
    # the same two clouds, one with ten times more defects: the balanced line stays where it was
    normal, defect = [[-1.0 + 0.1 * i] for i in range(10)], [[1.0 - 0.1 * i] for i in range(10)]
    w1, b1 = cal.fit(normal + defect, [False] * 10 + [True] * 10)
    w2, b2 = cal.fit(normal + defect * 10, [False] * 10 + [True] * 100)
    assert -b1 / w1[0] == pytest.approx(-b2 / w2[0], abs=1e-6)  # the 0.5 point


def test_apply_reads_p_yes_and_the_map():
    c = {"format": cal.FORMAT, "features": ["logit_p_yes", "log_map_max"], "weights": [1.0, 2.0],
         "bias": 0.5, "threshold": 0.5, "question": QUESTION}
    p, defective = cal.apply(c, 0.7, {"max": 0.1, "mean": 0.01})
    z = math.log(0.7 / 0.3) + 2 * math.log(0.1) + 0.5
    assert p == pytest.approx(1 / (1 + math.exp(-z))) and defective is (p >= 0.5)
    assert cal.apply(None, 0.7, {"max": 0.1, "mean": 0.01}) == (None, None)  # uncalibrated
    assert cal.apply(c, 0.7, None) == (None, None)  # zero-shot: no map
    assert cal.apply(c, None, {"max": 0.1, "mean": 0.01}) == (None, None)  # no yes/no tokens
    assert cal.apply({**c, "threshold": 0.01}, 0.7, {"max": 0.1, "mean": 0.01})[1] is True
    top = {**c, "features": ["log_map_top4"], "weights": [1.0]}
    assert cal.apply(top, 0.5, {"max": 0.4, "mean": 0.1}) == (None, None)  # needs the whole map
    p4, _ = cal.apply(top, 0.5, {"max": 0.4, "mean": 0.1, "map": [[0.4, 0.2], [0.1, 0.1]]})
    assert p4 == pytest.approx(1 / (1 + math.exp(-(math.log(0.2) + 0.5))))
    with pytest.raises(SageError, match="unknown feature"):
        cal.check({**c, "features": ["nope", "log_map_max"]})


# ---------------------------------------------------------------------------------------------- the key


def test_the_stored_key_round_trips_in_place_and_in_a_copy(tiny_ckpt, tmp_path):
    src = Path(shutil.copytree(tiny_ckpt, tmp_path / "ckpt"))
    before = checkpoint.read_config(src)
    c = {"format": cal.FORMAT, "features": ["log_map_max"], "weights": [2.0], "bias": 1.0, "threshold": 0.5}
    assert checkpoint.read_calibration(src) is None
    copy = checkpoint.write_calibration(src, c, tmp_path / "calibrated")
    assert checkpoint.read_calibration(copy) == c and checkpoint.read_calibration(src) is None
    assert {k: v for k, v in checkpoint.read_config(copy).items() if k != "calibration"} == before
    assert (copy / checkpoint.WEIGHTS).read_bytes() == (src / checkpoint.WEIGHTS).read_bytes()
    assert checkpoint.write_calibration(src, {**c, "bias": 2.0}) == src  # in place
    assert checkpoint.read_calibration(src)["bias"] == 2.0
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in tiny_ckpt.iterdir())  # no temp files
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(SageError, match="not a checkpoint"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "x.txt").write_text("x")
        checkpoint.write_calibration(src, c, tmp_path / "other")
    with pytest.raises(SageError, match="inside the checkpoint"):
        checkpoint.write_calibration(src, c, src / "sub")


def test_val_pairs_never_use_the_image_a_defect_was_drawn_on(val):
    pairs, fmt, _ = cal.labelled_pairs(val)
    sources = cal._synth_sources(val)
    assert fmt == "mvtec" and sources
    for p in pairs:
        rel = p.test.relative_to(val).as_posix()
        if rel in sources:
            assert p.reference.relative_to(val).as_posix() != sources[rel]
    limited, _, _ = cal.labelled_pairs(val, limit=1)
    assert len(limited) == 4 and sum(p.defective for p in limited) == 2  # 1 normal + 1 defect per category


# ---------------------------------------------------------------------------------------------- the command


def test_calibrate_stores_the_fit_and_infer_reports_it(tiny_ckpt, val, tmp_path, capsys):
    out = tmp_path / "calibrated"
    rc = run(["calibrate", str(tiny_ckpt), "--on", str(val), "--out", str(out), "--limit", "3", "--rows",
              str(tmp_path / "rows.jsonl")])
    text = capsys.readouterr().out
    assert rc == 0 and "calibrated" in text and "P(defect) = sigmoid(" in text and "on VAL: AUROC" in text
    c = checkpoint.read_calibration(out)
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {"p_yes", "map_max", "map_mean", "features", "defective", "category"} <= set(rows[0])
    w, b = cal.fit([r["features"] for r in rows], [r["defective"] for r in rows])  # refit from the rows alone
    assert w == pytest.approx(c["weights"]) and b == pytest.approx(c["bias"])
    assert c["format"] == cal.FORMAT and c["features"] == list(cal.DEFAULT_FEATURES) and len(c["weights"]) == 2
    assert c["val"]["name"] == "val" and c["val"]["pairs"] == 8 and c["val"]["normal"] == 3
    assert set(c["val"]["categories"]) == {"hazelnut", "washer"} and c["threshold"] == 0.5 and c["date"]
    m = c["metrics"]
    assert {"auroc_p_yes", "auroc_map_max", "auroc_calibrated", "raw_at_0.5", "at_threshold",
            "leave_one_category_out"} <= set(m)
    assert checkpoint.read_calibration(tiny_ckpt) is None  # --out: the source is untouched
    # infer: the calibrated P(defect) beside the raw P(yes), per answer to the calibration's question
    test, ref = val / "washer" / "test" / "hole" / "000.png", val / "washer" / "train" / "good" / "000.png"
    args = ["infer", str(test), str(ref), "--checkpoint", str(out), "--max-new-tokens", "2"]
    assert run(args + ["--json", "-q", QUESTION, "-q", "Where is it?"]) == 0
    rep = json.loads(capsys.readouterr().out)
    d = rep["detection"]
    assert d["question"] == QUESTION and 0.0 <= d["p_defect"] <= 1.0 and d["verdict"] in ("defect", "normal")
    assert d["p_yes"] == rep["answers"][0]["p_yes"]  # the raw P(yes) is kept as it is
    want, _ = cal.apply(c, d["p_yes"], rep["anomaly"])
    assert d["p_defect"] == pytest.approx(want)
    assert rep["answers"][0]["p_defect"] == d["p_defect"] and "p_defect" not in rep["answers"][1]
    assert d["calibration"]["val"] == "val" and d["calibration"]["pairs"] == 8
    assert run(args + ["--json", "-q", "Where is it?"]) == 0  # not asked: read once more, same figure
    assert json.loads(capsys.readouterr().out)["detection"]["p_defect"] == pytest.approx(d["p_defect"], abs=1e-5)
    assert run(args) == 0
    assert f"detection: P(defect) {d['p_defect']:.2f} -> {d['verdict']}" in capsys.readouterr().out
    assert run(["infer", str(test), "--checkpoint", str(out), "--max-new-tokens", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["detection"] is None  # zero-shot: no map, no calibrated verdict
    # guided (the default): the detection's verdict starts the answers whose yes/no it gives, in their polarity
    engine = Engine.load(None, str(out))
    yes, no = set(engine.yes_ids), set(engine.no_ids)
    free = "Is the test object free of defects?"
    for extra, guided in (([], True), (["--no-guided"], False)):
        assert run(args + ["--json", "-q", QUESTION, "-q", free, "-q", "Where is it?"] + extra) == 0
        rep = json.loads(capsys.readouterr().out)
        assert [a["guided"] for a in rep["answers"]] == [guided, guided, False]
        assert [a["contradicted"] for a in rep["answers"]] == [
            guided and contradicts(a["answer"], a["question"]) for a in rep["answers"]]
        if guided:
            defect = rep["detection"]["verdict"] == "defect"
            firsts = [engine.model.backbone.tokenizer(a["answer"], add_special_tokens=False)["input_ids"][0]
                      for a in rep["answers"][:2]]
            assert firsts[0] in (yes if defect else no) and firsts[1] in (no if defect else yes), rep["answers"]


def test_bench_reports_the_calibrated_auroc_and_accuracy(tiny_ckpt, val, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich would wrap the table's labels on an 80-column page
    out = tmp_path / "calibrated"
    assert run(["calibrate", str(tiny_ckpt), "--on", str(val), "--out", str(out), "--limit", "2"]) == 0
    capsys.readouterr()
    rc = run(["bench", "mvtec", "--root", str(val), "--checkpoint", str(out), "--limit", "2", "--no-sbert",
              "--no-plots", "--max-new-tokens", "2", "--out", str(tmp_path / "run"),
              "--detect-question", QUESTION])
    printed = capsys.readouterr()
    err = printed.err
    assert rc == 0, err
    assert "P(defect), calibrated" in printed.out  # its row in the detection table
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    m = res["metrics"]
    assert m["calibrated"]["n"] == m["auroc_groups"] > 0 and "p_defect" in m["detection"]
    assert 0.0 <= m["calibrated"]["accuracy"] <= 1.0 and res["calibration"]["val"] == "val"
    assert "calibrated P(defect)" in err and "accuracy at the stored threshold" in err
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    scored = [s for s in samples if "p_defect" in s]
    assert scored and all(s["defect_verdict"] == (s["p_defect"] >= 0.5) for s in scored)
    # guided (the default, recorded): the standard questions' answers start with the detection's word
    assert res["config"]["guided"] is True
    guided = [s for s in samples if s.get("guided")]
    assert guided and all(s["level"] != "standard" or s.get("guided") for s in samples)
    assert all(s["contradicted"] == contradicts(s["answer"], s["question"]) for s in guided)
    g = m["guided"]
    assert g["answers"] == len(guided) and g["contradicted"] == sum(s["contradicted"] for s in guided)
    assert f"guided: the first word of {len(guided)} answer(s)" in err
    # a kept run of the other setting is not resumed with this one
    rc = run(["bench", "mvtec", "--root", str(val), "--checkpoint", str(out), "--limit", "2", "--no-sbert",
              "--no-plots", "--max-new-tokens", "2", "--out", str(tmp_path / "run"), "--detect-question", QUESTION,
              "--resume", "--no-guided"])
    assert rc == 1 and "guided" in capsys.readouterr().err


def test_serve_guides_the_answers_it_can(tiny_ckpt, val, tmp_path, capsys):
    """`sage serve` over a calibrated checkpoint: a detection question's answer starts with the calibrated
    verdict's word and says "guided"; a question the guide leaves alone does not; --no-guided, none."""
    from PIL import Image

    from test_serve import Running, _ask

    out = tmp_path / "calibrated"
    assert run(["calibrate", str(tiny_ckpt), "--on", str(val), "--out", str(out), "--limit", "2"]) == 0
    capsys.readouterr()
    engine = Engine.load(None, str(out))
    test = Image.open(val / "washer" / "test" / "hole" / "000.png")
    ref = Image.open(val / "washer" / "train" / "good" / "000.png")
    want = cal.detect(engine, checkpoint.read_calibration(out), engine.encode(test, ref))["verdict"] == "defect"
    for guided in (True, False):
        srv = Running(engine, guided=guided)
        try:
            for q, guides in ((QUESTION, guided), ("Where is it?", False)):
                r = srv.client().chat.completions.create(model="tiny", messages=_ask(q, test, ref), max_tokens=3)
                sage, text = r.model_extra["sage"], r.choices[0].message.content
                assert sage["guided"] is guides, (q, sage)
                assert sage["contradicted"] is (guides and contradicts(text, q)), (q, text, sage)
                if guides:
                    first = engine.model.backbone.tokenizer(text, add_special_tokens=False)["input_ids"][0]
                    assert first in (engine.yes_ids if want else engine.no_ids), text
        finally:
            srv.close()


def test_zero_shot_calibration_serves_pairs_without_a_reference(tiny_ckpt, val, tmp_path, capsys):
    """--shots 0: P(yes) of the test image alone, stored apart; infer and bench without a reference use it
    (and guide with it), with a reference they use the one-shot fit (here none)."""
    out = tmp_path / "zero"
    assert run(["calibrate", str(tiny_ckpt), "--on", str(val), "--out", str(out), "--limit", "2", "--shots", "0",
                "--rows", str(tmp_path / "rows.jsonl")]) == 0
    assert "zero-shot (no reference)" in capsys.readouterr().out
    c = checkpoint.read_calibration(out, zero_shot=True)
    assert checkpoint.read_calibration(out) is None
    assert c["shots"] == 0 and c["features"] == ["logit_p_yes"] and c["metrics"]["auroc_map_max"] is None
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert all(r["map_max"] is None for r in rows)
    test, ref = val / "washer" / "test" / "hole" / "000.png", val / "washer" / "train" / "good" / "000.png"
    assert run(["infer", str(test), "--checkpoint", str(out), "--max-new-tokens", "2", "--json", "-q", QUESTION]) == 0
    rep = json.loads(capsys.readouterr().out)
    d = rep["detection"]
    assert d["p_defect"] == pytest.approx(cal.apply(c, rep["answers"][0]["p_yes"], None)[0])
    assert rep["answers"][0]["guided"] and d["calibration"]["val"] == "val"
    assert run(["infer", str(test), str(ref), "--checkpoint", str(out), "--max-new-tokens", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["detection"] is None  # one-shot: no fit for maps
    rc = run(["bench", "mvtec", "--root", str(val), "--checkpoint", str(out), "--limit", "1", "--no-sbert",
              "--no-plots", "--max-new-tokens", "2", "--out", str(tmp_path / "run"), "--shots", "0"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert res["config"]["guided"] and any("p_defect" in s for s in samples)
    assert all(s.get("guided") for s in samples if s["level"] == "standard")
    assert run(["calibrate", str(tiny_ckpt), "--on", str(val), "--out", str(tmp_path / "bad"), "--shots", "0",
                "--features", "log_map_max"]) == 1
    err = capsys.readouterr().err
    assert "no anomaly map" in err and err.count("\n") == 1 and not (tmp_path / "bad").exists()


def test_shots_fit_maps_with_that_many_references(tiny_ckpt, val, tmp_path, capsys):
    """--shots 2: each pair gets a second normal reference drawn as bench --shots draws them, the fit is
    stored with "shots": 2, and infer with one reference says its map is of another kind."""
    washers = tmp_path / "washers"
    shutil.copytree(val / "washer", washers / "washer")
    shutil.copy(val / "synth.jsonl", washers / "synth.jsonl")  # keeps the defects' sources out of the references
    pairs, _, _ = cal.labelled_pairs(washers, shots=2)
    sources = cal._synth_sources(washers)  # defect image -> the normal image it was drawn on
    for p in pairs:
        own = sources.get(p.test.relative_to(washers).as_posix())
        assert len(set(p.references)) == 2 and p.test not in p.references
        assert own is None or washers / own not in p.references
    assert [p.more for p in pairs] == [p.more for p in cal.labelled_pairs(washers, shots=2)[0]]  # seeded
    out, rows = tmp_path / "two", tmp_path / "rows.jsonl"
    assert run(["calibrate", str(tiny_ckpt), "--on", str(washers), "--out", str(out), "--shots", "2", "--rows",
                str(rows)]) == 0
    assert "2 references each" in capsys.readouterr().out
    assert checkpoint.read_calibration(out)["shots"] == 2
    assert all(len(json.loads(line)["more_references"]) == 1 for line in rows.read_text().splitlines())
    test, ref = washers / "washer" / "test" / "hole" / "000.png", washers / "washer" / "train" / "good" / "000.png"
    assert run(["infer", str(test), str(ref), "--checkpoint", str(out), "--max-new-tokens", "2"]) == 0
    assert "fitted on 2-reference maps, this one has 1" in capsys.readouterr().out
    assert run(["calibrate", str(tiny_ckpt), "--on", str(val), "--out", str(tmp_path / "three"), "--shots", "3"]) == 1
    err = capsys.readouterr().err
    assert "find fewer than 3 normal references" in err and not (tmp_path / "three").exists()


def test_features_auto_keeps_the_best_held_out_combination(tiny_ckpt, val, tmp_path, capsys):
    """--features auto: every feature measured once, each of the 15 combinations fitted with each category
    held out in turn, and the one with the best held-out balanced accuracy stored (and refittable from the
    rows it writes)."""
    out, rows_path = tmp_path / "auto", tmp_path / "rows.jsonl"
    rc = run(["calibrate", str(tiny_ckpt), "--on", str(val), "--out", str(out), "--features", "auto", "--rows",
              str(rows_path)])
    text = capsys.readouterr().out
    assert rc == 0 and "features chosen by leave-one-category-out" in text
    c = checkpoint.read_calibration(out)
    tried = c["features_chosen"]["tried"]
    assert len(tried) == 2 ** len(cal.FEATURES) - 1 and "+".join(c["features"]) in tried
    best = max(v["balanced_accuracy"] for v in tried.values())
    assert tried["+".join(c["features"])]["balanced_accuracy"] == best
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert rows[0]["feature_names"] == c["features"] and len(rows[0]["features"]) == len(c["features"])
    w, b = cal.fit([r["features"] for r in rows], [r["defective"] for r in rows])
    assert w == pytest.approx(c["weights"]) and b == pytest.approx(c["bias"])
    # one category: nothing to hold out, refused in one line before the model loads, nothing written
    washers = tmp_path / "washers"
    shutil.copytree(val / "washer", washers / "washer")
    assert run(["calibrate", str(tiny_ckpt), "--on", str(washers), "--out", str(tmp_path / "one"), "--features",
                "auto"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--features auto needs two categories" in err and err.count("\n") == 1
    assert not (tmp_path / "one").exists()


@pytest.mark.parametrize("case, match", [
    ("shots", "--shots must be 0 (zero-shot) or more"),
    ("no_pairs", "no labelled one-shot pairs"),
    ("one_class", "all 1 labelled pairs are normal"),
    ("no_ckpt", "checkpoint directory not found"),
    ("no_val", "no such file or directory"),
    ("feature", "unknown feature 'nope'"),
    ("threshold", "--threshold must be between 0 and 1"),
])
def test_bad_inputs_are_one_line(case, match, tiny_ckpt, tmp_path, capsys):
    from conftest import write_image

    val = tmp_path / "val"
    write_image(val / "widget" / "train" / "good" / "000.png")  # train images only: nothing labelled to test
    args = ["calibrate", str(tiny_ckpt), "--on", str(val), "--out", str(tmp_path / "out")]
    if case == "one_class":
        write_image(val / "widget" / "test" / "good" / "000.png")
    elif case == "no_ckpt":
        args[1] = str(tmp_path / "nowhere")
    elif case == "no_val":
        args[3] = str(tmp_path / "novalset")
    elif case == "feature":
        args += ["--features", "nope"]
    elif case == "threshold":
        args += ["--threshold", "1.5"]
    elif case == "shots":
        args += ["--shots", "-1"]
    assert run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- sage-smol


@pytest.mark.slow
def test_the_shipped_model_fits_on_a_small_synthetic_set(val, tmp_path, capsys):
    out = tmp_path / "smol"
    assert run(["calibrate", "sage-smol", "--on", str(val), "--out", str(out), "--limit", "2", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert c == checkpoint.read_calibration(out) and c["val"]["pairs"] == 7
    assert (out / "facts.txt").is_file() and (out / "MODEL_CARD.md").is_file()  # a whole checkpoint copy


shipped_calibration = checkpoint.read_calibration(checkpoint.shipped_dir()) if (
    checkpoint.shipped_dir() / checkpoint.CONFIG).is_file() else None


@pytest.mark.slow
@pytest.mark.skipif(shipped_calibration is None, reason="the shipped sage-smol carries no calibration")
def test_make_infer_bundled_pair_under_the_shipped_calibration(capsys):
    """`make infer`'s crack and the bundled normal photo under the calibration shipped in sage-smol's config
    (fitted on synthetic pairs only, features chosen by leave-one-category-out: recipes/release/sage-smol.sh
    calibrate). The raw P(yes) reaches issue #22's line (0.913 / 0.014); the calibrated P(defect), the map's
    peak alone as the fit chose, is 0.787 / 0.288: the normal photo misses "<= 0.2" by 0.088. Pinned: both
    verdicts right at the stored threshold, with the figures the card reports, to within machine noise.
    Guided (the default), that verdict starts the answer to a wording no training build uses, in its
    polarity ("in perfect condition?": no on the crack, yes on the normal photo)."""
    got, perfect = {}, "Is this hazelnut in perfect condition?"
    for name in ("crack", "good"):
        assert run(["infer", str(PAIR / f"{name}.jpg"), str(PAIR / "reference.jpg"), "-q", QUESTION, "-q", perfect,
                    "--json", "--max-new-tokens", "8"]) == 0
        rep = json.loads(capsys.readouterr().out)
        got[name] = rep["detection"]
        first = rep["answers"][1]["answer"].split()[0].strip(".,").lower()
        assert rep["answers"][1]["guided"] and first == ("no" if name == "crack" else "yes"), rep["answers"]
    assert got["crack"]["verdict"] == "defect" and got["good"]["verdict"] == "normal", got
    assert got["crack"]["p_defect"] == pytest.approx(0.787, abs=0.02), got
    assert got["good"]["p_defect"] == pytest.approx(0.288, abs=0.02), got
    assert got["crack"]["p_yes"] >= 0.8 and got["good"]["p_yes"] <= 0.2, got  # the raw P(yes), unchanged
    assert run(["infer", str(PAIR / "good.jpg"), str(PAIR / "reference.jpg"), "-q", perfect, "--json",
                "--max-new-tokens", "2", "--no-guided"]) == 0
    assert not json.loads(capsys.readouterr().out)["answers"][0]["guided"]
    c = shipped_calibration
    assert "hazelnut_pair" not in c["val"]["path"] and "test" not in Path(c["val"]["path"]).name


@pytest.mark.skipif(shipped_calibration is None, reason="the shipped sage-smol carries no calibration")
def test_the_shipped_calibrations_never_saw_a_held_out_category():
    """The card's held-out rows are categories no step of the recipe fits on: not training, and not the
    calibrations either (a threshold fitted on other images of a held-out category flatters its bench)."""
    recipe = (Path(__file__).parent.parent / "recipes" / "release" / "sage-smol.sh").read_text(encoding="utf-8")
    held_out = set(re.search(r"^HELD_OUT=\$\{HELD_OUT:-([^}]*)\}", recipe, re.M).group(1).split())
    assert held_out == {"ceramic_tile", "washer", "grass"}
    for zero_shot in (False, True):
        c = checkpoint.read_calibration(checkpoint.shipped_dir(), zero_shot=zero_shot)
        seen = set(c["val"]["categories"])
        assert seen and not seen & held_out, (zero_shot, seen)
