"""`sage bench speed ...`: speed against a plain baseline, both measured in the same run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

speed_app = typer.Typer(help="Speed against a plain baseline measured in the same run (ratios, not raw timings).",
                        no_args_is_help=True)

_SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "hazelnut_sample" / "hazelnut" / "train" / "good"


@speed_app.command("infer")
def infer(
    test: Optional[Path] = typer.Option(None, "--test", help="Test image (default: a bundled hazelnut photo)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Reference image (default: another bundled photo)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone name or VLM path (default sage-smol)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="A sage checkpoint directory."),
    num_facts: int = typer.Option(8, "--facts", min=0, help="Fact sentences fused into the prompt (Fact[FE])."),
    new_tokens: int = typer.Option(64, "--new-tokens", min=2, help="Tokens generated per run on both sides."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed runs per side (medians are reported)."),
    device: str = typer.Option("auto", "--device"),
    dtype: str = typer.Option("auto", "--dtype"),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the figures as JSON here."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON instead of a table."),
) -> None:
    """Time to first token and tokens/s of `sage infer` against plain `generate` of the same LLM.

    The plain side gets ordinary text of exactly the SAGE prompt's length; both sides generate the same
    number of tokens. Targets: both ratios <= 1.10. Peak memory: CUDA peak per side on a GPU, the
    process's peak RSS after each side on a CPU.
    """
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from sage_cli import atomic
    from sage_cli.bench.speed import infer_speed
    from sage_cli.data.images import load_rgb
    from sage_cli.models.engine import Engine

    test_img = load_rgb(test or _SAMPLE / "00.jpg")
    ref_img = load_rgb(reference or _SAMPLE / "01.jpg")
    engine = Engine.load(backbone, str(checkpoint) if checkpoint else None, dtype=dtype, device=device)
    facts = [f"Fact {i + 1}: hazelnuts can show cracks, holes, stains or print marks on the shell."
             for i in range(num_facts)]
    question = "Is there any defect on the test object? Where is it and why does it matter?"
    with Progress(transient=True, disable=as_json) as bar:
        task = bar.add_task("timing plain generate, then sage", total=2 * repeats)
        res = infer_speed(engine, test_img, ref_img, facts, question, new_tokens, repeats,
                          progress=lambda: bar.advance(task))
    if out is not None:
        atomic.write_text(out, json.dumps(res, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    t = Table(title=f"sage infer vs plain generate · {res['backbone']} · {res['device']} {res['dtype']} · "
                    f"{res['prompt_tokens']} prompt + {res['new_tokens']} new tokens · median of {repeats}")
    for col in ("", "plain generate", "sage infer", "ratio", "target"):
        t.add_column(col, justify="right" if col else "left")
    p, s, r = res["plain"], res["sage"], res["ratios"]
    t.add_row("time to first token (LLM)", f"{p['ttft_s'] * 1e3:.1f} ms", f"{s['ttft_s'] * 1e3:.1f} ms",
              f"{r['ttft']:.2f}x", "<= 1.10")
    t.add_row("  + image encoding and fusion", "", f"{s['ttft_with_images_s'] * 1e3:.1f} ms",
              f"{r['ttft_with_images']:.2f}x", "")
    t.add_row("decoding", f"{p['tokens_per_s']:.1f} tok/s", f"{s['tokens_per_s']:.1f} tok/s",
              f"{r['per_token']:.2f}x time/token", "<= 1.10")
    m = res["peak_memory_mb"]
    if m["plain_cuda"] is not None:
        t.add_row("peak CUDA memory", f"{m['plain_cuda']:.0f} MiB", f"{m['sage_cuda']:.0f} MiB",
                  f"{m['sage_cuda'] / m['plain_cuda']:.2f}x", "")
    t.add_row("peak RSS after the side", f"{m['rss_after_plain']:.0f} MiB", f"{m['rss_after_sage']:.0f} MiB", "", "")
    Console().print(t)
    if out is not None:
        typer.echo(f"figures: {out}")
