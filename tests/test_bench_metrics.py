"""The metrics of results.json on hand-checked examples."""

import pytest

from sage_cli.bench import metrics, report


def s(gid, q, level, correct, category="rice", **kw):
    return {"group_id": gid, "q": q, "level": level, "correct": correct, "category": category, **kw}


# g1: 5 questions, all right. g2: 5 questions, one wrong. g3: only 3 questions (a short record), all right.
SAMPLES = [
    s("g1", 0, "standard", True), s("g1", 1, "standard", True), s("g1", 2, "identification", True),
    s("g1", 3, "identification", True), s("g1", 4, "diagnosis", True),
    s("g2", 0, "standard", True), s("g2", 1, "standard", False), s("g2", 2, "identification", True),
    s("g2", 3, "identification", True), s("g2", 4, "diagnosis", True),
    s("g3", 0, "standard", True, category="wheat"), s("g3", 1, "diagnosis", True, category="wheat"),
    s("g3", 2, "diagnosis", True, category="wheat"),
]


def test_accuracy_per_level_and_average_by_hand():
    acc = metrics.accuracy(SAMPLES)
    assert acc["standard"] == pytest.approx(4 / 5)  # g1 2/2, g2 1/2, g3 1/1
    assert acc["identification"] == pytest.approx(1.0)
    assert acc["diagnosis"] == pytest.approx(1.0)
    assert acc["average"] == pytest.approx(12 / 13)  # question-weighted, not the mean of the levels
    assert metrics.accuracy([s("g", 0, "standard", False)])["diagnosis"] is None


def test_acc_g_counts_a_short_group_with_the_questions_it_has():
    # g1 right, g2 not (one wrong), g3 right with its 3 questions -> 2 of 3 groups
    assert metrics.acc_g(SAMPLES) == pytest.approx(2 / 3)
    # interleaved lines still form records, not runs of five
    assert metrics.acc_g(list(reversed(SAMPLES))) == pytest.approx(2 / 3)
    assert metrics.acc_g([]) is None


def test_auroc_with_ties_by_hand():
    # positives 0.9, 0.5, 0.5; negatives 0.5, 0.1.
    # pairs (pos > neg): 0.9>0.5, 0.9>0.1, 0.5>0.1, 0.5>0.1 = 4 wins; 0.5 vs 0.5 twice = 2 ties -> 4 + 1 = 5 of 6
    assert metrics.auroc([True, True, True, False, False], [0.9, 0.5, 0.5, 0.5, 0.1]) == pytest.approx(5 / 6)
    assert metrics.auroc([True, False], [0.2, 0.2]) == pytest.approx(0.5)
    assert metrics.auroc([True, False, True], [0.8, 0.1, 0.6]) == pytest.approx(1.0)
    assert metrics.auroc([False, True], [0.8, 0.1]) == pytest.approx(0.0)
    assert metrics.auroc([True, True], [0.3, 0.4]) is None  # one class only
    assert metrics.auroc([], []) is None


def test_detection_auroc_reads_only_labelled_samples():
    rows = [s("a", 0, "standard", True, detect_label=True, detect_score=0.8), s("a", 1, "standard", True),
            s("b", 0, "standard", True, detect_label=False, detect_score=0.3)]
    assert metrics.detection_auroc(rows) == (1.0, 2)


def test_map_auroc_scores_the_map_peak():
    rows = [s("a", 0, "standard", True, detect_label=True, map_max=0.9),
            s("b", 0, "standard", True, detect_label=False, map_max=0.95),
            s("c", 0, "standard", True, detect_label=True, map_max=0.97), s("c", 1, "standard", True)]
    assert metrics.map_auroc(rows) == pytest.approx(0.5)  # one of the two defects ranks above the normal
    assert metrics.map_auroc(rows[:1]) is None


def test_per_category_sbert_mle_and_summary():
    rows = SAMPLES + [s("g4", 0, "standard", False, category="wheat", sbert=0.5, mle={"type": 2, "location": 4,
                                                                                      "logic": 3, "mle": 3.0})]
    rows[0] = {**rows[0], "sbert": 0.7}
    rows[1] = {**rows[1], "mle": {"failed": "malformed reply"}}
    per = metrics.by_key(rows, "category")
    assert per["rice"] == {"accuracy": pytest.approx(9 / 10), "acc_g": 0.5, "questions": 10, "groups": 2}
    assert per["wheat"]["groups"] == 2 and per["wheat"]["acc_g"] == 0.5
    assert metrics.sbert_mean(rows) == pytest.approx(0.6)
    assert metrics.mle_means(rows) == {"type": 2, "location": 4, "logic": 3, "score": 3.0, "answers": 1, "failed": 1}
    assert metrics.mle_means(SAMPLES) is None
    summary = metrics.summarize(rows, with_types=True)
    assert set(summary) == {"accuracy", "acc_g", "sbert", "mle", "auroc", "auroc_groups", "auroc_map",
                            "auroc_map_groups", "detection", "per_category", "per_wording", "baselines",
                            "answers_question", "guided", "mmad_per_type"}
    assert summary["auroc"] is None and summary["guided"] is None  # no answer was guided


