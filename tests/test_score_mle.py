"""`sage score mle` end to end against a real OpenAI-compatible HTTP server on loopback."""

import json
import re
import threading
import time

import pytest

from conftest import make_qa_root, qa_group
from openai_server import FakeOpenAI, Reply
from sage_cli.cli import run
from sage_cli.data.qa_jsonl import write_qa_jsonl
from sage_cli.data.records import Question
from sage_cli.judge.mle import select_pairs

# What the scripted judge gives each rank (the option text starts with "A<rank>"): type, location, logic.
SCORES = {"A1": (5, 5, 5), "A2": (4, 4, 3), "A3": (2, 3, 2), "A4": (1, 1, 1)}
MLE = [5.0, 11 / 3, 7 / 3, 1.0]
ANSWER = re.compile(r'Answer to grade:\n"""\n(.*?)\n"""', re.DOTALL)
SECRET = "sk-test-never-in-outputs-9931"


def answer_of(body) -> str:
    """The option being graded, from the default template's user message."""
    user = [m for m in body["messages"] if m["role"] == "user"][0]["content"]
    return ANSWER.search(user).group(1)


def judge_reply(body) -> Reply:
    t, l, g = SCORES[answer_of(body)[:2]]
    return Reply(json.dumps({"type": t, "location": l, "logic": g}))


def good(body, n):
    return judge_reply(body)


def make_qa(tmp_path, n_groups=2, n_questions=2):
    """QA groups g0.. with questions whose options are "A1 ... A4 ..." (distinct per question)."""
    root = make_qa_root(tmp_path / "data")
    groups = []
    for i in range(n_groups):
        qs = [Question(f"Is there a defect ({i}.{k})?", True,
                       [f"A{r + 1}: answer {r} to g{i} q{k}" for r in range(4)]) for k in range(n_questions)]
        groups.append(qa_group(i, questions=qs))
    write_qa_jsonl(root / "qa.jsonl", groups)
    return root / "qa.jsonl"


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def score(capsys, qa, out, url, *extra):
    rc = run(["score", "mle", str(qa), "--out", str(out), "--base-url", url, *extra])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_scores_pairs_manifest_and_a_rerun_that_sends_nothing(tmp_path, capsys):
    qa = make_qa(tmp_path)
    out = tmp_path / "out"
    with FakeOpenAI(good) as srv:
        rc, stdout, err = score(capsys, qa, out, srv.url)
        assert rc == 0, err
        assert len(srv.chat_requests()) == 16 and srv.requests[0]["method"] == "GET"  # checked first
        judge = f"judge-1 @ {srv.url}"

        scores = lines(out / "scores.jsonl")
        assert len(scores) == 16
        for s in scores:
            assert s["format"] == "sage-scores/1" and s["judge"] == judge and "failed" not in s
            assert (s["type"], s["location"], s["logic"]) == SCORES[f"A{s['option'] + 1}"]
            assert s["mle"] == pytest.approx(MLE[s["option"]])
        assert {(s["group_id"], s["q"], s["option"]) for s in scores} == \
            {(f"g{i}", k, r) for i in range(2) for k in range(2) for r in range(4)}

        pairs = lines(out / "pairs.jsonl")
        assert len(pairs) == 8
        opts = [f"A{r + 1}: answer {r} to g1 q0" for r in range(4)]
        expect = {p.kind: p for p in select_pairs(opts, MLE)}
        for p in (p for p in pairs if p["group_id"] == "g1" and p["q"] == 0):
            e = expect[p["kind"]]
            assert (p["chosen"], p["rejected"], p["chosen_rank"], p["rejected_rank"]) == \
                (e.chosen, e.rejected, e.chosen_rank, e.rejected_rank)
            assert p["delta_h"] == pytest.approx(e.delta_h)
            assert p["format"] == "sage-pairs/1" and p["judge"] == judge
            assert (p["category"], p["level"], p["test_image"], p["reference_image"], p["answer"]) == \
                ("rice", "identification", "img/test.png", "img/ref.png", True)
            assert p["question"] == "Is there a defect (1.0)?"

        manifest = json.loads((out / "score.json").read_text())
        assert manifest["judge"] == judge and manifest["status"] == "done" and manifest["recipe"] == "default"
        assert manifest["root"] == str(qa.parent.resolve())
        assert manifest["counts"]["options_scored_now"] == 16 and manifest["counts"]["pairs"] == 8
        assert "preference pairs" in stdout and judge in stdout

        before = (out / "scores.jsonl").read_bytes()
        pairs_before = (out / "pairs.jsonl").read_bytes()
        rc, stdout, _ = score(capsys, qa, out, srv.url)
        assert rc == 0 and len(srv.chat_requests()) == 16  # nothing rescored
        assert (out / "scores.jsonl").read_bytes() == before and (out / "pairs.jsonl").read_bytes() == pairs_before
        assert json.loads((out / "score.json").read_text())["counts"]["options_already_scored"] == 16


