"""`sage demo`: the whole pipeline at toy scale on the bundled hazelnut photos, as the commands a user types.

synthetic defects -> facts -> QA groups with ranked answers -> MLE scores and pairs -> SFE -> E-DPO
-> infer on a defect pair (with heatmap) -> bench on the held-out groups. Each step is one `sage`
command run in-process; its output goes to OUT/logs/<step>.log and one summary line is printed. A
rerun skips the steps whose outputs exist (each command is itself resumable or atomic).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sage_cli.errors import SageError
from sage_cli.toy import SAMPLE, last_line, run_captured


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


def steps(s: Settings) -> list[tuple[str, object, Path | None]]:
    """(name, sage argv (or a function making it once earlier steps ran), the output whose presence means
    the step is done; None = always run, the command itself skips finished work)."""
    o, b = s.out, s.backbone
    synth, facts, prefs, scores = o / "synth", o / "facts.jsonl", o / "prefs", o / "scores"
    sfe, edpo = o / "sfe", o / "edpo"
    common = [f"model.backbone={b}", "train.log_every=1"]
    return [
        ("synth", ["data", "synth", "--from", str(SAMPLE), "--out", str(synth), "--image-size", str(s.image_size),
                   "--per-image", "1", "--seed", str(s.seed), "--preview"], synth / "synth.json"),
        ("facts", ["facts", "extract", "--from", str(synth), "--out", str(facts), f"backbone={b}",
                   f"max_new_tokens={s.tokens}", "batch_size=4"], None),  # resumable by itself
        ("prefs", ["prefs", "build", "--from", str(synth), "--out", str(prefs), "--seed", str(s.seed),
                   "--val-frac", "0.25"], prefs / "prefs.json"),
        ("scores", ["score", "mle", str(prefs / "train.jsonl"), "--out", str(scores), "--judge", "offline:sbert"],
         None),
        ("sfe", ["train", "sfe", *common, "--train", str(prefs / "train.jsonl"), "--facts", str(facts), "--out",
                 str(sfe), f"train.max_steps={s.sfe_steps}", "--overwrite"], sfe / "checkpoint" / "config.json"),
        ("edpo", ["train", "edpo", *common, "--checkpoint", str(sfe / "checkpoint"), "--train",
                  str(scores / "pairs.jsonl"), "--facts", str(facts), "--out", str(edpo),
                  f"train.max_steps={s.edpo_steps}", "--overwrite"], edpo / "checkpoint" / "config.json"),
        ("infer", lambda: ["infer", *map(str, example_pair(s)), "--checkpoint", str(edpo / "checkpoint"), "--facts", str(facts),
                   "--heatmap", str(o / "heatmap.png"), "--json", "--max-new-tokens", str(s.tokens * 2),
                   "-q", "Is there any defect on the test object? Where is it?"], None),
        ("bench", ["bench", "qa", "--root", str(prefs / "val.jsonl"), "--checkpoint", str(edpo / "checkpoint"),
                   "--facts", str(facts), "--out", str(o / "bench"), "--max-new-tokens", str(s.tokens), "--resume"],
         None),
    ]


def example_pair(s: Settings) -> tuple[Path, Path]:
    """A synthetic crack and the normal photo it was drawn on (after the synth step)."""
    synth = s.out / "synth"
    for line in (synth / "synth.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "crack":
            return synth / rec["image"], synth / rec["source"]
    raise SageError(f"{synth}: no synthetic crack to show")


def run_step(name: str, argv: list[str], log_dir: Path) -> tuple[float, str]:
    """Run `sage argv` in-process, its output to log_dir/<name>.log; returns (seconds, stdout)."""
    t0 = time.perf_counter()
    rc, out, err = run_captured(argv)
    dt = time.perf_counter() - t0
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{name}.log").write_text(f"$ sage {' '.join(argv)}\n\n{out}\n{err}", encoding="utf-8")
    if rc != 0:
        raise SageError(f"demo step {name!r} failed: {last_line(err)} (log: {log_dir / f'{name}.log'})")
    return dt, out


def run_demo(s: Settings, say=print) -> dict:
    log_dir = s.out / "logs"
    report: dict = {"steps": {}}
    for name, argv, done in steps(s):
        argv = argv() if callable(argv) else argv
        if done is not None and done.exists():
            say(f"[skip] {name}: {done} exists")
            continue
        say(f"$ sage {' '.join(argv)}")
        dt, stdout = run_step(name, argv, log_dir)
        report["steps"][name] = round(dt, 1)
        if name == "infer":
            report["infer"] = json.loads(stdout)
    return report
