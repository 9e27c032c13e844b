"""`sage demo`: the whole pipeline at toy scale on the bundled hazelnut photos, on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where everything goes (a rerun skips finished steps)."),
    backbone: str = typer.Option("sage-smol", "--backbone", help="The backbone trained (default: the embedded sage-smol)."),
    fast: bool = typer.Option(False, "--fast", help="Two training steps and short answers: a quick look, not a result."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Run synth -> facts -> prefs -> scores -> SFE -> E-DPO -> infer -> bench on the bundled photos.

    Before each step the `sage` command doing the same is printed (the demo calls the library behind
    it; what the step says is in OUT/logs/). The scores come from the explicit offline scorer (SBERT similarity to the best answer), so no LLM
    endpoint is needed; point `sage score mle --base-url` at a judge for real MLE scores. Takes about
    six minutes on two CPU cores (--fast: about one).
    """
    from rich.console import Console
    from rich.table import Table

    from sage_cli.demo import Settings, run_demo

    console = Console(stderr=True, soft_wrap=True)
    s = Settings(out=out, backbone=backbone, fast=fast, seed=seed)
    report = run_demo(s, say=lambda line: console.print(line, markup=False, highlight=False))
    t = Table(title="sage demo", show_header=False)
    t.add_column(justify="left")
    t.add_column(justify="left", overflow="fold")  # paths in full, folded rather than cut
    for name, secs in report["steps"].items():
        t.add_row(f"step {name}", f"{secs:.1f} s")
    inf = report.get("infer")
    if inf:
        a = inf["answers"][0]
        t.add_row("infer: test / reference", f"{inf['test']}\n{inf['reference']}")
        t.add_row("infer: answer", a["answer"] or "(empty)")
        t.add_row("infer: P(yes)", f"{a['p_yes']:.2f}")
        if inf.get("anomaly"):
            t.add_row("infer: anomaly peak", f"{inf['anomaly']['max']:.3f} at patch {inf['anomaly']['peak']}")
    results = out / "bench" / "results.json"
    if results.is_file():
        m = json.loads(results.read_text(encoding="utf-8")).get("metrics", {})
        acc = m.get("accuracy", {})
        t.add_row("bench: accuracy (std / ident / diag / avg)",
                  " / ".join(f"{acc[k]:.2f}" if acc.get(k) is not None else "-"
                             for k in ("standard", "identification", "diagnosis", "average")))
        if m.get("acc_g") is not None:
            t.add_row("bench: Acc-G", f"{m['acc_g']:.2f}")
    for label, path in (("synthetic defects", out / "synth" / "preview.png"), ("facts", out / "facts.jsonl"),
                        ("QA groups", out / "prefs"), ("scores + pairs", out / "scores"),
                        ("SFE checkpoint", out / "sfe" / "checkpoint"), ("E-DPO checkpoint", out / "edpo" / "checkpoint"),
                        ("heatmap", out / "heatmap.png"), ("bench run", out / "bench"), ("logs", out / "logs")):
        if path.exists():
            t.add_row(label, str(path))
    Console().print(t)
