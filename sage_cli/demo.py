"""`sage demo`: the whole pipeline at toy scale on the bundled hazelnut photos, step by step.

synthetic defects -> facts -> QA groups with ranked answers -> MLE scores and pairs -> SFE -> E-DPO
-> infer on a defect pair (with heatmap) -> bench on the held-out groups. Each step calls the library
function behind one `sage` command, with the settings that command would get; the command is printed
before the step runs, so a user can type the same pipeline. What a step says (and what the libraries
print, such as weight-loading bars) goes to OUT/logs/<step>.log. A rerun skips the steps whose outputs
exist; the others resume by themselves (facts, scores, bench) or are cheap.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sage_cli import toy
from sage_cli.errors import SageError

INFER_QUESTION = "Is there any defect on the test object? Where is it?"


@dataclass
class Settings:
    out: Path
    backbone: str = "sage-smol"
    fast: bool = False  # a few steps and tokens: for tests and a first look
    seed: int = 0

    @property
    def image_size(self) -> int:
        return 112 if self.fast else 224

    @property
    def tokens(self) -> int:
        return 8 if self.fast else 48

    @property
    def sfe_steps(self) -> int:
        return 2 if self.fast else 30

    @property
    def edpo_steps(self) -> int:
        return 2 if self.fast else 15


@dataclass
class Step:
    name: str
    argv: list[str]  # the `sage` command doing the same: printed, and the log's first line
    work: Callable[[Callable[[str], None]], object]  # does it; gets log(line); returns what the report keeps
    done: Path | None = None  # present = finished (None: always run; the step skips finished work itself)


class Paths:
    """Where each step writes under OUT."""

    def __init__(self, out: Path):
        self.out = out
        self.synth, self.facts, self.prefs, self.scores = out / "synth", out / "facts.jsonl", out / "prefs", out / "scores"
        self.sfe, self.edpo, self.heatmap, self.bench = out / "sfe", out / "edpo", out / "heatmap.png", out / "bench"


def steps(s: Settings) -> list[Callable[[], Step]]:
    """Each step is made when its turn comes (infer needs a defect that synth made)."""
    p = Paths(s.out)
    return [lambda: _synth(s, p), lambda: _facts(s, p), lambda: _prefs(s, p), lambda: _scores(p),
            lambda: _train("sfe", s, p), lambda: _train("edpo", s, p), lambda: _infer(s, p), lambda: _bench(s, p)]


def _synth(s: Settings, p: Paths) -> Step:
    argv = ["data", "synth", "--from", str(toy.SAMPLE), "--out", str(p.synth), "--image-size", str(s.image_size),
            "--per-image", "1", "--seed", str(s.seed), "--preview"]
    return Step("synth", argv, lambda log: log(toy.synth(p.synth, s.image_size, s.seed, preview=True)),
                p.synth / "synth.json")


def _facts(s: Settings, p: Paths) -> Step:
    sets = [f"backbone={s.backbone}", f"max_new_tokens={s.tokens}", "batch_size=4"]
    argv = ["facts", "extract", "--from", str(p.synth), "--out", str(p.facts), *sets]

    def work(log):
        from sage_cli.config import load_recipe
        from sage_cli.facts import extract as fx

        cfg = load_recipe("default", "facts", sets)
        plan = fx.plan(p.synth, p.facts, cfg, cfg.backbone)
        written, _, _ = fx.run(plan, p.facts, cfg)
        log(f"{len(plan.todo)} images, {plan.done} had facts; wrote facts for {written} images → {p.facts}")

    return Step("facts", argv, work)


def _prefs(s: Settings, p: Paths) -> Step:
    argv = ["prefs", "build", "--from", str(p.synth), "--out", str(p.prefs), "--seed", str(s.seed), "--val-frac", "0.25"]
    return Step("prefs", argv, lambda log: log(toy.prefs(p.synth, p.prefs, s.seed, 0.25)), p.prefs / "prefs.json")


def _scores(p: Paths) -> Step:
    qa = p.prefs / "train.jsonl"
    argv = ["score", "mle", str(qa), "--out", str(p.scores), "--judge", "offline:sbert"]
    return Step("scores", argv, lambda log: log(toy.scores(qa, p.scores)))


def _train(stage: str, s: Settings, p: Paths) -> Step:
    out, n = (p.sfe, s.sfe_steps) if stage == "sfe" else (p.edpo, s.edpo_steps)
    common = [f"model.backbone={s.backbone}", "train.log_every=1"]
    # (flag, the recipe key it sets, value), in the order the command line gives them
    flags = [("--train", "data.train", p.prefs / "train.jsonl")] if stage == "sfe" else \
        [("--checkpoint", "model.checkpoint", p.sfe / "checkpoint"), ("--train", "data.train", p.scores / "pairs.jsonl")]
    flags += [("--facts", "data.facts", p.facts), ("--out", "train.output_dir", out)]
    argv = ["train", stage, *common, *[x for f, _, v in flags for x in (f, str(v))], f"train.max_steps={n}",
            "--overwrite"]
    overrides = [*common, *[f"{key}={v}" for _, key, v in flags], f"train.max_steps={n}"]
    return Step(stage, argv, lambda log: train_stage(stage, overrides, log), out / "checkpoint" / "config.json")


def train_stage(stage: str, overrides: list[str], log) -> dict:
    """`sage train STAGE OVERRIDES --overwrite` on one process: the run's summary."""
    from sage_cli.config import load_recipe, to_yaml
    from sage_cli.train.state import prepare_run_dir
    from sage_cli.train.trainer import Run

    cfg = load_recipe("sage-smol", stage, overrides)
    run_dir = Path(cfg.train.output_dir)
    run = Run(stage, cfg, run_dir, feature_cache=cfg.train.feature_cache)  # reads the data before clearing
    prepare_run_dir(run_dir, to_yaml(cfg), resume=False, overwrite=True)
    summary = run.run(log=log)
    log(f"{stage}: {summary['steps']} steps in {summary['train_s']:.1f} s; checkpoint: {summary['checkpoint']}")
    return summary


