"""`sage facts extract`: local (tiny InternVL on disk) and endpoint (scripted HTTP server) paths, resume."""

import json
import os

import pytest

from openai_server import FakeOpenAI, Reply
from sage_cli.cli import run
from sage_cli.facts.extract import prompts_for, targets
from sage_cli.facts.store import FACTS_FORMAT, read_facts
from sage_cli.facts.writer import split_sentences
from tiny_models import save_tiny_internvl

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_targets_are_the_test_images_once(make_tiny_mvtec):
    root = make_tiny_mvtec()
    test = targets(root)
    assert sorted(t.rel for t in test) == ["widget/test/good/000.png", "widget/test/scratch/000.png",
                                           "widget/test/scratch/001.png"]
    assert all(t.category == "widget" for t in test)
    every = targets(root, which="all")
    assert len(every) > len(test) and len({t.rel for t in every}) == len(every)


def test_context_line_and_echo_filter():
    assert prompts_for("The object is a {category}.", ["Q?"], "metal_nut") == ["The object is a metal nut. Q?"]
    assert prompts_for("The object is a {category}.", ["Q?"], "") == ["Q?"]
    reply = "The object is a widget. Widgets crack under load. Itlooksberberberberberberberberberberberber odd."
    assert split_sentences(reply, drop=("The object is a widget.",)) == ["Widgets crack under load."]


def _recipe_args(tmp_path, *extra):
    return ["facts", "extract", "--out", str(tmp_path / "facts.jsonl"), *extra]


def test_local_backbone_writes_then_resumes(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    vlm = save_tiny_internvl(tmp_path / "vlm")
    args = _recipe_args(tmp_path, "--from", str(root), f"backbone={vlm}", "max_new_tokens=4", "batch_size=2")
    assert run(args + ["--limit", "2"]) == 0
    out = tmp_path / "facts.jsonl"
    first = _lines(out)
    assert len(first) == 2 and all(r["format"] == FACTS_FORMAT and r["model"] == str(vlm) for r in first)
    assert all(len(r["replies"]) == 5 and r["prompts"][0].startswith("The object in the image is a widget.")
               for r in first)
    assert run(args) == 0  # the third image only
    recs = _lines(out)
    assert len(recs) == 3 and recs[:2] == first
    assert run(args) == 0 and len(_lines(out)) == 3
    assert "nothing to do" in capsys.readouterr().err


def test_per_category_asks_one_image_per_category(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    make_tiny_mvtec(root, category="gadget", defects={"dent": 1}, size=(20, 20))  # other bytes
    vlm = save_tiny_internvl(tmp_path / "vlm")
    args = _recipe_args(tmp_path, "--from", str(root), f"backbone={vlm}", "max_new_tokens=4", "--per-category")
    assert run(args) == 0
    recs = _lines(tmp_path / "facts.jsonl")
    asked = [r for r in recs if "shared_from" not in r]
    assert sorted(r["category"] for r in asked) == ["gadget", "widget"]  # one model call per category
    assert len(recs) == 5 and len({r["image_sha256"] for r in recs}) == 5
    for r in recs:
        src = next(a for a in asked if a["category"] == r["category"])
        assert r["facts"] == src["facts"] and r.get("shared_from", r["image"]) == src["image"]
    assert run(args) == 0 and len(_lines(tmp_path / "facts.jsonl")) == 5
    assert "nothing to do" in capsys.readouterr().err


def test_endpoint_sends_images_and_keeps_the_key_secret(make_tiny_mvtec, tmp_path, monkeypatch, capsys):
    root = make_tiny_mvtec()
    monkeypatch.setenv("FACTS_KEY", "sk-secret-123")

    def script(body, n):
        parts = body["messages"][0]["content"]
        assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
        return Reply(f"Widgets of this kind often show scratches. Answer number {n} is here.")

    with FakeOpenAI(script, models=("vlm-1",), token="sk-secret-123") as srv:
        args = _recipe_args(tmp_path, "--from", str(root), "--base-url", srv.url, "endpoint.api_key_env=FACTS_KEY")
        assert run(args) == 0
        assert len(srv.chat_requests()) == 3 * 5
        assert run(args) == 0 and len(srv.chat_requests()) == 15  # resumed: nothing asked again
    recs = _lines(tmp_path / "facts.jsonl")
    assert len(recs) == 3 and all(r["model"] == "vlm-1" for r in recs)
    assert recs[0]["facts"][0] == "Widgets of this kind often show scratches."
    text = (tmp_path / "facts.jsonl").read_text() + json.dumps(capsys.readouterr())
    assert "sk-secret-123" not in text


def test_a_rejected_image_is_skipped_and_asked_again(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    with FakeOpenAI(lambda body, n: Reply(status=400) if n == 0 else Reply("Widgets dent when dropped.")) as srv:
        args = _recipe_args(tmp_path, "--from", str(root), "--base-url", srv.url, "endpoint.max_retries=0",
                            "endpoint.concurrency=1")
        assert run(args) == 1  # one image skipped: non-zero so scripts notice
        assert len(_lines(tmp_path / "facts.jsonl")) == 2
        assert run(args) == 0
    assert len(read_facts(tmp_path / "facts.jsonl")) == 3
    assert "skipped" in capsys.readouterr().err


@pytest.mark.parametrize("case, match", [
    ("noargs", "--from ROOT"),
    ("missing", "no such directory"),
    ("down", "cannot reach the endpoint"),
    ("noprompts", "has no prompts"),
])
def test_bad_input_is_one_line(case, match, make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    args = {"noargs": ["facts", "extract"],
            "missing": _recipe_args(tmp_path, "--from", str(tmp_path / "nope")),
            "down": _recipe_args(tmp_path, "--from", str(root), "--base-url", "http://127.0.0.1:9", "endpoint.max_retries=0"),
            "noprompts": _recipe_args(tmp_path, "--from", str(root), "prompts=[]")}[case]
    assert run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1
