"""recipes/release/ablation_table.py: the model card's ablation table from kept bench results.json files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "recipes" / "release" / "ablation_table.py"
CARD = ROOT / "sage_cli" / "assets" / "sage-smol" / "MODEL_CARD.md"


def write_result(folder: Path, average: float, auroc: float, status: str = "done") -> None:
    folder.mkdir(parents=True)
    metrics = {"accuracy": {"standard": average, "identification": average, "diagnosis": average, "average": average},
               "acc_g": 0.1, "sbert": 0.5, "auroc": auroc, "auroc_map": None}
    (folder / "results.json").write_text(json.dumps({"status": status, "metrics": metrics}), encoding="utf-8")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_mean_and_spread_over_seeds_and_splice_into_card(tmp_path):
    bench = tmp_path / "bench"
    write_result(bench / "seed-0" / "fe" / "hazelnut-0", 0.60, 0.9)
    write_result(bench / "seed-1" / "fe" / "hazelnut-0", 0.70, 1.0)
    write_result(bench / "seed-2" / "fe" / "hazelnut-0", 0.80, 0.5, status="running")  # unfinished: not counted
    write_result(bench / "seed-0" / "sft" / "hazelnut-0", 0.50, 0.8)
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# card\n\nbefore\n<!-- ablation table (x) -->\nold table\n<!-- end of ablation table -->\nafter\n",
                    encoding="utf-8")

    done = run(str(bench), "--card", str(card))
    assert done.returncode == 0, done.stderr
    # fe: two finished seeds, mean 65.0 and sample standard deviation 7.1 (points); sft: one seed, no spread
    assert "| +Fact[FE] (SFE) | 2 | 65.0 ± 7.1 | 65.0 ± 7.1 | 65.0 ± 7.1 | 65.0 ± 7.1 | 10.0 ± 0.0 |" in done.stdout
    assert "| 0.950 ± 0.071 | - |" in done.stdout
    assert "| SFT, no facts | 1 | 50.0 |" in done.stdout
    assert "+E-DPO" not in done.stdout  # a row with no run is left out, not shown empty

    text = card.read_text(encoding="utf-8")
    assert "old table" not in text
    assert text.startswith("# card\n\nbefore\n<!-- ablation table (x) -->\n#### real hazelnut defects")
    assert text.endswith("\n<!-- end of ablation table -->\nafter\n")
    assert done.stdout.strip() in text


def test_card_without_markers_is_one_line_and_untouched(tmp_path):
    write_result(tmp_path / "bench" / "seed-0" / "fe" / "hazelnut-0", 0.6, 0.9)
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# card without a table\n", encoding="utf-8")
    done = run(str(tmp_path / "bench"), "--card", str(card))
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "needs one line starting" in done.stderr
    assert card.read_text(encoding="utf-8") == "# card without a table\n"

    missing = run(str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "no results folder" in missing.stderr and "Traceback" not in missing.stderr
    missing = run(str(tmp_path / "bench"), "--add", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "no bench folder" in missing.stderr and "Traceback" not in missing.stderr


def test_add_keeps_finished_runs_and_replaces_the_same_run(tmp_path):
    results, bench = tmp_path / "results", tmp_path / "bench"
    write_result(results / "seed-0" / "fe" / "hazelnut-1", 0.40, 0.7)  # an older copy of seed 0's run
    write_result(results / "seed-1" / "fe" / "hazelnut-1", 0.60, 0.9)  # not benched again: kept as it is
    write_result(bench / "seed-0" / "fe" / "hazelnut-1", 0.80, 1.0)
    write_result(bench / "seed-2" / "fe" / "hazelnut-1", 0.10, 0.1, status="partial")  # unfinished: not kept
    write_result(bench / "untrained" / "hazelnut-1", 0.30, 0.5)

    done = run(str(results), "--add", str(bench))
    assert done.returncode == 0, done.stderr
    assert "2 finished run(s)" in done.stderr
    assert json.loads((results / "seed-0" / "fe" / "hazelnut-1" / "results.json").read_text())["metrics"]["auroc"] == 1.0
    assert not (results / "seed-2").exists()
    assert (results / "untrained" / "hazelnut-1" / "results.json").is_file()
    # seeds 0 (the new copy) and 1: mean 70.0, AUROC 0.950
    assert "| +Fact[FE] (SFE) | 2 | 70.0 ± 14.1 |" in done.stdout and "| 0.950 ± 0.071 | - |" in done.stdout
    assert "| untrained SAGE layers (no training) | 1 | 30.0 |" in done.stdout

    (bench / "seed-0" / "fe" / "hazelnut-1" / "results.json").write_text("{not json", encoding="utf-8")
    bad = run(str(results), "--add", str(bench))
    assert bad.returncode != 0 and "cannot read" in bad.stderr and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("results, card", [
    ("results-2", CARD),  # the shipped sage-smol 2 and its recipe
    ("results", ROOT / "recipes" / "release" / "sage-smol-1-card.md"),  # sage-smol 1's recipe, three seeds
])
def test_the_kept_results_make_the_cards_table(results, card):
    """A card's table is what the repository's kept results give: nobody edited one without the other."""
    done = run(str(ROOT / "recipes" / "release" / results))
    assert done.returncode == 0, done.stderr
    card = card.read_text(encoding="utf-8")
    start = card.index("\n", card.index("<!-- ablation table")) + 1
    assert card[start:card.index("<!-- end of ablation table -->")].strip() == done.stdout.strip()


def test_release_script_table_keeps_new_runs_beside_the_kept_ones(tmp_path):
    """`sage-smol.sh table` with R and RESULTS pointed elsewhere: the glue between the script and this one."""
    results = tmp_path / "results"
    shutil.copytree(ROOT / "recipes" / "release" / "results", results)
    kept = len(list(results.glob("seed-*/fe/hazelnut-0/results.json")))
    write_result(tmp_path / "release" / "bench" / "seed-7" / "fe" / "hazelnut-0", 0.5, 0.5)
    env = {**os.environ, "R": str(tmp_path / "release"), "RESULTS": str(results), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "recipes" / "release" / "sage-smol.sh"), "table"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (results / "seed-7" / "fe" / "hazelnut-0" / "results.json").is_file()
    assert f"| +Fact[FE] (SFE) | {kept + 1} |" in done.stdout  # the seeds kept in the repository, and seed 7


def test_held_out_wording_sets_the_shipped_row_and_the_always_no_row(tmp_path):
    """A set with runs gets its table (the held-out wordings too), a set without runs none; the shipped
    checkpoint is a row benched once; benches that report what always answering "No" scores add that row."""
    results = tmp_path / "results"
    write_result(results / "seed-0" / "edpo" / "hazelnut-1", 0.7, 0.9)
    write_result(results / "sage-smol-1" / "hazelnut-wordings-1", 0.55, 0.8)
    path = results / "sage-smol-1" / "hazelnut-wordings-1" / "results.json"
    res = json.loads(path.read_text())
    res["metrics"]["baselines"] = {"always_no": {"average": 0.6, "acc_g": 0.0}, "always_yes": {"average": 0.4, "acc_g": 0.0}}
    path.write_text(json.dumps(res), encoding="utf-8")
    done = run(str(results))
    assert done.returncode == 0, done.stderr
    assert "#### real hazelnut defects, held-out wordings (`--wordings held-out`), one-shot" in done.stdout
    assert "| sage-smol 1 as shipped (seed 0's E-DPO, packed) | 1 | 55.0 |" in done.stdout
    assert '| always "No" (same questions) | - | - | - | - | 60.0 | 0.0 | - | - | - |' in done.stdout
    assert "zero-shot" not in done.stdout and "held-out synthetic" not in done.stdout  # no runs: no table
    assert done.stdout.count('always "No"') == 1  # the older set's runs report no baseline


FAKE_SAGE = """#!/usr/bin/env bash
# logs its arguments; `calibrate ... --out DIR` writes a calibrated config as the real one would
echo "$*" >> "$SAGE_LOG"
args=("$@")
for i in "${!args[@]}"; do
    if [ "$1" = calibrate ] && [ "${args[$i]}" = --out ]; then
        mkdir -p "${args[$((i + 1))]}"; echo '{"calibration": {}}' > "${args[$((i + 1))]}/config.json"
    fi
