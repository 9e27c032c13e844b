"""recipes/release/facts.jsonl: the facts seed 2 of the model card's ablation was trained on, kept so that
every seed and every machine trains on the same ones from now on. `sage-smol.sh data` starts its facts
file with them, and `sage facts extract --per-category` must then take them as asked: no model call,
every image its category's kept facts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from sage_cli.cli import run
from sage_cli.facts.store import FACTS_FORMAT

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "recipes" / "release" / "facts.jsonl"
SCRIPT = ROOT / "recipes" / "release" / "sage-smol.sh"


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _script_default(name: str) -> list[str]:
    found = re.search(rf"^{name}=\$\{{{name}:-([^}}]*)\}}", SCRIPT.read_text(encoding="utf-8"), re.M)
    assert found, f"{name} has no default in {SCRIPT.name}"
    return found.group(1).split()


def test_kept_facts_cover_every_category_the_recipe_uses():
    kept = _records(KEPT)
    assert all(r["format"] == FACTS_FORMAT and r["model"] == "sage-smol" and "shared_from" not in r for r in kept)
    assert len({r["prompt_id"] for r in kept}) == 1  # one prompt set: the recipe's
    cats = [r["category"] for r in kept]
    assert sorted(cats) == sorted({*_script_default("TRAIN_CATS"), *_script_default("HELD_OUT"), "hazelnut"})
    assert all(r["facts"] for r in kept)


def test_extract_takes_the_kept_facts_without_asking(hazelnut_root, tmp_path, capsys):
    out = tmp_path / "facts.jsonl"
    shutil.copy(KEPT, out)
    args = ["facts", "extract", "--from", str(hazelnut_root), "--out", str(out), "--per-category", "--which", "all"]
    # the default recipe's prompts give the kept records' prompt_id: nothing to ask, so no model is loaded
    assert run([*args, "--dry-run"]) == 0
    assert " 0 to ask" in capsys.readouterr().err
    assert run(args) == 0
    recs = _records(out)
    hazelnut = next(r for r in recs if r["category"] == "hazelnut" and "shared_from" not in r)
    shared = recs[len(_records(KEPT)):]
    images = sorted(p for p in hazelnut_root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")
                    and "ground_truth" not in p.parts)
    assert len(shared) == len(images) > 0
    assert all(r["facts"] == hazelnut["facts"] and r["shared_from"] == hazelnut["image"] for r in shared)
