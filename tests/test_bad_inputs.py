"""Issue #24: inputs that used to crash or pass silently. Each is one `error:` line, before any work.

(The recipe number ranges are in test_recipes.py.) No model is loaded here: every refusal must come
before one would be, so the backbone named is one that does not exist.
"""

import json

import pytest

from conftest import make_tiny_manta, manta_record, write_image
from openai_server import FakeOpenAI, Reply
from sage_cli.cli import run
from sage_cli.facts.store import FACTS_FORMAT, read_facts, sha256_file

NO_MODEL = "/nonexistent/backbone"  # reaching the model load would fail with another message


def one_line_error(capsys, argv) -> str:
    assert run([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


# ---------------------------------------------------------------------------------------------- facts records


def facts_record(image, **over) -> dict:
    rec = {"format": FACTS_FORMAT, "image": image.name, "image_sha256": sha256_file(image), "model": "m",
           "prompt_id": "p", "facts": ["Widgets crack at the rim."]}
    return {**rec, **over}


BAD_RECORDS = {
    "sha-list": ({"image_sha256": ["ab", "cd"]}, "'image_sha256' must be a string"),
    "facts-int": ({"facts": 3}, "'facts' must be a list of strings, got int 3"),
    "facts-items": ({"facts": ["ok.", {"a": 1}]}, "'facts' must be a list of strings"),
    "model-null": ({"model": None}, "'model' must be a string, got null"),
    "no-key": ({"prompt_id": None}, "'prompt_id' must be a string"),
}


def write_bad_facts(path, image, case):
    over, _ = BAD_RECORDS[case]
    good = facts_record(image)
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(facts_record(image, **over)) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_malformed_facts_record_names_file_and_line(case, tmp_path):
    from sage_cli.errors import SageError

    img = write_image(tmp_path / "a.png")
    f = write_bad_facts(tmp_path / "facts.jsonl", img, case)
    with pytest.raises(SageError) as e:
        read_facts(f)
    msg = str(e.value)
    assert msg.startswith(f"{f} line 3: not a valid {FACTS_FORMAT} record") and BAD_RECORDS[case][1] in msg


def test_torn_and_foreign_lines_are_still_skipped(tmp_path):
    img = write_image(tmp_path / "a.png")
    f = tmp_path / "facts.jsonl"
    f.write_text(json.dumps({"format": "other/1", "facts": 3}) + "\n[1, 2]\n" + json.dumps(facts_record(img))
                 + '\n{"format": "sage-facts/1", "ima', encoding="utf-8")
    assert len(read_facts(f)) == 1


@pytest.mark.parametrize("case", ["sha-list", "facts-int"])
def test_infer_refuses_a_malformed_facts_file_before_loading_a_model(case, tmp_path, capsys):
    test, ref = write_image(tmp_path / "t.png"), write_image(tmp_path / "r.png", color=(1, 2, 3))
    f = write_bad_facts(tmp_path / "facts.jsonl", test, case)
    err = one_line_error(capsys, ["infer", test, ref, "--facts", f, "--backbone", NO_MODEL])
    assert f"{f} line 3: " in err and BAD_RECORDS[case][1] in err


def test_infer_reads_a_good_facts_file_before_loading_a_model(tmp_path, capsys):
    test, ref = write_image(tmp_path / "t.png"), write_image(tmp_path / "r.png", color=(1, 2, 3))
    f = tmp_path / "facts.jsonl"
    f.write_text(json.dumps(facts_record(ref)) + "\n", encoding="utf-8")  # facts of the reference only
    assert "no facts for" in one_line_error(capsys, ["infer", test, ref, "--facts", f, "--backbone", NO_MODEL])


@pytest.mark.parametrize("case", ["sha-list", "facts-int"])
def test_bench_refuses_a_malformed_facts_file(case, tmp_path, capsys):
    manta = make_tiny_manta(tmp_path / "m", [manta_record()])
    img = next((manta / "ImageData").rglob("test_001.png"))
    f = write_bad_facts(tmp_path / "facts.jsonl", img, case)
    err = one_line_error(capsys, ["bench", "manta", "--root", manta, "--facts", f, "--backbone", NO_MODEL,
                                  "--out", tmp_path / "run"])
    assert f"{f} line 3: " in err and BAD_RECORDS[case][1] in err


def test_facts_extract_refuses_a_malformed_facts_file_it_would_append_to(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    f = write_bad_facts(tmp_path / "facts.jsonl", next(root.rglob("*.png")), "facts-int")
    before = f.read_text()
    err = one_line_error(capsys, ["facts", "extract", "--from", root, "--out", f, f"backbone={NO_MODEL}"])
    assert f"{f} line 3: " in err and f.read_text() == before


def test_facts_extract_refuses_an_out_under_a_file(make_tiny_mvtec, tmp_path, capsys):
    root = make_tiny_mvtec()
    (tmp_path / "file").write_text("x")
    err = one_line_error(capsys, ["facts", "extract", "--from", root, "--out", tmp_path / "file" / "f.jsonl",
                                  f"backbone={NO_MODEL}"])
    assert "is not a folder" in err


# ---------------------------------------------------------------------------------------------- infer --heatmap


@pytest.mark.parametrize("case, match", [
    ("suffix", "the heatmap must be .png, .jpg or .webp"),
    ("folder", "is a folder"),
    ("under-file", "is not a folder"),
])
def test_infer_checks_the_heatmap_path_before_loading_a_model(case, match, tmp_path, capsys):
    test, ref = write_image(tmp_path / "t.png"), write_image(tmp_path / "r.png", color=(1, 2, 3))
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir.png").mkdir()
    heatmap = {"suffix": tmp_path / "out.xyz", "folder": tmp_path / "dir.png",
               "under-file": tmp_path / "file" / "h.png"}[case]
    err = one_line_error(capsys, ["infer", test, ref, "--heatmap", heatmap, "--backbone", NO_MODEL])
    assert match in err and str(heatmap) in err


def test_infer_accepts_a_heatmap_in_a_folder_still_to_make(tmp_path, capsys):
    """A good heatmap path passes the checks: the error is then the (missing) model's."""
    test, ref = write_image(tmp_path / "t.png"), write_image(tmp_path / "r.png", color=(1, 2, 3))
    err = one_line_error(capsys, ["infer", test, ref, "--heatmap", tmp_path / "new" / "h.JPG", "--backbone", NO_MODEL])
    assert "heatmap" not in err


# ---------------------------------------------------------------------------------------------- score mle


def _qa(tmp_path):
    from test_score_mle import make_qa

    return make_qa(tmp_path, n_groups=1, n_questions=1)


def test_score_mle_fails_when_no_option_was_scored(tmp_path, capsys):
    from test_score_mle import good

    qa, out = _qa(tmp_path), tmp_path / "out"
    with FakeOpenAI(lambda body, n: Reply("I cannot grade this.")) as srv:
        err = one_line_error(capsys, ["score", "mle", qa, "--out", out, "--base-url", srv.url,
                                      "retries_malformed=0"])
        assert "all 4 options failed to score (first: malformed reply 1 times" in err and "--retry-failed" in err
        assert all("failed" in r for r in lines(out / "scores.jsonl"))  # recorded, so a rerun knows
        assert json.loads((out / "score.json").read_text())["status"] == "done"
        srv.script = good
        assert run(["score", "mle", str(qa), "--out", str(out), "--base-url", srv.url, "--retry-failed"]) == 0
        assert run(["score", "mle", str(qa), "--out", str(out), "--base-url", srv.url]) == 0  # nothing to do: fine
    capsys.readouterr()


def test_score_mle_one_failure_among_successes_still_exits_0(tmp_path, capsys):
    from test_score_mle import judge_reply

    qa = _qa(tmp_path)
    with FakeOpenAI(lambda body, n: Reply(status=400) if n == 0 else judge_reply(body)) as srv:
        assert run(["score", "mle", str(qa), "--out", str(tmp_path / "out"), "--base-url", srv.url,
                    "endpoint.concurrency=1"]) == 0
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------- the API key

KEY = "sk-hostile-echo-5521"


def test_facts_writer_redacts_a_key_the_endpoint_echoes(make_tiny_mvtec, tmp_path, monkeypatch, capsys):
    """A real loopback server that requires the key, names its model after it and echoes it in replies."""
    root = make_tiny_mvtec()
    monkeypatch.setenv("HOSTILE_KEY", KEY)

    def script(body, n):
        if n == 0:
            return Reply(status=400)  # a rejected image: its reason is printed
        return Reply(f"Your key is {KEY} indeed. Widgets of this kind crack near {KEY}.")

    out = tmp_path / "facts.jsonl"
    with FakeOpenAI(script, models=(f"vlm-{KEY}",), token=KEY) as srv:
        args = ["facts", "extract", "--from", str(root), "--out", str(out), "--base-url", srv.url,
                "endpoint.api_key_env=HOSTILE_KEY", "endpoint.concurrency=1", "endpoint.max_retries=0"]
        assert run(args) == 1  # the first image was rejected
        assert run(args) == 0  # and asked again
        assert len(srv.chat_requests()) == 1 + 3 * 5
    recs = lines(out)
    assert len(recs) == 3
    assert recs[0]["facts"][0] == "Your key is [redacted] indeed." and recs[0]["model"] == "vlm-[redacted]"
    text = out.read_text() + json.dumps(capsys.readouterr())
    assert KEY not in text and "[redacted]" in text


def test_score_mle_redacts_a_key_echoed_in_a_malformed_reply(tmp_path, monkeypatch, capsys):
    qa, out = _qa(tmp_path), tmp_path / "out"
    monkeypatch.setenv("HOSTILE_KEY", KEY)
    reply = json.dumps({"type": KEY, "location": 3, "logic": 3})
    with FakeOpenAI(lambda body, n: Reply(reply), token=KEY) as srv:
        err = one_line_error(capsys, ["score", "mle", qa, "--out", out, "--base-url", srv.url,
                                      "endpoint.api_key_env=HOSTILE_KEY", "retries_malformed=0"])
    written = "".join(p.read_text() for p in out.iterdir())
    assert KEY not in written + err and "[redacted]" in written


def test_redact_reaches_nested_values():
    from sage_cli.endpoint import redact

    assert redact({"a": [f"x{KEY}y", 3, None], KEY: (KEY,)}, (KEY,)) == {
        "a": ["x[redacted]y", 3, None], "[redacted]": ("[redacted]",)}
    assert redact("text", ()) == "text"