def test_limit_then_resume_scores_each_option_once(tmp_path, capsys):
    qa = make_qa(tmp_path, n_groups=3)
    out = tmp_path / "out"
    with FakeOpenAI(good) as srv:
        assert score(capsys, qa, out, srv.url, "--limit", "1")[0] == 0
        assert len(srv.chat_requests()) == 8
        assert len(lines(out / "pairs.jsonl")) == 4  # only g0's questions are complete
        assert json.loads((out / "score.json").read_text())["counts"]["questions_incomplete"] == 4
        assert score(capsys, qa, out, srv.url)[0] == 0
        assert len(srv.chat_requests()) == 24
    keys = [(s["group_id"], s["q"], s["option"]) for s in lines(out / "scores.jsonl")]
    assert len(keys) == 24 == len(set(keys))
    assert len(lines(out / "pairs.jsonl")) == 12


def test_server_failing_mid_run_then_resume(tmp_path, capsys):
    qa = make_qa(tmp_path)
    out = tmp_path / "out"
    down = {"after": 5}

    def script(body, n):
        return Reply(status=503) if n >= down["after"] else judge_reply(body)

    with FakeOpenAI(script) as srv:
        rc, _, err = score(capsys, qa, out, srv.url, "endpoint.concurrency=1", "endpoint.max_retries=0")
        assert rc == 1 and err.count("\n") == 1
        assert err.startswith(f"error: the endpoint {srv.url} failed once (last: HTTP 503)")
        assert "5 new scores are kept" in err and "rerun the same command to resume" in err
        assert len(lines(out / "scores.jsonl")) == 5
        assert len(srv.chat_requests()) == 6  # 5 answered, the 6th failed

        down["after"] = 10 ** 9  # the server is back
        assert score(capsys, qa, out, srv.url, "endpoint.concurrency=1", "endpoint.max_retries=0")[0] == 0
        assert len(srv.chat_requests()) == 6 + 11  # only the 11 options not yet scored
    keys = [(s["group_id"], s["q"], s["option"]) for s in lines(out / "scores.jsonl")]
    assert len(keys) == 16 == len(set(keys))
    assert len(lines(out / "pairs.jsonl")) == 8


def test_failure_with_requests_in_flight_keeps_their_results(tmp_path, capsys):
    qa = make_qa(tmp_path)
    out = tmp_path / "out"
    down = {"after": 6}

    def script(body, n):
        time.sleep(0.05)
        return Reply(status=503) if n >= down["after"] else judge_reply(body)

    with FakeOpenAI(script) as srv:
        args = ("endpoint.concurrency=3", "endpoint.max_retries=0")
        assert score(capsys, qa, out, srv.url, *args)[0] == 1
        kept, sent = len(lines(out / "scores.jsonl")), len(srv.chat_requests())
        assert kept == 6 and sent <= 6 + 3  # every answered request was kept; nothing sent after the failure
        down["after"] = 10 ** 9
        assert score(capsys, qa, out, srv.url, *args)[0] == 0
        assert len(srv.chat_requests()) == sent + 16 - kept
    assert len({(s["group_id"], s["q"], s["option"]) for s in lines(out / "scores.jsonl")}) == 16


