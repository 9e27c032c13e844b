"""`sage facts extract` and `sage score mle` driven through a real `sage serve` on loopback.

The served model is a tiny random one: its facts are noise and its judge replies are not the JSON the
rubric asks for, so the judge path ends in options recorded as failed (never a made-up score) and no
pairs. What is checked is the wiring: real HTTP, images as data URLs, retries, resumable outputs.
"""

import json
import os
import threading

import pytest
import torch

from sage_cli.cli import run
from sage_cli.models.engine import Engine
from sage_cli.models.sage import SageModel
from sage_cli.serve.server import make_server
from tiny_models import tiny_composed

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def served():
    import io

    torch.manual_seed(0)
    server = make_server(Engine(SageModel(tiny_composed()), "tiny"), model_name="tiny-sage", log=io.StringIO())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_facts_extract_through_sage_serve(served, make_tiny_mvtec, tmp_path):
    root = make_tiny_mvtec()
    out = tmp_path / "facts.jsonl"
    args = ["facts", "extract", "--from", str(root), "--out", str(out), "--base-url", served.url,
            "max_new_tokens=8", "prompts=[Describe its defects., Describe its material.]"]
    assert run(args) == 0
    recs = _lines(out)
    assert len(recs) == 3 and all(r["model"] == "tiny-sage" and len(r["replies"]) == 2 for r in recs)
    assert run(args) == 0 and len(_lines(out)) == 3  # resumed: nothing asked again


def test_score_mle_through_sage_serve_records_failures_honestly(served, tmp_path):
    from conftest import make_qa_root, qa_group
    from sage_cli.data.qa_jsonl import write_qa_jsonl

    root = make_qa_root(tmp_path / "qa")
    write_qa_jsonl(root / "groups.jsonl", [qa_group(0, root)])
    out = tmp_path / "scores"
    rc = run(["score", "mle", str(root / "groups.jsonl"), "--out", str(out), "--base-url", served.url,
              "max_tokens=12", "retries_malformed=1"])
    assert rc in (0, 1)
    scores = _lines(out / "scores.jsonl")
    assert len(scores) == 5 * 4  # every option of every question was sent and answered
    assert all(("failed" in s) != ("mle" in s) for s in scores)  # scored or failed, never both
    assert all(s["judge"] == f"tiny-sage @ {served.url}" for s in scores)
    failed = sum("failed" in s for s in scores)
    pairs = (out / "pairs.jsonl").read_text().splitlines()
    assert failed == 0 or len(pairs) < 10
