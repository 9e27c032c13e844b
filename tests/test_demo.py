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
