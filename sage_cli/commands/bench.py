"""`sage bench manta|mpdd|mmad|qa|mvtec --root ROOT` and `sage bench compare RUN...`: the paper's metrics.

cli.py registers `command_for(fmt)` once per format, and `compare`. The work is in sage_cli/bench/
(items: formats -> items; runner: the loop; metrics; verdict: reading answers; plots; report: tables).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sage_cli.commands.options import Backbone, Checkpoint, Device, Dtype

FORMAT_HELP = {
    "manta": "MANTA QA: JsonData/<domain>_QA.json with ImageData/<domain>/ (five yes/no questions per record).",
    "mpdd": "MPDD-QA (MANTA's schema): JsonData/<domain>_QA.json with ImageData/<domain>/.",
    "mmad": "MMAD: mmad.json keyed by image path; multiple-choice questions graded on the letter.",
    "qa": "sage-qa/1 QA-group JSON Lines: one file, or every such file in a folder (for `sage prefs build`'s OUT, "
          "give OUT/val.jsonl to score the held-out split only).",
    "mvtec": "An MVTec-layout folder (MVTec AD, MPDD, ...): QA groups built on the fly from the annotations.",
}


PROTOCOL_HELP = {
    fmt: ("How answers are asked and counted: sage (default: the question as worded, sage's grader, "
          "question-weighted accuracy) or paper (the SAGE authors' code: ' Answer with True or False and provide a "
          "reason.' appended, yes iff the answer starts with true/yes)." if fmt != "mmad" else
          "How answers are counted: mmad (default: MMAD's official summary, unreadable letters dropped, balanced "
          "Anomaly Detection accuracy, mean over question types then data sets) or sage (question-weighted, "
          "unreadable counted wrong).")
    for fmt in FORMAT_HELP
}


def command_for(fmt: str):
    """The `sage bench FMT` command (registered once per format)."""

    def bench(
        root: Path = typer.Option(..., "--root", help="The data set (see above)."),
        checkpoint: Checkpoint = None,
        backbone: Backbone = None,
        shots: int = typer.Option(1, "--shots", help="1: with the normal reference image (one-shot); 0: the test image alone (zero-shot); N > 1: N normal references per item, drawn from the data set's normal images with --seed (the anomaly map compares with the union of their patches)."),
        limit: Optional[int] = typer.Option(None, "--limit", min=1, help="At most N items per category (a stable seeded choice, as `sage prefs build --limit`)."),
        categories: Optional[str] = typer.Option(None, "--categories", help="Only these categories, comma-separated (e.g. bottle,screw)."),
        facts: Optional[Path] = typer.Option(None, "--facts", help="Fact sentences: a facts JSONL from `sage facts extract` (matched by image hash) or a text file (one fact per line, for every image)."),
        judge: Optional[str] = typer.Option(None, "--judge", help="MLE scores by a judge: an OpenAI-compatible URL (http://HOST:PORT/v1), 'endpoint' (the score recipe's), or 'offline:sbert'."),
        judge_model: Optional[str] = typer.Option(None, "--judge-model", help="The judge's model name at the endpoint."),
        out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/bench/FORMAT-MODEL-Nshot)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out: answer only the questions not in its samples.jsonl."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --out."),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="Longest answer, in tokens."),
        device: Device = "auto",
        dtype: Dtype = "auto",
        seed: int = typer.Option(0, "--seed", help="Seeds --limit's choice, MVTec references and untrained SAGE layers."),
        sbert: bool = typer.Option(True, "--sbert/--no-sbert", help="SBERT similarity to the best-ranked answer (all-MiniLM-L6-v2)."),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="PNG plots under RUN_DIR/plots (needs matplotlib)."),
        strict: bool = typer.Option(False, "--strict", help="Stop at the first data problem (or a group with no detection label) instead of skipping it."),
        detect_question: Optional[str] = typer.Option(None, "--detect-question", help="Read detection AUROC from this one yes/no question's P(yes), asked of every image (e.g. 'Is there any defect on the test object?'), instead of from each group's own detection question, whose wording varies."),
        protocol: Optional[str] = typer.Option(None, "--protocol", help=PROTOCOL_HELP[fmt]),
        grader: str = typer.Option("text", "--grader", help="Who reads a yes/no answer (protocol sage): text (sage's reader, P(yes) where it finds no verdict), probe (ask again with 'Answer yes or no.' and take P(yes)), or an OpenAI-compatible URL (an LLM reads each answer)."),
        grader_model: Optional[str] = typer.Option(None, "--grader-model", help="The grading LLM's model name at --grader URL."),
        wordings: str = typer.Option("seen", "--wordings", help="mvtec: word the built questions as training does (seen), in the held-out families no training build uses (held-out: other vocabularies for place, type, decisions), or both (ten questions per image). Every format reports accuracy on seen and unseen wordings apart."),
        guided: bool = typer.Option(True, "--guided/--no-guided", help="With a calibrated checkpoint (--shots 0: calibrated with `sage calibrate --shots 0`): the first word (yes/no) of answers on whether the part is defective or normal, or where the defect is, comes from the calibrated detection and the anomaly map, as in `sage infer` (models/guide.py). --no-guided grades the model's own first word."),
        as_json: bool = typer.Option(False, "--json", help="Print results.json instead of tables."),
    ) -> None:
        from sage_cli.bench.runner import BenchOptions

        opts = BenchOptions(fmt=fmt, root=root, out=out, backbone=backbone, checkpoint=checkpoint, shots=shots,
                            facts=facts, max_new_tokens=max_new_tokens, limit=limit, categories=categories, seed=seed,
                            device=device, dtype=dtype, sbert=sbert, judge=judge, judge_model=judge_model, plots=plots,
                            resume=resume, overwrite=overwrite, strict=strict, detect_question=detect_question,
                            protocol=protocol, grader=grader, grader_model=grader_model, wordings=wordings,
                            guided=guided)
        _run(opts, as_json)

    bench.__doc__ = (f"Benchmark on {fmt} data: accuracy per level and overall, Acc-G, SBERT, detection AUROC "
                     f"(with its n) and F1-max, pixel AUROC and AUPRO where masks exist, per-category accuracy"
                     f"{', accuracy per question type' if fmt == 'mmad' else ''}, and MLE scores with --judge "
                     f"(the paper's Tables 1-3).\n\n{FORMAT_HELP[fmt]}\n\n"
                     "Each item's images and facts are encoded once and its questions answered as one batch. "
                     "RUN_DIR gets results.json, samples.jsonl (one line per answered question, written as they "
                     "come; --resume skips finished items), samples.csv and plots/. How an answer's verdict was "
                     "reached is in samples.jsonl (verdict_source).")
    return bench


def _resolve(opts) -> None:
    """Every option checked, and the defaults filled in, before any data is read or model loaded."""
    from sage_cli.bench import rundir
    from sage_cli.bench.grading import check_grader, resolve_protocol
    from sage_cli.bench.runner import detect_polarity
    from sage_cli.errors import SageError
    from sage_cli.models.checkpoint import resolve as resolve_checkpoint
    from sage_cli.data.categories import parse_categories

    opts.protocol = resolve_protocol(opts.protocol, opts.fmt)
    check_grader(opts.grader, opts.protocol)
    if opts.shots < 0:
        raise SageError(f"--shots must be 0 (zero-shot), 1 (one-shot) or more (normal references per item), got {opts.shots}")
    if opts.detect_question is not None and opts.fmt == "mmad":
        raise SageError("--detect-question needs yes/no data; MMAD's questions are multiple choice")
    detect_polarity(opts.detect_question)  # a question that asks neither way fails before any work
    if opts.wordings not in ("seen", "held-out", "both"):
        raise SageError(f"--wordings must be seen, held-out or both, got {opts.wordings!r}")
    if opts.wordings != "seen" and opts.fmt != "mvtec":
        raise SageError(f"--wordings {opts.wordings} words questions that sage builds (mvtec); {opts.fmt} data "
                        "bring their own questions (their accuracy on seen and unseen wordings is reported anyway)")
    checkpoint = resolve_checkpoint(opts.checkpoint, opts.backbone)
    opts.checkpoint = str(checkpoint) if checkpoint else None
    if opts.resume and opts.overwrite:
        raise SageError("--resume and --overwrite contradict each other; give one")
    if not Path(opts.root).exists():
        raise SageError(f"{opts.root}: no such file or directory")
    opts.categories = parse_categories(opts.categories)
    opts.out = opts.out or rundir.default_out(opts.fmt, opts.backbone, opts.checkpoint, opts.shots)


def _run(opts, as_json: bool) -> None:
    import json
    import sys

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sage_cli.bench import rundir
    from sage_cli.bench.items import load_items
    from sage_cli.bench.runner import run_bench

    _resolve(opts)
    loaded = load_items(opts.fmt, Path(opts.root), opts.shots, opts.categories, opts.limit, opts.seed, opts.strict,
                        opts.wordings)
    err = Console(stderr=True)
    notes: list[str] = []
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=err, transient=True, disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task(f"bench {opts.fmt}", total=len(loaded.items))
        outcome = run_bench(opts, loaded, progress=lambda n, total: bar.update(task, completed=n), note=notes.append)
    res = outcome.results
    if as_json:
        sys.stdout.write(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
        return
    console = Console()
    console.print(_run_table(res, Path(opts.out)))
    for extra in (_mmad_table(res), _detection_table(res)):
        if extra is not None:
            console.print(extra)
    _breakdowns(console, res)
    for line in [*res.get("notes", []), *notes]:
        err.print(f"note: {line}")
    t = res["timing"]
    if t.get("per_group_s") is not None:
        tps = f" · {t['tokens_per_s']:.1f} tokens/s" if t.get("tokens_per_s") else ""
        err.print(f"{res['counts']['answered_this_run']} questions answered in this run · "
                  f"{t['per_group_s']:.2f} s per group{tps} · load {t['load_s']:.1f} s")
    console.print(f"results: {Path(opts.out) / rundir.RESULTS}")


def _detection_table(res: dict):
    """Image- and pixel-level anomaly detection (anomalib's metrics), when the run has them."""
    from rich.table import Table

    from sage_cli.bench.report import detection_rows

    rows = detection_rows(res)
    if not rows:
        return None
    t = Table(title="anomaly detection (n = images scored)")
    for c in ("score", "AUROC", "F1-max", "threshold", "n", "pixel AUROC", "AUPRO@0.3"):
        t.add_column(c, justify="left" if c == "score" else "right")
    for r in rows:
        t.add_row(*r)
    return t


def _mmad_table(res: dict):
    from rich.table import Table

    mm = res["metrics"].get("mmad")
    if not mm:
        return None
    types = list(mm["mean"])
    t = Table(title=f"MMAD official summary (protocol mmad; {mm['dropped_unreadable']} unreadable answers dropped)")
    t.add_column("data set")
    for c in types:
        t.add_column(c, justify="right")
    for name, row in [*mm["per_dataset"].items(), ("Average", mm["mean"])]:
        t.add_row(name, *[f"{row[c]:.1f}" if row.get(c) is not None else "-" for c in types])
    return t


def _run_table(res: dict, out: Path):
    from rich.table import Table

    from sage_cli.bench.report import COLUMNS, MLE_COLUMNS, cells

    cfg, counts = res["config"], res["counts"]
    model = Path(cfg["checkpoint"]).name if cfg.get("checkpoint") else cfg.get("backbone_loaded") or cfg.get("backbone") or "sage-smol"
    mle = bool(res["metrics"].get("mle"))
    t = Table(title=f"sage bench {res['format']} · {out.name} · {model} · {cfg['shots']}-shot · protocol "
                    f"{res.get('protocol', 'sage')} · {counts['groups']} groups, {counts['questions']} questions")
    for c in (*COLUMNS, *(MLE_COLUMNS if mle else ())):
        t.add_column(c, justify="right")
    t.add_row(*cells(res, mle))
    return t


def _breakdowns(console, res: dict) -> None:
    from rich.table import Table

    m = res["metrics"]
    for key, title in (("per_category", "category"), ("mmad_per_type", "question type")):
        parts = m.get(key)
        if not parts or (key == "per_category" and len(parts) < 2):
            continue
        t = Table(title=f"accuracy by {title}")
        for c in (title, "groups", "questions", "accuracy", "Acc-G"):
            t.add_column(c, justify="left" if c == title else "right")
        for name, v in parts.items():
            t.add_row(name, str(v["groups"]), str(v["questions"]), f"{100 * v['accuracy']:.1f}",
                      f"{100 * v['acc_g']:.1f}" if v["acc_g"] is not None else "-")
        console.print(t)
    wording, base = m.get("per_wording"), m.get("baselines")
    if wording:
        t = Table(title="accuracy by wording (seen: a training template's words; unseen: any other, e.g. "
                        "--wordings held-out)")
        for c in ("wording", "questions", "accuracy", "Acc-G"):
            t.add_column(c, justify="left" if c == "wording" else "right")
        rows = [(k, v) for k, v in wording.items() if k != "families"]
        rows += [(f"  held-out family: {k}", v) for k, v in (wording.get("families") or {}).items()]
        for name, v in rows:
            t.add_row(name, str(v["questions"]), f"{100 * v['accuracy']:.1f}",
                      f"{100 * v['acc_g']:.1f}" if v["acc_g"] is not None else "-")
        for name, label in (("always_no", 'always "No" (all questions)'), ("always_yes", 'always "Yes"')):
            if base and base.get(name):
                b = base[name]
                t.add_row(label, "", f"{100 * b['average']:.1f}", f"{100 * b['acc_g']:.1f}")
        console.print(t)
    rel = m.get("answers_question")
    if rel:
        t = Table(title="by what the question asks: answers that carry it (a place, a kind, a consequence, a "
                        "verdict in words), accuracy, and P(yes) against the truth (normal: yes = the part is fine)")
        for c in ("question asks", "questions", "answers it", "accuracy", "P(yes) AUROC"):
            t.add_column(c, justify="left" if c == "question asks" else "right")
        for kind, v in rel.items():
            auc = v.get("p_yes_auroc")
            t.add_row(kind, str(v["n"]), f"{100 * v['rate']:.1f}", f"{100 * v['accuracy']:.1f}",
                      "-" if auc is None else f"{auc:.3f}")
        console.print(t)


def compare(
    runs: list[Path] = typer.Argument(..., help="Run folders of `sage bench` (or their results.json files)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write comparison.csv, comparison.md and accuracy_by_level.png here."),
) -> None:
    """Runs side by side, one row each, in the columns of the paper's Tables 1 and 3 (accuracy per level,
    Average, Acc-G, SBERT, AUROC; MLE scores when any run has them)."""
    from rich.console import Console
    from rich.table import Table

    from sage_cli.bench import report, rundir
    from sage_cli.errors import SageError

    names, results = [], []
    for r in runs:
        folder = r.parent if r.is_file() else r
        if not folder.is_dir():
            raise SageError(f"{r}: no such run folder")
        res = rundir.read_results(folder)
        if res is None:
            raise SageError(f"{r}: no {rundir.RESULTS} here (not a `sage bench` run folder)")
        if not res.get("metrics"):
            raise SageError(f"{folder / rundir.RESULTS}: the run has no metrics yet (status {res.get('status')}); "
                            f"finish it with --resume")
        names.append(folder.resolve().name)
        results.append(res)
    if len(set(names)) < len(names):  # same folder name in different places: show more of the path
        names = [str(Path(r.parent if r.is_file() else r)) for r in runs]
    mle, words = report.has_mle(results), report.has_wordings(results)
    t = Table(title=f"sage bench compare · {len(results)} runs")
    for c in ("run", "format", "protocol", "shots", *report.COLUMNS, *(report.MLE_COLUMNS if mle else ()),
              *(report.WORDING_COLUMNS if words else ())):
        t.add_column(c, justify="left" if c in ("run", "format", "protocol") else "right")
    for name, res in zip(names, results):
        t.add_row(name, str(res.get("format")), report.protocol_of(res), str((res.get("config") or {}).get("shots")),
                  *report.cells(res, mle), *(report.wording_cells(res) if words else ()))
    console = Console()
    console.print(t)
    err = Console(stderr=True)
    protocols = sorted({report.protocol_of(r) for r in results})
    if len(protocols) > 1:
        err.print(f"note: the runs were graded under different protocols ({', '.join(protocols)}): their accuracy "
                  "columns measure different things and are not comparable")
    if len({(r.get("format"), r.get("root")) for r in results}) > 1:
        err.print("note: the runs are on different data; compare their numbers with care")
    if out is not None:
        from sage_cli import atomic
        from sage_cli.bench import plots

        if out.exists() and not out.is_dir():
            raise SageError(f"{out}: --out must be a folder")
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(out / "comparison.csv", report.to_csv(names, results))
        atomic.write_text(out / "comparison.md", report.to_markdown(names, results))
        written = ["comparison.csv", "comparison.md"]
        if plots.available():
            plots.accuracy_by_level([(n, r["metrics"]["accuracy"]) for n, r in zip(names, results)],
                                    out / "accuracy_by_level.png", title="Accuracy by level")
            written.append("accuracy_by_level.png")
        else:
            err.print("note: plot skipped: matplotlib is not installed (pip install 'sage-cli[plots]')")
        console.print(f"written: {', '.join(str(out / w) for w in written)}")