def test_edited_option_text_is_rescored(tmp_path, capsys):
    qa = make_qa(tmp_path, n_groups=1, n_questions=1)
    out = tmp_path / "out"
    with FakeOpenAI(good) as srv:
        assert score(capsys, qa, out, srv.url)[0] == 0
        qa.write_text(qa.read_text().replace("A3: answer 2 to g0 q0", "A3: a reworded answer"))
        assert score(capsys, qa, out, srv.url)[0] == 0
        assert len(srv.chat_requests()) == 5 and answer_of(srv.chat_requests()[-1]["body"]) == "A3: a reworded answer"
    pairs = lines(out / "pairs.jsonl")
    assert len(pairs) == 2 and "A3: a reworded answer" in {p["chosen"] for p in pairs} | {p["rejected"] for p in pairs}


def test_malformed_once_is_asked_again_and_always_malformed_fails(tmp_path, capsys):
    qa = make_qa(tmp_path)
    out = tmp_path / "out"
    seen = {}

    def script(body, n):
        a = answer_of(body)
        seen[a] = seen.get(a, 0) + 1
        if a == "A2: answer 1 to g0 q0" and seen[a] == 1:
            return Reply("I would give it a 4.")  # malformed once
        if a == "A3: answer 2 to g1 q1":
            return Reply('{"type": 9, "location": 3, "logic": 2}')  # always out of range
        return judge_reply(body)

    with FakeOpenAI(script) as srv:
        rc, stdout, _ = score(capsys, qa, out, srv.url)  # retries_malformed = 2: three tries
        assert rc == 0
        assert len(srv.chat_requests()) == 14 + 2 + 3
        by_key = {(s["group_id"], s["q"], s["option"]): s for s in lines(out / "scores.jsonl")}
        ok = by_key[("g0", 0, 1)]
        assert ok["attempts"] == 2 and ok["mle"] == pytest.approx(MLE[1])
        retry_msgs = [r["body"]["messages"] for r in srv.chat_requests() if answer_of(r["body"]).startswith("A2: answer 1 to g0 q0")][1]
        assert retry_msgs[-2] == {"role": "assistant", "content": "I would give it a 4."}
        assert "could not be read" in retry_msgs[-1]["content"]

        bad = by_key[("g1", 1, 2)]
        assert "outside 1..5" in bad["failed"] and bad["attempts"] == 3
        assert not {"type", "location", "logic", "mle"} & set(bad)  # no made-up score
        pairs = lines(out / "pairs.jsonl")
        assert len(pairs) == 6 and not [p for p in pairs if (p["group_id"], p["q"]) == ("g1", 1)]
        counts = json.loads((out / "score.json").read_text())["counts"]
        assert counts["questions_with_failed_option"] == 1 and counts["options_failed_now"] == 1

        # A rerun leaves the failure alone; --retry-failed asks again (the judge now answers well).
        assert score(capsys, qa, out, srv.url)[0] == 0 and len(srv.chat_requests()) == 19
        srv.script = good
        assert score(capsys, qa, out, srv.url, "--retry-failed")[0] == 0 and len(srv.chat_requests()) == 20
        assert len(lines(out / "pairs.jsonl")) == 8
        assert len(lines(out / "scores.jsonl")) == 17  # appended, never rewritten


