"""A benchmark run folder: what it holds, when it may be reused, and where a run came from.

    RUN_DIR/results.json    metrics, config, counts, versions, git commit, timing (rewritten atomically:
                            at the start with status "running", at the end with status "done")
    RUN_DIR/samples.jsonl   one line per answered question, appended as answers come (the record resume reads)
    RUN_DIR/samples.csv     the same, flat, for a spreadsheet (rewritten at the end of each run)
    RUN_DIR/plots/*.png     accuracy by level, example images with their anomaly maps

A folder that holds anything is refused unless --resume (continue it: same answer-shaping settings
required) or --overwrite (our files are removed first; other files are left alone).
"""

from __future__ import annotations

import json
from pathlib import Path

from sage_cli import runfolder
from sage_cli.errors import SageError

RESULTS, SAMPLES, SAMPLES_CSV, PLOTS = "results.json", "samples.jsonl", "samples.csv", "plots"
RESULTS_FORMAT = "sage-bench/1"
SAMPLE_FORMAT = "sage-bench-sample/1"
# Settings that change the answers: a resumed run must keep them (limit and categories may change).
ANSWER_KEYS = ("format", "root", "backbone", "checkpoint", "shots", "facts", "max_new_tokens", "seed", "judge",
               "detect_question", "protocol", "grader", "wordings", "guided")
CSV_COLUMNS = ("group_id", "q", "category", "level", "type", "question", "truth", "answer", "verdict", "verdict_source",
               "correct", "p_yes", "p_probe", "best_option", "sbert", "new_tokens", "detect_label", "label_source",
               "detect_score", "map_max", "mle_type", "mle_location", "mle_logic", "mle")


def prepare(out: Path, config: dict, resume: bool, overwrite: bool) -> None:
    """Check (and with `overwrite`, clear) the run folder before any work (rules: runfolder.check)."""

    def recorded(results: dict) -> dict:
        if results.get("results_format") != RESULTS_FORMAT:
            raise SageError(f"{Path(out) / RESULTS}: not a sage bench results file")
        # runs from before these settings
        return {"protocol": "sage", "grader": "text", "wordings": "seen", "guided": False, **(results.get("config") or {})}

    found = runfolder.check(out, RESULTS, config, resume=resume, overwrite=overwrite, recorded=recorded, keys=ANSWER_KEYS,
                            ours=(SAMPLES, SAMPLES_CSV, PLOTS), what="benchmark run")
    if found.mode == runfolder.OVERWRITE:
        runfolder.clear(out, (RESULTS, SAMPLES, SAMPLES_CSV, PLOTS))  # ours only: other files are left alone


def write_samples_csv(folder: Path, samples: list[dict]) -> None:
    """samples.csv: one row per sample in CSV_COLUMNS (MLE scores flattened; the anomaly map left out)."""
    import csv
    import io

    from sage_cli.atomic import write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for s in samples:
        mle = s.get("mle") if isinstance(s.get("mle"), dict) else {}
        row = {**s, "mle_type": mle.get("type"), "mle_location": mle.get("location"), "mle_logic": mle.get("logic"),
               "mle": mle.get("mle")}
        w.writerow(["" if row.get(c) is None else row.get(c) for c in CSV_COLUMNS])
    write_text(Path(folder) / SAMPLES_CSV, buf.getvalue())


def read_results(folder: Path) -> dict | None:
    path = Path(folder) / RESULTS
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise SageError(f"{path}: unreadable results file; use --overwrite to start over") from None
    if not isinstance(d, dict) or d.get("results_format") != RESULTS_FORMAT:
        raise SageError(f"{path}: not a sage bench results file")
    return d


def write_results(folder: Path, results: dict) -> None:
    from sage_cli.atomic import write_text

    write_text(Path(folder) / RESULTS, json.dumps(results, indent=2, ensure_ascii=False) + "\n")


def read_samples(path: Path) -> dict[tuple[str, int], dict]:
    """(group_id, q) -> the last readable sample line for it (a torn last line is skipped)."""
    from sage_cli import jsonl

    out: dict[tuple[str, int], dict] = {}
    if not Path(path).exists():
        return out
    for _, rec in jsonl.read(path):
        if rec is None or rec.get("format") != SAMPLE_FORMAT:
            continue
        try:
            out[(str(rec["group_id"]), int(rec["q"]))] = rec
        except (KeyError, TypeError, ValueError):
            continue
    return out


def versions() -> dict:
    import platform

    from sage_cli import __version__

    out = {"sage": __version__, "python": platform.python_version()}
    for mod in ("torch", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = None
    return out


def git_commit() -> dict | None:
    """{commit, dirty} of the checkout sage runs from; None when it is not a git checkout (an installed copy)."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def default_out(fmt: str, backbone: str | None, checkpoint: str | None, shots: int) -> Path:
    """runs/bench/<format>-<checkpoint folder or backbone name>-<shots>shot."""
    import re

    from sage_cli.models.registry import SAGE_SMOL

    name = Path(checkpoint).name if checkpoint else Path(backbone).name if backbone else SAGE_SMOL
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"
    return Path("runs") / "bench" / f"{fmt}-{name}-{shots}shot"
