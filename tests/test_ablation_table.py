"""recipes/release/ablation_table.py: the model card's ablation table from bench results.json files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "release" / "ablation_table.py"


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
    assert missing.returncode != 0 and "no bench folder" in missing.stderr and "Traceback" not in missing.stderr
