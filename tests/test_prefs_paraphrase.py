"""`sage prefs build --paraphrase-endpoint`: rewording through a real OpenAI-compatible HTTP server."""

from __future__ import annotations

import json
import re

from openai_server import FakeOpenAI, Reply

from sage_cli.cli import run
from sage_cli.data.qa_jsonl import read_qa_jsonl
from sage_cli.prefs.paraphrase import keeps_facts

NUMBERED = re.compile(r"^(\d)\. (.*)$", re.MULTILINE)


def options_in(body) -> list[str]:
    return [m.group(2) for m in NUMBERED.finditer(body["messages"][0]["content"])]


def reword(body, n):
    """A1-A3 reworded faithfully; A4 with its verdict flipped, which must be refused."""
    opts = options_in(body)
    out = [o + " (reworded)" for o in opts[:3]]
    flipped = ("No" if opts[3].startswith("Yes") else "Yes") + opts[3][opts[3].find(" "):]
    return Reply("```json\n" + json.dumps(out + [flipped]) + "\n```")


def build(capsys, src, out, url, *args):
    rc = run(["prefs", "build", "--from", str(src), "--out", str(out), "--paraphrase-endpoint", url,
              "--val-frac", "0", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_options_are_reworded_but_keep_their_verdicts(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    with FakeOpenAI(reword) as srv:
        rc, stdout, err = build(capsys, root, tmp_path / "out", srv.url)
        assert rc == 0, err
        assert len(srv.chat_requests()) == 15  # one per question: 3 test images x 5 questions
    groups = list(read_qa_jsonl(tmp_path / "out/train.jsonl", root=root))
    for g in groups:
        for q in g.questions:
            assert all(o.endswith(" (reworded)") for o in q.options[:3])
            assert not q.options[3].endswith(" (reworded)")
            assert q.options[3].startswith("No" if q.answer else "Yes")  # the flip was refused
    manifest = json.loads((tmp_path / "out/prefs.json").read_text())
    assert manifest["settings"]["paraphrase"] == {"endpoint": srv.url, "model": "judge-1"}
    assert "paraphrased 45 option(s)" in stdout and "15 kept as written" in stdout


def test_unusable_replies_keep_the_templates(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    plain = tmp_path / "plain"
    assert run(["prefs", "build", "--from", str(root), "--out", str(plain), "--val-frac", "0"]) == 0

    def script(body, n):
        return Reply(status=400) if n % 2 else Reply("I cannot do that.")

    with FakeOpenAI(script) as srv:
        rc, stdout, err = build(capsys, root, tmp_path / "out", srv.url)
    assert rc == 0, err
    assert (tmp_path / "out/train.jsonl").read_bytes() == (plain / "train.jsonl").read_bytes()
    assert "paraphrased 0 option(s)" in stdout


def test_unreachable_endpoint_and_model_without_endpoint(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    rc, _, err = build(capsys, root, tmp_path / "out", "http://127.0.0.1:9/v1")
    assert rc == 1 and err.startswith("error: cannot reach the endpoint") and err.count("\n") == 1
    rc = run(["prefs", "build", "--from", str(root), "--out", str(tmp_path / "o"), "--paraphrase-model", "m"])
    assert rc == 1 and "--paraphrase-model needs --paraphrase-endpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_keeps_facts():
    old = "Yes. There is a large crack in the upper right, covering about 16% of the image."
    assert keeps_facts(old, "Yes: a large crack sits in the upper right and covers about 16% of the image.")
    assert not keeps_facts(old, "No. There is a large crack in the upper right, about 16% of the image.")
    assert not keeps_facts(old, "Yes. A large crack in the lower left covers about 16% of the image.")
    assert not keeps_facts(old, "Yes. There is a large crack in the upper right.")
    assert not keeps_facts(old, "")
