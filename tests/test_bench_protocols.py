"""`sage bench --protocol` and `--grader` end to end on the tiny VLM, every group labelled for detection,
samples.csv, and the anomaly-detection metrics on the real hazelnut photos."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import make_tiny_manta, manta_record
from openai_server import FakeOpenAI, Reply
from test_bench_run import FAST, lines, sage, vlm  # noqa: F401  (the fixture)

from sage_cli.bench import grading


def test_paper_rule_is_the_authors_starts_with():
    assert grading.paper_yes("True. There is a crack.") and grading.paper_yes("  Yes")
    assert grading.paper_yes("Yesterday's part")  # exactly their rule: a prefix, not a word
    assert not grading.paper_yes("There is a crack, so true.") and not grading.paper_yes("")
    assert grading.prompt("Is it cracked?", "paper") == "Is it cracked? Answer with True or False and provide a reason."
    assert grading.prompt("Is it cracked?", "sage") == "Is it cracked?"
    assert grading.grade_yes_no("No defect here.", "Is there a defect?", "paper", "text", 0.9) == (False, "paper")


def test_protocols_resolve_per_format():
    assert grading.resolve_protocol(None, "manta") == "sage" and grading.resolve_protocol(None, "mmad") == "mmad"
    assert grading.resolve_protocol("paper", "mvtec") == "paper"


def _manta(tmp_path):
    """Four groups whose first questions do not ask about defects in so many words; labels come from the
    conclusions (two defective, one normal) and a presupposing question (defective)."""
    qa = manta_record()["question_answer"]
    recs = [
        manta_record(conclusion_en="The test kernel shows a dark spot near the tip."),
        manta_record(conclusion_en="The test kernel is normal and identical to the reference."),
        manta_record(test_image="rice/test_002.png", conclusion_en="A crack runs across the test kernel."),
        manta_record(conclusion_en="", question_answer=[{**qa[0], "question_en": "Is the crack on the left?",
                                                          "answer": True}] + qa[1:]),
    ]
    return make_tiny_manta(tmp_path / "manta", recs)


def test_every_manta_group_is_labelled_and_scored(vlm, tmp_path, capsys):  # noqa: F811
    root, out = _manta(tmp_path), tmp_path / "run"
    rc, stdout, err = sage(capsys, "manta", "--root", root, "--backbone", vlm, "--out", out, "--no-plots", *FAST)
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"] == "sage" and res["grader"] == "text"
    assert res["metrics"]["auroc_groups"] == res["counts"]["groups"] == 4  # n = every group
    assert "(n=4)" in stdout
    det = [json.loads(s) for s in lines(out / "samples.jsonl") if "detect_label" in json.loads(s)]
    assert [d["detect_label"] for d in det] == [True, False, True, True]
    assert [d["label_source"] for d in det] == ["conclusion", "conclusion", "conclusion", "presupposition:0"]
    assert all(d["detect_question"] == "Is there any defect on the test object?" for d in det)
    assert res["metrics"]["detection"]["p_yes"]["n"] == 4 and res["metrics"]["detection"]["map"]["n"] == 4
    rows = list(csv.DictReader((out / "samples.csv").open()))  # the spreadsheet copy of samples.jsonl
    assert len(rows) == 20 and rows[0]["verdict_source"] and rows[0]["label_source"] == "conclusion"


def test_paper_protocol_asks_with_the_suffix_and_compare_says_so(vlm, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("COLUMNS", "250")  # rich would shorten the cells on an 80-column page
    root = _manta(tmp_path)
    runs = {p: tmp_path / p for p in ("sage", "paper")}
    for protocol, out in runs.items():
        rc, _, err = sage(capsys, "manta", "--root", root, "--backbone", vlm, "--out", out, "--no-plots",
                          "--protocol", protocol, *FAST)
        assert rc == 0, err
    samples = [json.loads(s) for s in lines(runs["paper"] / "samples.jsonl")]
    assert {s["verdict_source"] for s in samples} == {"paper"}
    assert all(s["verdict"] == grading.paper_yes(s["answer"]) for s in samples)
    assert json.loads((runs["paper"] / "results.json").read_text())["protocol"] == "paper"
    # resuming under another protocol is refused: the prompts differ
    rc, _, err = sage(capsys, "manta", "--root", root, "--backbone", vlm, "--out", runs["paper"], "--resume", *FAST)
    assert rc == 1 and "protocol 'paper' -> 'sage'" in err
    rc, stdout, err = sage(capsys, "compare", runs["sage"], runs["paper"])
    assert rc == 0 and "different protocols (paper, sage)" in err and "│ paper " in stdout


def test_probe_and_llm_graders(vlm, tmp_path, capsys):  # noqa: F811
    root = _manta(tmp_path)
    out = tmp_path / "probe"
    rc, _, err = sage(capsys, "manta", "--root", root, "--backbone", vlm, "--out", out, "--no-plots",
                      "--grader", "probe", *FAST)
    assert rc == 0, err
    samples = [json.loads(s) for s in lines(out / "samples.jsonl")]
    assert all(s["verdict_source"] == "probe" and s["verdict"] == (s["p_probe"] >= 0.5) for s in samples)

    replies = iter(["Yes.", "unclear", "no"])
    with FakeOpenAI(lambda body, n: Reply(next(replies)), models=("grader-1",)) as server:
        llm = grading.LLMGrader(server.url)
        llm.prepare()
        q = "Is the part free of defects?"
        assert grading.grade_yes_no("It has a dent.", q, "sage", server.url, 0.8, llm=llm) == (True, "judge")
        assert grading.grade_yes_no("Hmm.", q, "sage", server.url, 0.8, llm=llm) == (True, "p_yes")  # unclear
        assert grading.grade_yes_no("Fine.", q, "sage", server.url, 0.8, llm=llm) == (False, "judge")
        assert grading.grade_yes_no("", q, "sage", server.url, None, llm=llm) == (None, "none")  # not asked
        sent = server.chat_requests()[0]["body"]
        assert "Question: Is the part free of defects?" in sent["messages"][0]["content"]
        assert "Answer: It has a dent." in sent["messages"][0]["content"] and sent["temperature"] == 0
        assert len(server.chat_requests()) == 3

    with FakeOpenAI(lambda body, n: Reply("no"), models=("grader-1",)) as server:
        out = tmp_path / "llm"
        rc, _, err = sage(capsys, "manta", "--root", root, "--backbone", vlm, "--out", out, "--no-plots",
                          "--grader", server.url, *FAST)
        assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["grader"] == server.url and res["config"]["grader_model"] == "grader-1"


@pytest.mark.parametrize("args,message", [
    (["manta", "--protocol", "exact"], "unknown protocol 'exact'"),
    (["manta", "--protocol", "mmad"], "--protocol mmad grades MMAD's multiple-choice letters"),
    (["manta", "--grader", "regex"], "unknown grader 'regex'"),
    (["manta", "--protocol", "paper", "--grader", "probe"], "leave --grader at text"),
    (["manta", "--grader", "http://127.0.0.1:9/v1"], "cannot reach the endpoint"),
])
def test_bad_protocols_and_graders_are_one_line(vlm, tmp_path, capsys, args, message):  # noqa: F811
    root = make_tiny_manta(tmp_path / "m", [manta_record()])
    rc, _, err = sage(capsys, args[0], "--root", root, "--backbone", vlm, *args[1:], "--out", tmp_path / "run", *FAST)
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1


def test_mvtec_on_real_hazelnuts_reports_pixel_metrics(vlm, hazelnut_root, tmp_path, capsys):  # noqa: F811
    """The Eq. 1 map against the real masks: pixel AUROC, AUPRO and image F1-max in results.json and the table."""
    out = tmp_path / "run"
    rc, stdout, err = sage(capsys, "mvtec", "--root", hazelnut_root, "--backbone", vlm, "--limit", "3", "--out", out,
                           "--no-plots", "--max-new-tokens", "2")
    assert rc == 0, err
    m = json.loads((out / "results.json").read_text())["metrics"]
    assert 0 <= m["pixel"]["pixel_auroc"] <= 1 and 0 <= m["pixel"]["aupro"] <= 1 and m["pixel"]["side"] == 256
    assert m["pixel"]["images"] == m["auroc_map_groups"]
    assert 0 < m["detection"]["map"]["f1_max"] <= 1 and m["detection"]["map"]["f1_threshold"] is not None
    assert "pixel AUROC" in stdout and "AUPRO@0.3" in stdout
