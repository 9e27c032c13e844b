"""`sage demo --fast` end to end on a tiny VLM (the real run is `make demo`): every step's output exists,
and a rerun skips the finished steps."""

import json
import os

from sage_cli.cli import run
from tiny_models import save_tiny_internvl

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_demo_fast_runs_every_step_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAGE_CACHE", str(tmp_path / "cache"))
    vlm = save_tiny_internvl(tmp_path / "vlm")
    out = tmp_path / "demo"
    assert run(["demo", "--fast", "--backbone", str(vlm), "--out", str(out)]) == 0
    for path in ("synth/preview.png", "facts.jsonl", "prefs/train.jsonl", "prefs/val.jsonl", "scores/pairs.jsonl",
                 "sfe/checkpoint/config.json", "edpo/checkpoint/config.json", "heatmap.png",
                 "bench/results.json", "bench/samples.jsonl", "logs/infer.log"):
        assert (out / path).exists(), path
    assert json.loads((out / "edpo/checkpoint/config.json").read_text())["stage"] == "edpo"
    err = capsys.readouterr().err
    assert "$ sage train edpo" in err and "$ sage bench qa" in err
    assert run(["demo", "--fast", "--backbone", str(vlm), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "[skip] sfe" in err and "[skip] edpo" in err


def test_a_failing_step_is_one_line_naming_it_and_its_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAGE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert run(["demo", "--fast", "--backbone", str(tmp_path / "no-such-model"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: demo step 'facts' failed") and str(out / "logs" / "facts.log") in err
    assert (out / "synth" / "synth.json").is_file()  # the finished step stays for the rerun


def test_toy_data_is_what_the_commands_make(tmp_path):
    """`sage bench speed train`'s toy data comes from the library calls the commands make, with their settings."""
    from sage_cli.toy import SAMPLE, make_toy_data

    data = make_toy_data(tmp_path / "toy", image_size=112)
    by_hand = tmp_path / "cli"
    for argv in (["data", "synth", "--from", str(SAMPLE), "--out", str(by_hand / "synth"), "--image-size", "112",
                  "--per-image", "1", "--seed", "0"],
                 ["prefs", "build", "--from", str(by_hand / "synth"), "--out", str(by_hand / "prefs"), "--seed", "0",
                  "--val-frac", "0"],
                 ["score", "mle", str(by_hand / "prefs" / "train.jsonl"), "--out", str(by_hand / "scores"), "--judge",
                  "offline:sbert"]):
        assert run(argv) == 0
    assert data["qa"].read_text() == (by_hand / "prefs" / "train.jsonl").read_text()
    assert data["pairs"].read_text() == (by_hand / "scores" / "pairs.jsonl").read_text() != ""
    score = json.loads((data["pairs"].parent / "score.json").read_text())
    assert score["root"] == str(data["root"].resolve()) and score["status"] == "done"
    assert len(data["facts"].read_text().splitlines()) == len(data["qa"].read_text().splitlines())