def test_report_cells_like_the_papers_tables():
    res = {"metrics": {"accuracy": {"standard": 0.706, "identification": 0.657, "diagnosis": None, "average": 0.696},
                       "acc_g": 0.1732, "sbert": 0.7012, "auroc": None, "auroc_map": 0.8125, "mle": None}}
    assert report.cells(res) == ["70.6", "65.7", "-", "69.6", "17.3", "0.70", "-", "0.812"]
    res["metrics"]["auroc_map_groups"] = 12
    assert report.cells(res)[-1] == "0.812 (n=12)"  # every AUROC is printed with its n
    assert report.cells(res, with_n=False)[-1] == "0.812"
    md = report.to_markdown(["run-a"], [res])
    assert md.splitlines()[0].startswith("| Run | Protocol | Standard |") and "| run-a | sage | 70.6 |" in md
    assert report.to_csv(["run-a"], [res]).splitlines()[1].startswith("run-a,")


def _mmad(image, qtype, correct, verdict="A"):
    return {"group_id": image, "type": qtype, "correct": correct, "verdict": verdict}


def test_mmad_summary_as_the_official_script():
    """Hand-computed: MVTec-AD: Anomaly Detection balanced over normal (1/2 right) and abnormal (2/2)
    = 75; Object Structure + Object Details merged into Object Analysis 2/3 = 66.7; Defect Type 0/1 = 0
    (the unreadable answer is dropped, not wrong); set average (75 + 66.7 + 0) / 3 = 47.2. VisA: Anomaly
    Detection abnormal only (1/1; normal 0 of 0 counts 0) = 50; average 50. Overall (47.2 + 50) / 2."""
    rows = [
        _mmad("MVTec-AD/bottle/test/good/000.png", "Anomaly Detection", True),
        _mmad("MVTec-AD/bottle/test/good/001.png", "Anomaly Detection", False),
        _mmad("MVTec-AD/bottle/test/broken/000.png", "Anomaly Detection", True),
        _mmad("MVTec-AD/bottle/test/broken/001.png", "Anomaly Detection", True),
        _mmad("MVTec-AD/bottle/test/broken/000.png", "Object Structure", True),
        _mmad("MVTec-AD/bottle/test/broken/001.png", "Object Details", False),
        _mmad("MVTec-AD/bottle/test/broken/001.png", "Object Structure", True),
        _mmad("MVTec-AD/bottle/test/broken/000.png", "Defect Classification", False),
        _mmad("MVTec-AD/bottle/test/broken/001.png", "Defect Classification", False, verdict=None),
        _mmad("VisA/pcb1/test/bad/000.png", "Anomaly Detection", True),
    ]
    mm = metrics.mmad_summary(rows)
    mv = mm["per_dataset"]["MVTec-AD"]
    assert mv["Anomaly Detection"] == pytest.approx(75.0)
    assert mv["Object Analysis"] == pytest.approx(200 / 3)
    assert "Object Structure" not in mv and mv["Defect Classification"] == 0.0
    assert mv["Average"] == pytest.approx((75 + 200 / 3 + 0) / 3)
    assert mm["per_dataset"]["VisA"] == {"Anomaly Detection": 50.0, "Average": 50.0}
    assert mm["average"] == pytest.approx(((75 + 200 / 3) / 3 + 50) / 2)
    assert mm["dropped_unreadable"] == 1
    assert metrics.summarize(rows, protocol="mmad")["mmad"] == mm
    assert "mmad" not in metrics.summarize(rows)


def test_detection_block_has_f1_max_and_label_sources():
    rows = [{"group_id": str(i), "correct": True, "detect_label": lab, "detect_score": sc, "map_max": mp,
             "label_source": src} for i, (lab, sc, mp, src) in enumerate(
        [(True, 0.9, 0.8, "annotation"), (True, 0.4, 0.7, "conclusion"), (False, 0.2, 0.1, "question:0"),
         (False, 0.6, 0.2, "annotation")])]
    det = metrics.detection(rows)
    assert det["p_yes"]["auroc"] == pytest.approx(0.75) and det["p_yes"]["n"] == 4
    assert det["p_yes"]["f1_max"] == pytest.approx(0.8) and det["p_yes"]["f1_threshold"] == pytest.approx(0.4)
    assert det["map"]["auroc"] == 1.0 and det["map"]["f1_max"] == 1.0
    assert det["label_sources"] == {"annotation": 2, "conclusion": 1, "question": 1}
