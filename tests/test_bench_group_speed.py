"""`sage bench speed group`: a question group answered as `sage bench` does against each question from scratch.

On a tiny model on a shared CPU the ratio says little, so only its presence is checked; what must hold
is that both sides give the same answers.
"""

import json
import os

import torch

from sage_cli.bench.group_speed import group_speed
from sage_cli.cli import run
from sage_cli.models.engine import Engine
from sage_cli.models.sage import SageModel
from tiny_models import save_tiny_internvl, tiny_composed, noise_image as _img

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_grouped_answers_equal_the_one_by_one_answers():
    torch.manual_seed(0)
    eng = Engine(SageModel(tiny_composed(), k_patches=2), "tiny")
    res = group_speed(eng, _img(1), _img(2), ["A fact about widgets."], new_tokens=6, repeats=1)
    assert res["questions"] == 5 and res["same_answers"] == 5
    assert all(a["grouped"] == a["scratch"] for a in res["answers"])
    assert res["grouped"]["total_s"] > 0 and res["scratch"]["total_s"] > 0
    assert res["ratio"] == res["scratch"]["total_s"] / res["grouped"]["total_s"]
    assert res["grouped"]["per_question_s"] == res["grouped"]["total_s"] / 5


def test_bench_speed_group_command(tmp_path, capsys):
    vlm = save_tiny_internvl(tmp_path / "vlm")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _img(1).save(a)
    _img(2).save(b)
    qfile = tmp_path / "q.txt"
    qfile.write_text("Is there any defect?\nWhere is it?\n# a comment\nShould it be rejected?\n")
    out = tmp_path / "speed.json"
    assert run(["bench", "speed", "group", "--backbone", str(vlm), "--test", str(a), "--reference", str(b),
                "--questions-file", str(qfile), "--repeats", "1", "--new-tokens", "3", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    assert printed["questions"] == 3 and printed["same_answers"] == 3 and printed["ratio"] > 0
    assert printed["grouped"]["per_question_s"] > 0 and printed["scratch"]["per_question_s"] > 0
    # the table form, zero-shot
    assert run(["bench", "speed", "group", "--backbone", str(vlm), "--test", str(a), "--zero-shot",
                "--repeats", "1", "--new-tokens", "2", "--facts", "0"]) == 0
    cap = capsys.readouterr()
    assert "from scratch" in cap.out and "per question" in cap.out and "same answers on both sides" in cap.err
