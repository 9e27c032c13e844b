"""The `sage` command line: fast help, every group present, missing input is one line, `sage env`."""

import json
import subprocess
import sys
import time

import pytest

from sage_cli.cli import run

GROUPS = ("facts", "prefs", "score", "train", "infer", "bench", "data", "recipes", "models", "env")


def test_help_lists_every_group(capsys):
    assert run(["--help"]) == 0
    out = capsys.readouterr().out
    for g in GROUPS:
        assert g in out


def test_help_is_fast_and_imports_nothing_heavy():
    # A fresh interpreter, as a user's shell would start it; heavy libraries load inside commands.
    code = (
        "import sys, json; from sage_cli.cli import run; rc = run(['--help']); "
        "heavy = [m for m in ('torch', 'transformers', 'numpy', 'PIL') if m in sys.modules]; "
        "print(json.dumps([rc, heavy]), file=sys.stderr)"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rc, heavy = json.loads(proc.stderr.strip().splitlines()[-1])
    assert rc == 0 and heavy == [], f"--help imported heavy modules: {heavy}"
    assert wall < 5.0  # a generous bound for a loaded CI machine; typically ~0.2 s


@pytest.mark.parametrize("argv", [
    ["facts", "extract", "--from", "nowhere", "--out", "f.jsonl"],
    ["prefs", "build", "--from", "nowhere", "--out", "out"],
    ["score", "mle", "nowhere.jsonl", "--out", "out"],
    ["train", "sfe", "--train", "nowhere.jsonl"],
    ["infer", "nowhere.png"],
    ["bench", "manta", "--root", "nowhere"],
])
def test_a_missing_input_is_one_line(capsys, argv):
    assert run(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:") and "nowhere" in err


def test_group_help_says_what_it_does(capsys):
    assert run(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "sfe" in out and "edpo" in out


def test_unknown_command_is_a_usage_error(capsys):
    assert run(["nope"]) == 2


def test_env_json_reports_versions_and_devices(capsys):
    assert run(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for pkg in ("torch", "transformers", "peft", "accelerate"):
        assert pkg in info["packages"]
    assert info["python"].count(".") == 2
    assert any(d.startswith("cpu") for d in info["devices"])


def test_env_table(capsys):
    assert run(["env"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "devices" in out