def test_429_and_500_are_retried_and_counted(tmp_path, capsys):
    qa = make_qa(tmp_path, n_groups=1, n_questions=1)
    out = tmp_path / "out"

    def script(body, n):
        if n == 0:
            return Reply(status=429, headers={"Retry-After": "0"})
        if n == 1:
            return Reply(status=500, headers={"Retry-After": "0"})
        return judge_reply(body)

    with FakeOpenAI(script) as srv:
        assert score(capsys, qa, out, srv.url, "endpoint.concurrency=1")[0] == 0
        assert len(srv.chat_requests()) == 6
    assert json.loads((out / "score.json").read_text())["counts"]["endpoint_retries"] == 2
    assert len(lines(out / "scores.jsonl")) == 4


def test_bounded_concurrency(tmp_path, capsys):
    qa = make_qa(tmp_path)
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def script(body, n):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.1)
        with lock:
            state["now"] -= 1
        return judge_reply(body)

    with FakeOpenAI(script) as srv:
        assert score(capsys, qa, tmp_path / "out", srv.url, "endpoint.concurrency=3")[0] == 0
    assert 1 < state["max"] <= 3


def test_bearer_key_from_env_never_reaches_outputs(tmp_path, capsys, monkeypatch):
    qa = make_qa(tmp_path, n_groups=1)
    out = tmp_path / "out"
    monkeypatch.delenv("JUDGE_KEY", raising=False)
    with FakeOpenAI(good, token=SECRET) as srv:
        rc, _, err = score(capsys, qa, out, srv.url, "endpoint.api_key_env=JUDGE_KEY")
        assert rc == 1 and err.strip() == \
            f"error: the endpoint {srv.url} refused the API key from $JUDGE_KEY (unset) (HTTP 401)"
        assert not out.exists()  # checked before anything is written

        monkeypatch.setenv("JUDGE_KEY", SECRET)
        rc, stdout, err = score(capsys, qa, out, srv.url, "endpoint.api_key_env=JUDGE_KEY")
        assert rc == 0, err
        assert all(r["headers"]["authorization"] == f"Bearer {SECRET}" for r in srv.requests[1:])
    for text in [stdout, err] + [p.read_text() for p in out.iterdir()]:
        assert SECRET not in text
    assert json.loads((out / "score.json").read_text())["config"]["endpoint"]["api_key_env"] == "JUDGE_KEY"


def test_torn_last_line_is_rescored(tmp_path, capsys):
    qa = make_qa(tmp_path, n_groups=1, n_questions=1)
    out = tmp_path / "out"
    with FakeOpenAI(good) as srv:
        assert score(capsys, qa, out, srv.url)[0] == 0
        text = (out / "scores.jsonl").read_text()
        (out / "scores.jsonl").write_text(text[: text.rindex("{") + 20])  # the last line cut mid-write
        assert score(capsys, qa, out, srv.url)[0] == 0
        assert len(srv.chat_requests()) == 5
    raw = (out / "scores.jsonl").read_text().splitlines()
    # The torn line stays (append-only), closed by a newline; the rescored option follows it.
    assert len(raw) == 5 and not raw[3].endswith("}") and json.loads(raw[4])["format"] == "sage-scores/1"
    assert len(lines(out / "pairs.jsonl")) == 2


def test_another_judge_cannot_mix_into_the_same_out(tmp_path, capsys):
    qa = make_qa(tmp_path, n_groups=1, n_questions=1)
    out = tmp_path / "out"
    with FakeOpenAI(good, models=("judge-1", "judge-2")) as srv:
        assert score(capsys, qa, out, srv.url, "--model", "judge-1")[0] == 0
        rc, _, err = score(capsys, qa, out, srv.url, "--model", "judge-2")
        assert rc == 1 and "holds scores from another judge (judge-1 @" in err and "use another --out" in err
        rc, _, err = score(capsys, qa, out, srv.url, "--model", "judge-1", 'template="A: {answer}"')
        assert rc == 1 and "another rubric or template" in err


