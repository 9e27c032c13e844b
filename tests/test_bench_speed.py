"""`sage bench speed infer`: both sides measured in one run, on prompts of the same length."""

import json
import os

import pytest
import torch

from sage_cli.bench.speed import infer_speed
from sage_cli.cli import run
from sage_cli.models.engine import Engine
from sage_cli.models.hf_vlm import load_hf_vlm
from sage_cli.models.sage import SageModel
from tiny_models import save_tiny_internvl, tiny_composed, noise_image as _img

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_infer_speed_compares_like_with_like():
    torch.manual_seed(0)
    eng = Engine(SageModel(tiny_composed()), "tiny")
    stops = set(eng.stop_ids)
    res = infer_speed(eng, _img(1), _img(2), ["A fact about widgets."], "Is there a defect?", new_tokens=5, repeats=2)
    assert eng.stop_ids == stops  # restored after timing
    assert res["prompt_tokens"] > 50 and res["new_tokens"] == 5
    for side in ("plain", "sage"):
        assert res[side]["ttft_s"] > 0 and res[side]["tokens_per_s"] > 0
    assert res["sage"]["ttft_with_images_s"] > res["sage"]["ttft_s"]
    assert res["ratios"]["ttft"] == pytest.approx(res["sage"]["ttft_s"] / res["plain"]["ttft_s"])
    assert res["peak_memory_mb"]["plain_cuda"] is None and res["peak_memory_mb"]["rss_after_sage"] > 0


def test_bench_speed_infer_command(tmp_path, capsys):
    vlm = save_tiny_internvl(tmp_path / "vlm")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _img(1).save(a)
    _img(2).save(b)
    out = tmp_path / "speed.json"
    # the first model load imports accelerate and deepspeed, whose logger may print to (captured) stdout
    load_hf_vlm(str(vlm))
    capsys.readouterr()
    assert run(["bench", "speed", "infer", "--backbone", str(vlm), "--test", str(a), "--reference", str(b),
                "--repeats", "1", "--new-tokens", "3", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text()) and set(printed["ratios"]) == {"ttft", "ttft_with_images", "per_token"}


def test_bench_speed_bad_input_is_one_line(tmp_path, capsys):
    for argv, match in ((["bench", "speed", "infer", "--checkpoint", str(tmp_path / "none")], "checkpoint directory not found"),
                        (["bench", "speed", "group", "--checkpoint", str(tmp_path / "none")], "checkpoint directory not found"),
                        (["bench", "speed", "train", "--train", str(tmp_path / "qa.jsonl")], "--train needs --pairs")):
        assert run(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and match in err and err.count("\n") == 1


def test_bench_speed_serve_command(tmp_path, capsys):
    """Concurrent clients against one server on loopback and the same requests one at a time, in one run."""
    vlm = save_tiny_internvl(tmp_path / "vlm")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    _img(1).save(a)
    _img(2).save(b)
    load_hf_vlm(str(vlm))
    capsys.readouterr()
    assert run(["bench", "speed", "serve", "--backbone", str(vlm), "--test", str(a), "--reference", str(b),
                "--clients", "1,3", "--max-tokens", "4", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["one_at_a_time"]["requests"] == 3 and res["one_at_a_time"]["errors"] == 0
    assert [lv["clients"] for lv in res["levels"]] == [1, 3]
    three = res["levels"][1]
    assert three["errors"] == 0 and three["same_answers"] == 3 and three["ratio_vs_one_at_a_time"] > 0
    assert three["p50_s"] <= three["p95_s"] and res["peak_rss_mb"] > 0
    assert run(["bench", "speed", "serve", "--clients", "0"]) == 1
    assert "--clients needs" in capsys.readouterr().err
