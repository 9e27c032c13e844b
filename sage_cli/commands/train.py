"""`sage train sfe` and `sage train edpo`: the two training stages (thin wrappers over sage_cli.train)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from sage_cli.commands.recipe_opts import OVERRIDES, PRINT_CONFIG, recipe_option
from sage_cli.train.launch import launched, relaunch

TRAIN = typer.Option(None, "--train", help="Training data (sets data.train): QA groups for sfe, pairs.jsonl for edpo.")
VAL = typer.Option(None, "--val", help="Validation data of the same kind (sets data.val).")
FACTS = typer.Option(None, "--facts", help="Facts JSON Lines from `sage facts extract` (sets data.facts).")
ROOT = typer.Option(None, "--root", help="Folder the data's image paths are relative to (sets data.root).")
CKPT = typer.Option(None, "--checkpoint", help="Start from this sage checkpoint (sets model.checkpoint).")
OUT = typer.Option(None, "--out", help="Run folder (sets train.output_dir).")
RESUME = typer.Option("no", "--resume", help="auto: continue the run in --out from its latest saved state; no: start fresh.")
OVERWRITE = typer.Option(False, "--overwrite", help="Start again in a run folder that holds an earlier run.")
DRY_RUN = typer.Option(False, "--dry-run", help="Print the plan (data, trainable parameters per part, steps); train nothing.")
RUN_DIR = typer.Argument(..., help="A run folder of `sage train sfe|edpo` (its metrics.jsonl).")
ACCEL = typer.Option(None, "--accelerate-config", help="Relaunch under `accelerate launch` with this config: a shipped name (cpu-2: two CPU processes; ddp: every GPU of one machine; fsdp: every GPU, parameters and optimizer states sharded (FSDP2); cpu-2-fsdp: the same on two CPU processes; zero2: every GPU, optimizer states and gradients partitioned (DeepSpeed ZeRO-2, needs deepspeed); cpu-2-zero2: the same on two CPU processes) or a path.")


def sfe(overrides: Optional[list[str]] = OVERRIDES, recipe: str = recipe_option("sage-smol"),
        train: Optional[Path] = TRAIN, val: Optional[Path] = VAL, facts: Optional[Path] = FACTS,
        root: Optional[Path] = ROOT, checkpoint: Optional[Path] = CKPT, out: Optional[Path] = OUT,
        resume: str = RESUME, overwrite: bool = OVERWRITE, dry_run: bool = DRY_RUN,
        accelerate_config: Optional[str] = ACCEL, print_config: bool = PRINT_CONFIG) -> None:
    """Stage 1, Self-Guided Fact Enhancement: cross-entropy on the best-ranked answers of QA groups.

    Trains the adapter, the fusion layer and its projection, and the LLM (LoRA or full); the vision
    encoder is frozen and its features are cached per image. Runs on one CPU, one GPU, or many
    processes under `accelerate launch` (or --accelerate-config). The run folder gets recipe.yaml,
    metrics.jsonl, resumable states (train.save_every) and the final checkpoint/.
    """
    _train("sfe", locals())


def edpo(overrides: Optional[list[str]] = OVERRIDES, recipe: str = recipe_option("sage-smol"),
         train: Optional[Path] = TRAIN, val: Optional[Path] = VAL, facts: Optional[Path] = FACTS,
         root: Optional[Path] = ROOT, checkpoint: Optional[Path] = CKPT, out: Optional[Path] = OUT,
         resume: str = RESUME, overwrite: bool = OVERWRITE, dry_run: bool = DRY_RUN,
         accelerate_config: Optional[str] = ACCEL, print_config: bool = PRINT_CONFIG) -> None:
    """Stage 2, entropy-aware DPO from an SFE checkpoint on the pairs of `sage score mle`.

    The policy (adapter + LLM; the fusion layer frozen) starts from the SFE checkpoint, which is also
    the reference: its log-probabilities of every chosen / rejected answer are computed once before
    training. Loss per pair: -log σ(β[Δlog π_chosen − Δlog π_rejected] − η·ΔH); η = 0 with
    edpo.pairs=min (or max) is plain DPO.
    """
    _train("edpo", locals())


def _train(stage: str, a: dict) -> None:
    from sage_cli.config import load_recipe, to_yaml
    from sage_cli.errors import SageError

    if a["resume"] not in ("auto", "no"):
        raise SageError(f"--resume must be auto or no, not {a['resume']!r}")
    overrides = list(a["overrides"] or [])
    for flag, key in (("train", "data.train"), ("val", "data.val"), ("facts", "data.facts"), ("root", "data.root"),
                      ("checkpoint", "model.checkpoint"), ("out", "train.output_dir")):
        if a[flag] is not None:
            overrides.append(f"{key}={a[flag]}")
    cfg = load_recipe(a["recipe"], stage, overrides)
    if a["print_config"]:
        typer.echo(to_yaml(cfg), nl=False)
        raise typer.Exit(0)
    if a["accelerate_config"] and not launched():
        raise typer.Exit(relaunch(a["accelerate_config"], sys.argv[1:]))

    from rich.console import Console

    from sage_cli.train.setup import missing_data, resolve_facts
    from sage_cli.train.state import check_run_dir, prepare_run_dir
    from sage_cli.train.trainer import Run

    console = Console(stderr=True, soft_wrap=True)
    run_dir = Path(cfg.train.output_dir)
    facts = resolve_facts(stage, cfg)  # may take the start checkpoint's facts.txt (then recipe.yaml says so)
    missing = missing_data(stage, cfg, facts)  # before any work; a dry run shows what it can, then lists them
    if missing and not a["dry_run"]:
        raise SageError(missing[0])
    if not a["dry_run"]:
        check_run_dir(run_dir, a["resume"] == "auto", a["overwrite"])
    run = Run(stage, cfg, run_dir, feature_cache=cfg.train.feature_cache, plan_only=a["dry_run"])
    main = run.accelerator.is_main_process
    if main:
        _print_plan(console, run, facts, missing)
    if a["dry_run"]:
        return
    if main:
        prepare_run_dir(run_dir, to_yaml(cfg), a["resume"] == "auto", a["overwrite"])
    run.accelerator.wait_for_everyone()
    summary = _with_progress(run, console, main, resume=a["resume"] == "auto")
    if main:
        val = summary.get("val")
        extra = f" · val loss {val['loss']:.4f}" if val else ""
        curves = run_dir / "plots" / "curves.png"
        console.print(f"{stage}: {summary['steps']} steps in {summary['train_s']:.1f} s "
                      f"({summary['samples_per_s']:.2f} samples/s){extra}\ncheckpoint: {summary['checkpoint']}\n"
                      f"metrics: {run_dir / 'metrics.jsonl'}" + (f"\ncurves: {curves}" if curves.is_file() else ""))


def _with_progress(run, console, main: bool, resume: bool) -> dict:
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeRemainingColumn())
    with Progress(*cols, console=console, disable=not main, transient=False) as bar:

        @contextlib.contextmanager
        def phase(label, total):
            """A pass before training (feature cache, E-DPO reference): a bar of its own, in a terminal only."""
            task = bar.add_task(label, total=total, info="", visible=console.is_terminal)
            yield lambda n: bar.advance(task, n)

        steps: list = []  # the steps' bar, added at the first step: below the bars of the passes before it

        def progress(step, rec):
            if not steps:
                steps.append(bar.add_task(run.stage, total=run.plan.total_steps, info=""))
            info = f"loss {rec['loss']:.4f} · {rec['samples_per_s']:.2f} samples/s"
            if "rewards/accuracy" in rec:
                info += f" · acc {rec['rewards/accuracy']:.2f}"
            if "val/loss" in rec:
                info += f" · val {rec['val/loss']:.4f}"
            bar.update(steps[0], completed=step, info=info)

        return run.run(resume=resume, progress=progress, log=console.print, phase=phase)


def plot(run_dir: Path = RUN_DIR) -> None:
    """Redraw RUN/plots/curves.png from RUN/metrics.jsonl: loss (and validation loss), learning rate,
    gradient norm; E-DPO's reward margins and accuracy. Works on a run that is still going."""
    from sage_cli.train import curves

    out = curves.draw(run_dir)
    typer.echo(out if out is not None else curves.NO_MATPLOTLIB, err=out is None)