done
"""

BENCH_SETS = ("hazelnut", "heldout", "hazelnut-wordings", "heldout-wordings")  # what bench_one benches per shots


def bench_twice_with_a_fake_sage(tmp_path: Path, release: Path, seed: str, row: str) -> list[str]:
    """`sage-smol.sh bench SEED ROW` run twice with FAKE_SAGE (the second run finds the calibrated copy and
    calibrates nothing); the `sage` calls both made, one line each."""
    (release / "calibrate-src").mkdir(parents=True)  # the VAL's sources are made: the script only synthesises from them
    sage = tmp_path / "sage"
    sage.write_text(FAKE_SAGE, encoding="utf-8")
    sage.chmod(0o755)
    log = tmp_path / "calls.log"
    env = {**os.environ, "R": str(release), "RESULTS": str(tmp_path / "results"), "SAGE": str(sage),
           "SAGE_LOG": str(log), "PYTHON": sys.executable}
    for _ in range(2):
        done = subprocess.run(["bash", str(ROOT / "recipes" / "release" / "sage-smol.sh"), "bench", seed, row],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    return log.read_text(encoding="utf-8").splitlines()


def test_release_script_benches_a_seeds_recipe_calibrated_and_guided(tmp_path):
    """`sage-smol.sh bench SEED edpo-guided`: that seed's E-DPO run is calibrated into a copy, on the same
    synthetic pairs as the shipped checkpoint, once, then benched guided on the one-shot sets only."""
    release = tmp_path / "release"
    (release / "seed-1" / "edpo" / "checkpoint").mkdir(parents=True)
    (release / "seed-1" / "edpo" / "checkpoint" / "config.json").write_text("{}", encoding="utf-8")
    calls = bench_twice_with_a_fake_sage(tmp_path, release, "1", "edpo-guided")
    cal = [c for c in calls if c.startswith("calibrate ")]
    assert cal == [f"calibrate {release}/seed-1/edpo/checkpoint --on {release}/calibrate-val --limit 12 "
                   f"--out {release}/seed-1/edpo-cal --features auto"]
    assert len([c for c in calls if c.startswith("data synth ")]) == 1  # the VAL pairs: made for the fit only
    benches = [c for c in calls if c.startswith("bench ")]
    assert len(benches) == 8  # four one-shot sets, twice
    for c in benches:
        assert "--shots 1 " in c and c.endswith(f"--checkpoint {release}/seed-1/edpo-cal --guided")
    outs = {c.split("--out ")[1].split()[0] for c in benches}
    assert outs == {f"{release}/bench/seed-1/edpo-guided/{s}-1" for s in BENCH_SETS}


def test_release_script_benches_the_shipped_checkpoint_with_three_references(tmp_path):
    """`sage-smol.sh bench 0 sage-smol-2-refs3`: the shipped checkpoint is calibrated into a copy on
    three-reference pairs of the same VAL, once, then benched guided with three references on every set;
    the table shows those runs under a setting of their own."""
    release = tmp_path / "release"
    calls = bench_twice_with_a_fake_sage(tmp_path, release, "0", "sage-smol-2-refs3")
    assert [c for c in calls if c.startswith("calibrate ")] == [
        f"calibrate sage-smol --on {release}/calibrate-val --limit 12 --out {release}/sage-smol-2-refs3 "
        "--features auto --shots 3"]
    assert len([c for c in calls if c.startswith("data synth ")]) == 1  # the VAL pairs: made for the fit only
    benches = [c for c in calls if c.startswith("bench ")]
    assert len(benches) == 8  # four sets, twice
    for c in benches:
        assert "--shots 3 " in c and c.endswith(f"--checkpoint {release}/sage-smol-2-refs3 --guided")
    assert {c.split("--out ")[1].split()[0] for c in benches} == {f"{release}/bench/sage-smol-2-refs3/{s}-3" for s in BENCH_SETS}

    results = tmp_path / "kept"
    write_result(results / "sage-smol-2-refs3" / "heldout-3", 0.75, 0.85)
    done = run(str(results))
    assert done.returncode == 0, done.stderr
    assert "#### held-out synthetic categories, three references (`--shots 3`)" in done.stdout
    assert "| sage-smol 2, three references per test image, calibrated on three-reference pairs, guided | 1 | 75.0 |" \
        in done.stdout