def _infer(s: Settings, p: Paths) -> Step:
    test, ref = example_pair(s)
    tokens = s.tokens * 2
    argv = ["infer", str(test), str(ref), "--checkpoint", str(p.edpo / "checkpoint"), "--facts", str(p.facts),
            "--heatmap", str(p.heatmap), "--json", "--max-new-tokens", str(tokens), "-q", INFER_QUESTION]

    def work(log) -> dict:
        from sage_cli.infer import Inputs, facts_for, load_engine, run_infer

        inputs = Inputs.read(test, ref, [INFER_QUESTION], heatmap=p.heatmap)
        engine, load_s = load_engine(None, p.edpo / "checkpoint")
        done = run_infer(engine, inputs, facts_for(str(p.facts), inputs, engine), tokens, timings={"load_s": load_s})
        report = done.report()
        log(json.dumps(report, indent=2))
        return report

    return Step("infer", argv, work)


def _bench(s: Settings, p: Paths) -> Step:
    root, ckpt = p.prefs / "val.jsonl", p.edpo / "checkpoint"
    argv = ["bench", "qa", "--root", str(root), "--checkpoint", str(ckpt), "--facts", str(p.facts), "--out",
            str(p.bench), "--max-new-tokens", str(s.tokens), "--resume"]

    def work(log):
        from sage_cli.bench.items import load_items
        from sage_cli.bench.runner import BenchOptions, run_bench

        opts = BenchOptions(fmt="qa", root=root, out=p.bench, checkpoint=str(ckpt), facts=p.facts,
                            max_new_tokens=s.tokens, seed=s.seed, resume=True)
        outcome = run_bench(opts, load_items("qa", root, opts.shots, seed=s.seed), note=log)
        log(f"results: {p.bench / 'results.json'}")
        for line in outcome.notes:
            log(f"note: {line}")

    return Step("bench", argv, work)


def example_pair(s: Settings) -> tuple[Path, Path]:
    """A synthetic crack and the normal photo it was drawn on (after the synth step)."""
    synth = s.out / "synth"
    for line in (synth / "synth.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "crack":
            return synth / rec["image"], synth / rec["source"]
    raise SageError(f"{synth}: no synthetic crack to show")


def run_step(step: Step, log_dir: Path) -> tuple[float, object]:
    """Do one step with its messages, and whatever the libraries print, in log_dir/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"{step.name}.log"
    buf = io.StringIO()
    t0 = time.perf_counter()
    try:
        # the libraries' own output (weight-loading bars, warnings) belongs in the log, not on the console
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            kept = step.work(lambda line: buf.write(line + "\n"))
    except SageError as e:
        buf.write(f"error: {e}\n")
        raise SageError(f"demo step {step.name!r} failed: {e} (log: {path})") from None
    finally:
        path.write_text(f"$ sage {' '.join(step.argv)}\n\n{buf.getvalue()}", encoding="utf-8")
    return time.perf_counter() - t0, kept


def run_demo(s: Settings, say=print) -> dict:
    report: dict = {"steps": {}}
    for make in steps(s):
        step = make()
        if step.done is not None and step.done.exists():
            say(f"[skip] {step.name}: {step.done} exists")
            continue
        say(f"$ sage {' '.join(step.argv)}")
        dt, kept = run_step(step, s.out / "logs")
        report["steps"][step.name] = round(dt, 1)
        if step.name == "infer":
            report["infer"] = kept
    return report