def _print_plan(console, run, facts: str | None, missing: list[str]) -> None:
    from rich.table import Table

    p = run.plan
    t = Table(title=f"sage train {p.stage} · {run.recipe.model.backbone}", show_header=True)
    t.add_column("part")
    t.add_column("trainable", justify="right")
    t.add_column("frozen", justify="right")
    for part in sorted(set(p.trainable) | set(p.frozen)):
        t.add_row(part, f"{p.trainable.get(part, 0):,}", f"{p.frozen.get(part, 0):,}")
    console.print(t)
    if facts is not None:
        console.print(f"facts: {facts}")
    if missing:  # a dry run that lacks data: the plan above is what it could say
        console.print("missing:\n" + "\n".join(f"  {m}" for m in missing))
        return
    console.print(f"data: {p.examples} training examples, {p.val_examples} validation · {p.world_size} process(es) × "
                  f"batch {p.batch_size} × accumulation {p.grad_accum} = {p.global_batch} per step · "
                  f"{p.steps_per_epoch} steps per epoch · {p.total_steps} steps")
    console.print(f"shared prefix: {_shared_prefix_line(run)}")


def _shared_prefix_line(run) -> str:
    """How the micro-batches run their prompts: each shared prefix once (packed), or each sequence alone."""
    from sage_cli.train.packing import attn_implementation, can_pack

    if not run.recipe.train.shared_prefix:
        return "off (train.shared_prefix=false): each sequence runs alone"
    attn = attn_implementation(run.model)
    if not can_pack(run.model):
        return f"on, but {attn} attention takes no 4-D mask: each sequence runs alone"
    prompts = len({e.prefix for e in run.train_set})
    return (f"{run.plan.examples} examples on {prompts} prompts; each prompt runs once per micro-batch "
            f"({attn}, packed)")
