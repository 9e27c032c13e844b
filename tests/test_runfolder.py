"""runfolder: when an output folder may be used (new, resumed, overwritten), and the refusals when not."""

from __future__ import annotations

import json

import pytest

from sage_cli import runfolder as R
from sage_cli.errors import SageError

SETTINGS = {"format": "x/1", "seed": 0, "kinds": ["a", "b"]}


def refusal(call) -> str:
    with pytest.raises(SageError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def written(tmp_path, settings=SETTINGS, name="run.json"):
    out = tmp_path / "out"
    R.write_manifest(out / name, settings)
    return out


def test_missing_empty_or_dot_files_only_is_new_and_check_writes_nothing(tmp_path):
    out = tmp_path / "out"
    assert R.check(out, "run.json", SETTINGS) == R.Decision(R.NEW)
    assert not out.exists()
    out.mkdir()
    (out / ".run.json.abc.tmp").write_text("half")  # a killed atomic write
    assert R.check(out, "run.json", SETTINGS, resume=False).mode == R.NEW


def test_a_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    assert refusal(lambda: R.check(f, "run.json", SETTINGS)) == f"{f}: is a file; --out takes a folder"


def test_same_settings_resume_and_other_settings_are_named(tmp_path):
    out = written(tmp_path)
    d = R.check(out, "run.json", dict(SETTINGS))
    assert d.mode == R.RESUME and d.manifest == SETTINGS and not d.changed
    msg = refusal(lambda: R.check(out, "run.json", {**SETTINGS, "seed": 5, "new": True}, what="synth output"))
    assert msg == (f"{out} holds a synth output with other settings (seed 0 -> 5, new None -> True); "
                   "pass --overwrite to replace it or choose another --out")
    # a setting only the old manifest has counts too
    assert "kinds ['a', 'b'] -> None" in refusal(lambda: R.check(out, "run.json", {"format": "x/1", "seed": 0}))


def test_keys_and_recorded_choose_what_is_compared(tmp_path):
    out = written(tmp_path, {"results_format": "b/1", "config": {"seed": 1, "limit": 3}})

    def recorded(m):
        if m.get("results_format") != "b/1":
            raise SageError("not ours")
        return {"protocol": "sage", **m["config"]}

    assert R.check(out, "run.json", {"seed": 1, "limit": 9, "protocol": "sage"}, resume=True, recorded=recorded,
                   keys=("seed", "protocol")).mode == R.RESUME
    msg = refusal(lambda: R.check(out, "run.json", {"seed": 2, "protocol": "sage"}, resume=True, recorded=recorded,
                                  keys=("seed", "protocol")))
    assert "other settings (seed 1 -> 2)" in msg


def test_long_values_are_shortened(tmp_path):
    out = written(tmp_path, {"from": "/a" * 100})
    msg = refusal(lambda: R.check(out, "run.json", {"from": "/b"}))
    assert "..." in msg and len(msg) < 250


def test_a_foreign_folder_is_refused_unless_it_holds_only_our_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a.txt", "b.txt", "c.txt", "d.txt", "train.jsonl"):
        (out / name).write_text("x")
    msg = refusal(lambda: R.check(out, "prefs.json", SETTINGS, ours=("train.jsonl",), what="prefs build"))
    assert msg == (f"{out} is not empty and holds no prefs.json, so it is not a prefs build (a.txt, b.txt, c.txt, ...); "
                   "choose another --out or pass --overwrite")
    for name in ("a.txt", "b.txt", "c.txt", "d.txt"):
        (out / name).unlink()
    assert R.check(out, "prefs.json", SETTINGS, ours=("train.jsonl",)).mode == R.RESUME  # an unfinished build


def test_an_unreadable_manifest_is_named(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("{not json")
    msg = refusal(lambda: R.check(out, "run.json", SETTINGS))
    assert msg.startswith(f"{out / 'run.json'}: unreadable manifest (not valid JSON: line 1")
    assert msg.endswith("; pass --overwrite to start over or choose another --out")
    assert R.read_manifest(out / "run.json", lenient=True) == {}
    (out / "run.json").write_text("[1, 2]")
    assert "a JSON list, not an object" in refusal(lambda: R.read_manifest(out / "run.json"))
    assert R.read_manifest(out / "missing.json") is None


def test_overwrite_says_whether_the_old_settings_differ(tmp_path):
    out = written(tmp_path)
    assert R.check(out, "run.json", SETTINGS, overwrite=True) == R.Decision(R.OVERWRITE, SETTINGS, False)
    d = R.check(out, "run.json", {**SETTINGS, "seed": 1}, overwrite=True)
    assert d.mode == R.OVERWRITE and d.changed
    (out / "run.json").write_text("garbage")
    assert R.check(out, "run.json", SETTINGS, overwrite=True).changed  # unreadable: replaced all the same
    (out / "run.json").unlink()
    (out / "other.txt").write_text("x")
    assert R.check(out, "run.json", SETTINGS, overwrite=True) == R.Decision(R.OVERWRITE, None, False)


def test_resume_on_request_only(tmp_path):
    out = written(tmp_path)
    msg = refusal(lambda: R.check(out, "run.json", SETTINGS, resume=False, what="benchmark run"))
    assert msg == (f"{out} is not empty; pass --resume to continue that benchmark run or --overwrite to replace it "
                   "(or choose another --out)")
    assert R.check(out, "run.json", SETTINGS, resume=True).mode == R.RESUME
    assert refusal(lambda: R.check(out, "run.json", SETTINGS, resume=True, overwrite=True)) == \
        "--resume and --overwrite contradict each other; give one"


def test_no_settings_resumes_without_reading_the_manifest(tmp_path):
    """The trainer's case: recipe.yaml is not JSON and nothing is compared."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text("stage: sfe\n")
    args = dict(what="training run", resume_flag="--resume auto")
    assert "pass --resume auto to continue that training run" in refusal(
        lambda: R.check(run_dir, "recipe.yaml", None, resume=False, **args))
    assert R.check(run_dir, "recipe.yaml", None, resume=True, **args) == R.Decision(R.RESUME)
    assert R.check(run_dir, "recipe.yaml", None, resume=False, overwrite=True, **args) == R.Decision(R.OVERWRITE)


def test_write_manifest_is_atomic_json(tmp_path):
    path = tmp_path / "o" / "run.json"
    R.write_manifest(path, {"b": "é", "a": 1}, sort_keys=True)
    assert path.read_text(encoding="utf-8") == json.dumps({"a": 1, "b": "é"}, indent=2, ensure_ascii=False) + "\n"
    R.write_manifest(path, {"x": 1}, indent=1)
    assert json.loads(path.read_text()) == {"x": 1} and [p.name for p in path.parent.iterdir()] == ["run.json"]


def test_clear_names_or_the_whole_folder(tmp_path):
    out = tmp_path / "out"
    (out / "plots").mkdir(parents=True)
    (out / "plots" / "a.png").write_text("x")
    for name in ("results.json", "mine.txt"):
        (out / name).write_text("x")
    R.clear(out, ("results.json", "samples.jsonl", "plots"))
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    R.clear(out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    R.clear(out)  # nothing there: nothing to do


def test_remove_files_stays_inside_and_sweep_removes_temporaries(tmp_path):
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "x.png").write_text("x")
    (out / "a" / ".x.png.123.tmp").write_text("half")
    (tmp_path / "outside.txt").write_text("keep")
    R.remove_files(out, ["a/x.png", "../outside.txt", None, "a/missing.png"])
    assert not (out / "a" / "x.png").exists() and (tmp_path / "outside.txt").exists()
    R.sweep_temporaries(out)
    assert list((out / "a").iterdir()) == []


def test_differences_order():
    assert R.differences({"b": 1, "z": 1}, {"a": 1, "b": 2}) == ["a None -> 1", "b 1 -> 2", "z 1 -> None"]
    assert R.differences({"a": 1, "b": 1}, {"a": 2, "b": 2}, keys=("b",)) == ["b 1 -> 2"]