def test_dry_run_sends_nothing(tmp_path, capsys):
    qa = make_qa(tmp_path)
    with FakeOpenAI(good) as srv:
        rc, stdout, _ = score(capsys, qa, tmp_path / "out", srv.url, "--dry-run", "--limit", "1")
        assert rc == 0 and srv.requests == []
    assert "1 of 2 QA groups, 2 questions, 8 options: 8 to score" in stdout
    assert "--- system" in stdout and 'A1: answer 0 to g0 q0\n"""' in stdout
    assert not (tmp_path / "out").exists()
    # No endpoint at all: the prompt can still be shown.
    assert run(["score", "mle", "--qa", str(qa), "--out", str(tmp_path / "o2"), "--dry-run"]) == 0
    assert "(no endpoint set)" in capsys.readouterr().out


def test_print_config_shows_the_shortcuts(capsys):
    assert run(["score", "mle", "--base-url", "http://h:1/v1", "--model", "m", "--print-config",
                "endpoint.timeout=5"]) == 0
    out = capsys.readouterr().out
    assert "kind: score" in out and "base_url: http://h:1/v1" in out and "model: m" in out and "timeout: 5" in out


def _one_line_error(capsys, argv) -> str:
    assert run(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_bad_input_one_liners(tmp_path, capsys):
    qa = make_qa(tmp_path, n_groups=1)
    out = str(tmp_path / "out")
    assert "missing.jsonl: QA file not found" in _one_line_error(
        capsys, ["score", "mle", str(tmp_path / "missing.jsonl"), "--out", out, "--base-url", "http://h:1"])
    bad = tmp_path / "data" / "bad.jsonl"
    bad.write_text(qa.read_text() + '{"format": "sage-qa/1", "id": "x"\n')
    assert "bad.jsonl line 2: not valid JSON" in _one_line_error(capsys, ["score", "mle", str(bad), "--out", out])
    assert "no QA file" in _one_line_error(capsys, ["score", "mle", "--out", out])
    assert "give --out DIR" in _one_line_error(capsys, ["score", "mle", str(qa)])
    assert "did you mean 'offline:sbert'" in _one_line_error(
        capsys, ["score", "mle", str(qa), "--out", out, "--judge", "offline:sbrt"])
    assert "set endpoint.base_url in the recipe or pass --base-url" in _one_line_error(
        capsys, ["score", "mle", str(qa), "--out", out])
    with FakeOpenAI() as srv:
        url = srv.url
    err = _one_line_error(capsys, ["score", "mle", str(qa), "--out", out, "--base-url", url])
    assert err.startswith(f"error: cannot reach the endpoint {url}")
    assert not (tmp_path / "out").exists()


def test_override_in_place_of_the_qa_file(tmp_path, capsys):
    qa = make_qa(tmp_path, n_groups=1)
    assert run(["score", "mle", "endpoint.timeout=5", "--qa", str(qa), "--out", str(tmp_path / "o"),
                "--dry-run"]) == 0


def test_offline_sbert_ranks_a_paraphrase_above_an_unrelated_sentence(tmp_path, capsys):
    root = make_qa_root(tmp_path / "data")
    opts = ["There is a crack on the upper left of the hazelnut shell.",
            "The hazelnut shell has a fissure near its top left.",
            "No defect: the nut looks like the normal sample.",
            "The weather in Paris is sunny today."]
    write_qa_jsonl(root / "qa.jsonl", [qa_group(0, questions=[Question("Is there a defect?", True, opts)])])
    out = tmp_path / "out"
    assert run(["score", "mle", str(root / "qa.jsonl"), "--out", str(out), "--judge", "offline:sbert"]) == 0
    s = {r["option"]: r for r in lines(out / "scores.jsonl")}
    assert s[0]["mle"] == pytest.approx(5.0, abs=1e-3)
    assert s[1]["mle"] > s[2]["mle"] > s[3]["mle"] >= 1.0
    assert s[1]["type"] == s[1]["location"] == s[1]["logic"] == s[1]["mle"]
    assert {r["judge"] for r in s.values()} == {"offline:sbert (all-MiniLM-L6-v2)"}
    assert len(lines(out / "pairs.jsonl")) == 2
