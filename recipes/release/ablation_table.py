"""The ablation table (the paper's Table 3 at our scale) from the bench runs of recipes/release/sage-smol.sh.

    python recipes/release/ablation_table.py recipes/release/results-2 [--add runs/release/bench]
                                              [--out table.md] [--card MODEL_CARD.md]

(results-2: the current recipe's runs, whose table is sage-smol 2's card; results: sage-smol 1's recipe,
whose three-seed table is kept in recipes/release/sage-smol-1-card.md.)

Reads RESULTS/seed-N/ROW/SET-SHOTS/results.json (and RESULTS/ROW/SET-SHOTS for the rows benched once:
untrained and the shipped checkpoints) and prints one Markdown table per evaluation set and
setting that has runs: each row's metrics as mean ± standard deviation over the seeds that have it, with
the number of seeds. Nothing is dropped: a row with fewer seeds says so.
RESULTS is kept in the repository, so the card's table can be rebuilt on any
machine; --add first copies every finished run of a bench folder (same layout) into it, replacing the
file of the same seed, row and set.
AUROC is the P(yes) of the script's fixed detection question (`--detect-question "$DETECT"`); Map AUROC
is the anomaly map's peak (the training-free baseline; it needs a reference).
--card replaces the tables between the card's two markers (CARD_START ... CARD_END lines).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from sage_cli.atomic import write_text

ROWS = [("untrained", "untrained SAGE layers (no training)"),
        ("sage-smol-1", "sage-smol 1 as shipped (seed 0's E-DPO, packed)"),
        ("sage-smol-2", "sage-smol 2 as shipped (seed 0's E-DPO, packed, calibrated), the model's own yes/no"),
        ("sage-smol-2-guided", "sage-smol 2 as shipped, yes/no guided by its calibrated detection (the default)"),
        ("sage-smol-2-refs3", "sage-smol 2, three references per test image, calibrated on three-reference pairs, guided"),
        ("sft", "SFT, no facts"),
        ("hard", "+Fact[Hard]"), ("fe", "+Fact[FE] (SFE)"), ("dpo", "+DPO (on SFE)"), ("edpo", "+E-DPO (full SAGE)"),
        ("edpo-guided", "+E-DPO, calibrated, yes/no guided (sage-smol 2's recipe at each seed)")]
UNSEEDED = ("untrained", "sage-smol-1", "sage-smol-2", "sage-smol-2-guided", "sage-smol-2-refs3")  # rows benched once, not per seed: RESULTS/ROW/SET-SHOTS
SETS = [("hazelnut", "real hazelnut defects (never trained on)"), ("heldout", "held-out synthetic categories"),
        ("hazelnut-wordings", "real hazelnut defects, held-out wordings (`--wordings held-out`)"),
        ("heldout-wordings", "held-out synthetic categories, held-out wordings")]
METRICS = [("Standard", lambda m: m["accuracy"]["standard"], 100), ("Ident.", lambda m: m["accuracy"]["identification"], 100),
           ("Diagnosis", lambda m: m["accuracy"]["diagnosis"], 100), ("Average", lambda m: m["accuracy"]["average"], 100),
           ("Acc-G", lambda m: m["acc_g"], 100), ("SBERT", lambda m: m["sbert"], 1), ("AUROC", lambda m: m["auroc"], 1),
           ("Map AUROC", lambda m: m.get("auroc_map"), 1),
           # the verdict of a calibrated checkpoint (sage calibrate) at its stored threshold
           ("Acc. at threshold", lambda m: (m.get("calibrated") or {}).get("accuracy"), 100)]
CARD_START, CARD_END = "<!-- ablation table", "<!-- end of ablation table -->"


def read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        sys.exit(f"error: cannot read {path}: {e}")


def runs(results: Path, row: str, name: str) -> list[dict]:
    """The metrics of every seed's run of `row` on `name` (e.g. hazelnut-1)."""
    folders = [results / row / name] if row in UNSEEDED else sorted(results.glob(f"seed-*/{row}/{name}"))
    out = []
    for f in folders:
        path = f / "results.json"
        if path.is_file():
            res = read(path)
            if res.get("status") == "done":
                out.append(res["metrics"])
    return out


def add(bench: Path, results: Path) -> int:
    """Copy every finished results.json under `bench` into `results` (same relative path); the count."""
    n = 0
    found = sorted(bench.glob("seed-*/*/*/results.json"))
    for row in UNSEEDED:
        found += sorted(bench.glob(f"{row}/*/results.json"))
    for path in found:
        if read(path).get("status") == "done":  # the file as the bench wrote it, not a re-serialised copy
            write_text(results / path.relative_to(bench), path.read_text(encoding="utf-8"))
            n += 1
    return n


def cell(values: list[float], scale: float) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    digits = 1 if scale == 100 else 3
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(results: Path, name: str) -> str | None:
    """The Markdown table of one set and setting; None when no row has a run of it. Runs that report what
    always answering "No" scores (`baselines`, benches since the held-out wordings) add that row last."""
    head = ["Row", "Seeds", *(m[0] for m in METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = None
    for row, label in ROWS:
        ms = runs(results, row, name)
        if not ms:
            continue
        cells = [cell([get(m) for m in ms], scale) for _, get, scale in METRICS]
        lines.append(f"| {label} | {len(ms)} | " + " | ".join(cells) + " |")
        base = base or next((m["baselines"]["always_no"] for m in ms if (m.get("baselines") or {}).get("always_no")), None)
    if len(lines) == 2:
        return None
    if base is not None:  # the same questions for every row of a set (the bench's --seed is fixed)
        cells = {"Average": cell([base["average"]], 100), "Acc-G": cell([base["acc_g"]], 100)}
        lines.append('| always "No" (same questions) | - | ' + " | ".join(cells.get(m[0], "-") for m in METRICS) + " |")
    return "\n".join(lines)


def splice(card: Path, text: str) -> None:
    """Put `text` between the card's marker lines, keeping the markers; written atomically."""
    if not card.is_file():
        sys.exit(f"error: no model card at {card}")
    lines = card.read_text(encoding="utf-8").splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(CARD_START)]
    ends = [i for i, line in enumerate(lines) if line.strip() == CARD_END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        sys.exit(f"error: {card} needs one line starting {CARD_START!r} and, after it, one {CARD_END!r} line")
    new = lines[: starts[0] + 1] + [text.rstrip("\n") + "\n"] + lines[ends[0]:]
    write_text(card, "".join(new))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="the kept results (recipes/release/results)")
    ap.add_argument("--add", type=Path, metavar="BENCH", help="a bench folder whose finished runs to copy in first")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--card", type=Path, help="a model card whose table (between its markers) to replace")
    args = ap.parse_args()
    if args.add is not None:
        if not args.add.is_dir():
            sys.exit(f"error: no bench folder at {args.add} (run `sage-smol.sh bench SEED` first)")
        print(f"{add(args.add, args.results)} finished run(s) of {args.add} kept in {args.results}", file=sys.stderr)
    if not args.results.is_dir():
        sys.exit(f"error: no results folder at {args.results}")
    parts = []
    for key, what in SETS:
        for shots, setting in (("0", "zero-shot"), ("1", "one-shot"), ("3", "three references (`--shots 3`)")):
            made = table(args.results, f"{key}-{shots}")
            if made is not None:  # a set no row was benched on is left out
                parts.append(f"#### {what}, {setting}\n\n{made}\n")
    text = "\n".join(parts)
    print(text)
    if args.out:
        write_text(args.out, text)
    if args.card:
        splice(args.card, text)


if __name__ == "__main__":
    main()
