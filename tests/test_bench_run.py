"""`sage bench FORMAT` end to end on a tiny random VLM saved to disk, and `sage bench compare`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_qa_root, make_tiny_manta, make_tiny_mmad, manta_record, mmad_entry, qa_group

from sage_cli.bench import runner
from sage_cli.bench.items import BenchItem, BenchQuestion
from sage_cli.cli import run
from sage_cli.data.qa_jsonl import write_qa_jsonl
from tiny_models import save_tiny_internvl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FAST = ["--max-new-tokens", "4"]


@pytest.fixture(scope="module")
def vlm(tmp_path_factory):
    return save_tiny_internvl(tmp_path_factory.mktemp("vlm"))


def sage(capsys, *argv):
    """(exit code, stdout, stderr) of `sage bench ...`, run in-process as the console command runs it."""
    rc = run(["bench", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---------------------------------------------------------------------------------------------- samples


def _ans(text, p_yes=None):
    return SimpleNamespace(text=text, p_yes=p_yes, new_tokens=len(text))


def _item(kind="yesno"):
    return BenchItem("g", "rice", Path("."), "t.png", None, [], kind=kind)


def test_sample_verdicts_fall_back_to_p_yes_and_empty_answers_are_wrong_without_it():
    q = BenchQuestion(0, "Is there any defect?", "Is there any defect?", "standard", True, "Yes, a crack.", detect=1)
    s = runner._sample(_item(), q, _ans("", 0.7), 0.0)
    assert (s["verdict"], s["verdict_source"], s["correct"]) == (True, "p_yes", True)
    assert (s["detect_label"], s["detect_score"]) == (True, 0.7)
    s = runner._sample(_item(), q, _ans("", 0.7), 0.0, map_max=0.3, auto_detect=False)  # --detect-question
    assert not {"detect_label", "detect_score", "map_max"} & set(s)
    s = runner._sample(_item(), q, _ans("", None), None)
    assert (s["verdict"], s["verdict_source"], s["correct"]) == (None, "none", False) and "detect_label" not in s
    s = runner._sample(_item(), q, _ans("No, it looks normal.", 0.9), None)
    assert (s["verdict"], s["verdict_source"], s["correct"]) == (False, "word", False)  # the text beats P(yes)
    free = BenchQuestion(1, "Is it free of defects?", "Is it free of defects?", "standard", False, None, detect=-1)
    s = runner._sample(_item(), free, _ans("There is a crack.", 0.2), None)
    assert (s["verdict"], s["verdict_source"], s["correct"]) == (False, "claim", True)
    assert (s["detect_label"], s["detect_score"]) == (True, pytest.approx(0.8))
    mc = BenchQuestion(0, "What is it?", "...", "identification", "B", None, {"A": "Crack", "B": "Stain"}, "Defect Classification")
    s = runner._sample(_item("choice"), mc, _ans("Answer: B.", 0.5), None)
    assert (s["verdict"], s["verdict_source"], s["correct"], s["type"]) == ("B", "letter", True, "Defect Classification")
    assert s["p_yes"] is None
    s = runner._sample(_item("choice"), mc, _ans("", 0.5), None)
    assert (s["verdict"], s["verdict_source"], s["correct"]) == (None, "none", False)


def test_sbert_scores_give_an_empty_answer_zero():
    import torch

    class Fake:
        def encode(self, texts):
            return torch.nn.functional.normalize(torch.tensor([[1.0, float(len(t) % 3)] for t in texts]), dim=-1)

    qs = [BenchQuestion(i, "q", "q", "standard", True, best) for i, best in enumerate(["abc", "abc", None])]
    out = runner._sbert_scores(Fake(), _item(), qs, [_ans("abc"), _ans(""), _ans("x")])
    assert out == [pytest.approx(1.0), 0.0, None]
    assert runner._sbert_scores(None, _item(), qs, [_ans("abc"), _ans(""), _ans("x")]) == [None, None, None]


# ---------------------------------------------------------------------------------------------- end to end


def test_manta_end_to_end_resume_and_refusal(vlm, tmp_path, capsys):
    recs = [manta_record(), manta_record(test_image="rice/test_002.png", pair_type="diagnosis"),
            manta_record(question_answer=manta_record()["question_answer"][:3])]  # a short group
    root = make_tiny_manta(tmp_path / "manta", recs)
    out = tmp_path / "run"
    rc, stdout, err = sage(capsys, "manta", "--root", root, "--backbone", vlm, "--out", out, *FAST)
    assert rc == 0, err
    assert "Standard" in stdout and "Acc-G" in stdout and "results:" in stdout
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "done" and res["format"] == "manta" and res["results_format"] == "sage-bench/1"
    assert set(res) >= {"config", "metrics", "counts", "versions", "git", "timing", "notes", "plots"}
    assert set(res["metrics"]["accuracy"]) == {"standard", "identification", "diagnosis", "average"}
    assert set(res["metrics"]) >= {"acc_g", "sbert", "auroc", "per_category", "mle"}
    assert res["metrics"]["sbert"] is not None and res["metrics"]["mle"] is None
    assert res["config"]["shots"] == 1 and res["config"]["max_new_tokens"] == 4
    assert set(res["versions"]) >= {"sage", "torch", "transformers", "python"}
    assert res["timing"]["per_group_s"] > 0 and res["timing"]["load_s"] > 0
    assert res["counts"]["questions"] == 13 and res["counts"]["groups"] == 3
    assert (out / "plots" / "accuracy_by_level.png").stat().st_size > 1000
    assert (out / "plots" / "examples.png").stat().st_size > 1000
    samples = lines(out / "samples.jsonl")
    assert len(samples) == 13
    first = json.loads(samples[0])
    assert set(first) >= {"group_id", "q", "category", "level", "question", "truth", "answer", "verdict",
                          "verdict_source", "correct", "p_yes", "best_option", "sbert"}
    acc = sum(json.loads(s)["correct"] for s in samples) / 13
    assert res["metrics"]["accuracy"]["average"] == pytest.approx(acc)

    # an existing run is refused without --resume / --overwrite
    rc, _, err = sage(capsys, "manta", "--root", root, "--backbone", vlm, "--out", out, *FAST)
    assert rc == 1 and "not empty; pass --resume" in err and len(err.strip().splitlines()) == 1

    # cut the last 4 lines (the short group and one question of the group before) and leave a torn line, as a
    # killed run would: only those 4 questions are answered again
    (out / "samples.jsonl").write_text("\n".join(samples[:-4]) + "\n" + samples[-4][:25])
    rc, _, err = sage(capsys, "manta", "--root", root, "--backbone", vlm, "--out", out, "--resume", *FAST)
    assert rc == 0, err
    again = lines(out / "samples.jsonl")
    assert again[9] == samples[-4][:25]  # the torn line stays, unread
    again = again[:9] + again[10:]
    assert len(again) == 13 and again[:9] == samples[:9]
    res2 = json.loads((out / "results.json").read_text())
    assert res2["counts"]["answered_this_run"] == 4 and res2["counts"]["from_earlier_runs"] == 9
    # greedy answers of the same engine: the metrics do not move
    assert res2["metrics"]["accuracy"] == pytest.approx(res["metrics"]["accuracy"])

    # a kept answer to a question worded otherwise (an older question bank) is not reused: asked again
    kept = [json.loads(x) for x in lines(out / "samples.jsonl") if x.startswith("{") and x.endswith("}")]
    kept[0]["question"] = "Is there anything odd, in an older wording?"
    (out / "samples.jsonl").write_text("".join(json.dumps(k) + "\n" for k in kept))
    rc, _, err = sage(capsys, "manta", "--root", root, "--backbone", vlm, "--out", out, "--resume", *FAST)
    assert rc == 0, err
    res3 = json.loads((out / "results.json").read_text())
    assert res3["counts"]["answered_this_run"] == 1 and res3["counts"]["questions"] == 13

    # a resumed run must keep the settings that shape the answers
    rc, _, err = sage(capsys, "manta", "--root", root, "--backbone", vlm, "--out", out, "--resume", "--shots", "0", *FAST)
    assert rc == 1 and "other settings (shots 1 -> 0)" in err


def test_mmad_end_to_end_grades_letters_per_type(vlm, tmp_path, capsys):
    entries = {"MVTec-AD/bottle/test/broken/000.png": mmad_entry(),
               "MVTec-AD/bottle/test/good/000.png": mmad_entry(mask_path=None)}
    root = make_tiny_mmad(tmp_path / "mmad", entries)
    out = tmp_path / "run"
    rc, stdout, err = sage(capsys, "mmad", "--root", root, "--backbone", vlm, "--out", out, "--no-plots", *FAST)
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert set(res["metrics"]["mmad_per_type"]) == {"Anomaly Detection", "Defect Classification"}
    assert res["metrics"]["sbert"] is None and res["metrics"]["auroc"] is None  # no ranked options, no P(yes) score
    samples = [json.loads(s) for s in lines(out / "samples.jsonl")]
    assert len(samples) == 4 and {s["truth"] for s in samples} == {"A", "B"}
    assert all(s["verdict_source"] in ("letter", "none") for s in samples)
    assert not (out / "plots").exists() and "plots" not in res
    mm = res["metrics"]["mmad"]  # the tiny random model's letters are mostly unreadable: dropped, not wrong
    assert res["protocol"] == "mmad" and set(mm["per_dataset"]) <= {"MVTec-AD"}
    assert mm["dropped_unreadable"] == sum(s["verdict"] is None for s in samples)
    assert res["metrics"]["auroc_map_groups"] == 2  # "good" in the path: MMAD's own normal flag
    assert "MMAD official summary" in stdout


def test_qa_end_to_end_with_facts_and_the_offline_judge(vlm, tmp_path, capsys):
    root = make_qa_root(tmp_path / "qa")
    write_qa_jsonl(root / "val.jsonl", [qa_group(0), qa_group(1, reference_image=None)])
    facts = tmp_path / "facts.txt"
    facts.write_text("Rice kernels are white.\nA dark spot is a defect.\n")
    out = tmp_path / "run"
    rc, stdout, err = sage(capsys, "qa", "--root", root / "val.jsonl", "--backbone", vlm, "--out", out, "--shots", "0",
                           "--facts", facts, "--judge", "offline:sbert", "--json", *FAST)
    assert rc == 0, err
    res = json.loads(stdout)
    assert res == json.loads((out / "results.json").read_text())
    assert res["counts"]["questions"] == 10 and res["config"]["judge"].startswith("offline:sbert")
    mle = res["metrics"]["mle"]
    assert mle["answers"] == 10 and 1 <= mle["score"] <= 5 and set(mle) >= {"type", "location", "logic"}
    assert res["config"]["facts"] == str(facts.resolve())


def test_mvtec_end_to_end_and_compare(vlm, make_tiny_mvtec, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich would shorten the names on an 80-column page
    root = make_tiny_mvtec()
    one, zero = tmp_path / "one", tmp_path / "zero"
    for out, shots in ((one, "1"), (zero, "0")):
        rc, _, err = sage(capsys, "mvtec", "--root", root, "--backbone", vlm, "--out", out, "--shots", shots, *FAST)
        assert rc == 0, err
    res = json.loads((one / "results.json").read_text())
    assert res["counts"] == {**res["counts"], "groups": 3, "questions": 15}
    assert res["metrics"]["auroc_groups"] == 3 and res["metrics"]["auroc"] is not None  # 1 good + 2 scratched
    assert res["metrics"]["auroc_map"] is not None  # the map's peak as a detector, one-shot only
    assert json.loads((zero / "results.json").read_text())["metrics"]["auroc_map"] is None
    assert set(res["metrics"]["accuracy"]) == {"standard", "identification", "diagnosis", "average"}
    assert all(v is not None for v in res["metrics"]["accuracy"].values())

    cmp_out = tmp_path / "cmp"
    rc, stdout, err = sage(capsys, "compare", one, zero / "results.json", "--out", cmp_out)
    assert rc == 0, err
    assert "│ one " in stdout and "│ zero " in stdout and "Identification" in stdout
    csv_rows = (cmp_out / "comparison.csv").read_text().splitlines()
    assert len(csv_rows) == 3 and csv_rows[1].startswith("one,mvtec,sage,1,") and csv_rows[2].startswith("zero,mvtec,sage,0,")
    assert (cmp_out / "comparison.md").read_text().count("\n") == 4
    assert (cmp_out / "accuracy_by_level.png").stat().st_size > 1000
    rc, _, err = sage(capsys, "compare", one, tmp_path / "nothing")
    assert rc == 1 and "no such run folder" in err


def test_a_fixed_detection_question_scores_every_item(vlm, make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    runs = {}
    for name, question in (("defect", "Is there any defect on the test object?"),
                           ("free", "Is the test object free of defects?")):
        out = tmp_path / name
        rc, _, err = sage(capsys, "mvtec", "--root", root, "--backbone", vlm, "--out", out, "--no-plots",
                          "--detect-question", question, *FAST)
        assert rc == 0, err
        res = json.loads((out / "results.json").read_text())
        assert res["config"]["detect_question"] == question and res["metrics"]["auroc_groups"] == 3
        samples = [json.loads(x) for x in lines(out / "samples.jsonl")]
        scored = [s for s in samples if "detect_score" in s]
        assert len(scored) == 3 and all(s["q"] == 0 and s["detect_question"] == question for s in scored)
        assert sorted(s["detect_label"] for s in scored) == [False, True, True]  # 1 good + 2 scratched
        assert all("map_max" in s for s in scored) and sum("map_max" in s for s in samples) == 3
        runs[name] = {s["group_id"]: s["detect_score"] for s in scored}
    # "free of defects?" is scored as 1 - P(yes): a score is P(defective) either way, not the same number
    assert runs["defect"].keys() == runs["free"].keys() and runs["defect"] != runs["free"]
    rc, _, err = sage(capsys, "mvtec", "--root", root, "--backbone", vlm, "--out", tmp_path / "defect", "--resume",
                      *FAST)
    assert rc == 1 and "detect_question" in err  # a resumed run keeps its detection question


def test_mpdd_reads_manta_schema(vlm, tmp_path, capsys):
    root = make_tiny_manta(tmp_path / "mpdd", [manta_record()], domain="metal")
    rc, _, err = sage(capsys, "mpdd", "--root", root, "--backbone", vlm, "--out", tmp_path / "run", "--no-sbert",
                      "--no-plots", *FAST)
    assert rc == 0, err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["format"] == "mpdd" and res["metrics"]["sbert"] is None and res["counts"]["questions"] == 5


@pytest.mark.parametrize("args,message", [
    (["manta", "--root", "{tmp}/nowhere"], "no such file or directory"),
    (["mmad", "--root", "{manta}"], "looks like manta data"),
    (["manta", "--root", "{manta}", "--shots", "-1"], "--shots must be 0"),
    (["manta", "--root", "{manta}", "--checkpoint", "{tmp}/nockpt"], "checkpoint directory not found"),
    (["manta", "--root", "{manta}", "--categories", "wheat"], "no such category: wheat"),
    (["manta", "--root", "{manta}", "--resume", "--overwrite"], "contradict"),
    (["manta", "--root", "{manta}", "--facts", "{tmp}/nofacts.jsonl"], "facts file not found"),
    (["manta", "--root", "{manta}", "--detect-question", "What colour is it?"], "does not ask whether"),
    (["mmad", "--root", "{manta}", "--detect-question", "Is there a defect?"], "MMAD's questions are multiple"),
    (["mmad", "--root", "{mmad}", "--protocol", "paper"], "MMAD is multiple choice"),
])
def test_failures_are_one_line(tmp_path, capsys, args, message):
    manta = make_tiny_manta(tmp_path / "m", [manta_record()])
    mmad = make_tiny_mmad(tmp_path / "mm", {"MVTec-AD/bottle/test/good/000.png": mmad_entry(mask_path=None)})
    argv = [a.format(tmp=tmp_path, manta=manta, mmad=mmad) for a in args] + ["--out", str(tmp_path / "run")]
    rc, _, err = sage(capsys, *argv)
    assert rc == 1 and message in err and len(err.strip().splitlines()) == 1


def test_command_module_imports_nothing_heavy():
    code = ("import sys; import sage_cli.commands.bench, sage_cli.commands.bench_speed; "
            "print([m for m in ('torch', 'transformers', 'numpy', 'PIL', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_sage_smol_on_the_real_hazelnut_photos(hazelnut_root, tmp_path, capsys):
    """The real model's answers are read: most by their words, none left without a verdict."""
    out = tmp_path / "run"
    rc, _, err = sage(capsys, "mvtec", "--root", hazelnut_root, "--limit", "2", "--max-new-tokens", "24", "--out", out)
    assert rc == 0, err
    samples = [json.loads(s) for s in lines(out / "samples.jsonl")]
    assert len(samples) == 10 and all(s["answer"] for s in samples)
    sources = [s["verdict_source"] for s in samples]
    assert "none" not in sources and sources.count("p_yes") < len(sources) / 2
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["backbone_loaded"] == "sage-smol" and 0 <= res["metrics"]["sbert"] <= 1
    assert (out / "plots" / "examples.png").stat().st_size > 10000  # real photos with their anomaly maps


def test_help_prints_defaults_whole(capsys, monkeypatch):
    """Words in angle brackets were eaten by the help's markup: the --out default reads whole."""
    monkeypatch.setenv("COLUMNS", "250")
    assert run(["bench", "manta", "--help"]) == 0
    assert "runs/bench/FORMAT-MODEL-Nshot" in capsys.readouterr().out
