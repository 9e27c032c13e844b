"""`sage bench speed ...`: speed against a plain baseline, both measured in the same run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from sage_cli.commands.options import Backbone, Checkpoint, Device, Dtype
from sage_cli.defaults import SAMPLE

HELP = "Speed against a plain baseline measured in the same run (ratios, not raw timings)."

_PHOTOS = SAMPLE / "hazelnut" / "train" / "good"

# Options the speed commands share.
TEST = typer.Option(None, "--test", help="Test image (default: a bundled hazelnut photo).")
REFERENCE = typer.Option(None, "--reference", help="Reference image (default: another bundled photo).")
NUM_FACTS = typer.Option(8, "--facts", min=0, help="Fact sentences fused into the prompt (Fact[FE]).")
OUT = typer.Option(None, "--out", help="Also write the figures as JSON here.")
AS_JSON = typer.Option(False, "--json", help="Print the figures as JSON instead of a table.")


def _setup(test, reference, zero_shot: bool, backbone, checkpoint, device: str, dtype: str, num_facts: int):
    """What a speed run answers with: the engine, the test / reference images (bundled photos by default;
    no reference zero-shot) and `num_facts` fixed fact sentences."""
    from sage_cli.data.images import load_rgb
    from sage_cli.models.checkpoint import resolve as resolve_checkpoint
    from sage_cli.models.engine import Engine

    checkpoint = resolve_checkpoint(checkpoint, backbone)
    test_img = load_rgb(test or _PHOTOS / "00.jpg")
    ref_img = None if zero_shot else load_rgb(reference or _PHOTOS / "01.jpg")
    engine = Engine.load(backbone, str(checkpoint) if checkpoint else None, dtype=dtype, device=device)
    facts = [f"Fact {i + 1}: hazelnuts can show cracks, holes, stains or print marks on the shell."
             for i in range(num_facts)]
    return engine, test_img, ref_img, facts


def _emit(res: dict, out, as_json: bool) -> bool:
    """Write the figures to `out` (if given); print them as JSON with --json. True when that was all."""
    from sage_cli import atomic

    if out is not None:
        atomic.write_text(out, json.dumps(res, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(res, indent=2))
    return as_json


def infer(
    test: Optional[Path] = TEST,
    reference: Optional[Path] = REFERENCE,
    backbone: Backbone = None,
    checkpoint: Checkpoint = None,
    num_facts: int = NUM_FACTS,
    new_tokens: int = typer.Option(64, "--new-tokens", min=2, help="Tokens generated per run on both sides."),
    repeats: int = typer.Option(5, "--repeats", min=1, help="Timed runs per side (medians are reported)."),
    device: Device = "auto",
    dtype: Dtype = "auto",
    out: Optional[Path] = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Time to first token and tokens/s of `sage infer` against plain `generate` of the same LLM.

    The plain side gets ordinary text of exactly the SAGE prompt's length; both sides generate the same
    number of tokens. Targets: both ratios <= 1.10. Peak memory: CUDA peak per side on a GPU, the
    process's peak RSS after each side on a CPU.
    """
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from sage_cli.bench.speed import infer_speed

    engine, test_img, ref_img, facts = _setup(test, reference, False, backbone, checkpoint, device, dtype, num_facts)
    question = "Is there any defect on the test object? Where is it and why does it matter?"
    with Progress(transient=True, disable=as_json) as bar:
        task = bar.add_task("timing plain generate, then sage", total=2 * repeats)
        res = infer_speed(engine, test_img, ref_img, facts, question, new_tokens, repeats,
                          progress=lambda: bar.advance(task))
    if _emit(res, out, as_json):
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


def train(
    train_file: Optional[Path] = typer.Option(None, "--train", help="QA groups for SFE (default: a toy set made from the bundled hazelnut photos)."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="Preference pairs for E-DPO (with --train)."),
    facts: Optional[Path] = typer.Option(None, "--facts", help="Facts JSON Lines (with --train)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Image root of the data (default: from its manifest)."),
    recipe: str = typer.Option("sage-smol", "--recipe", "-r", help="The sfe/ and edpo/ recipe of this name."),
    overrides: Optional[list[str]] = typer.Argument(None, help="Overrides applied to both recipes, e.g. train.batch_size=2."),
    steps: int = typer.Option(6, "--steps", min=1, help="Timed optimizer steps per run (each configuration runs twice)."),
    warmup: int = typer.Option(2, "--warmup", min=0, help="Untimed steps first."),
    examples: int = typer.Option(32, "--examples", min=1, help="Training examples used (the epoch comparison runs two epochs over them)."),
    long_prefix: int = typer.Option(0, "--long-prefix", min=0, help="Time on a random InternVL-shaped backbone (2-layer, SmolLM2-wide decoder) whose test + reference make about this many image tokens, e.g. 1024: where the prefix dominates. 0: the recipe's backbone."),
    out: Optional[Path] = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Shared-prefix training against each sequence run alone, SFE against plain fine-tuning, E-DPO with
    cached reference log-probs against a reference model run every step, and epoch time with the
    feature cache against without it.

    Targets: SFE examples/s shared / alone >= 2.5, SFE / plain (same grouping) <= 1.10, E-DPO shared /
    concatenated (both cached) <= 0.60, shared + cached / concatenated + live <= 0.45. Everything is
    measured in this run on the same backbone, data and batches.
    """
    import contextlib
    import tempfile

    from rich.console import Console
    from rich.table import Table

    from sage_cli.bench.train_speed import train_speed
    from sage_cli.config import load_recipe
    from sage_cli.errors import SageError

    console = Console(stderr=True)
    log = (lambda msg: None) if as_json else (lambda msg: console.print(f"· {msg}"))
    # DeepSpeed, which accelerate imports when it is installed, logs to stdout; with --json stdout must carry
    # the figures alone, so anything printed while measuring goes to stderr
    quiet = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    with quiet, tempfile.TemporaryDirectory(prefix="sage-toy-") as tmp:
        if train_file is None:
            from sage_cli.toy import make_toy_data

            log("making a toy data set from the bundled hazelnut photos")
            data = make_toy_data(Path(tmp))
        else:
            if pairs is None:
                raise SageError("--train needs --pairs too (E-DPO is measured on them)")
            data = {"qa": train_file, "pairs": pairs, "facts": facts, "root": root}
        shape = None
        if long_prefix:
            from sage_cli.bench.long_prefix import save_long_prefix_vlm

            log(f"building a random InternVL-shaped backbone with ~{long_prefix} image tokens")
            shape = save_long_prefix_vlm(Path(tmp) / "long-prefix-vlm", long_prefix)
        both = []
        for kind, train_data in (("sfe", data["qa"]), ("edpo", data["pairs"])):
            sets = [f"data.train={train_data}"] + ([f"data.facts={data['facts']}"] if data["facts"] else [])
            sets += [f"model.backbone={shape['path']}"] if shape else []
            sets += [f"data.root={data['root']}"] if data["root"] else []
            both.append(load_recipe(recipe, kind, sets + list(overrides or [])))
        res = train_speed(both[0], both[1], steps=steps, warmup=warmup, examples=examples, log=log)
        if shape:
            shape.pop("path")  # it lived in a temporary folder
            res["long_prefix_backbone"] = shape
    for k in ("sfe", "sfe_alone", "plain_sft", "edpo_cached_ref", "edpo_concat_ref", "edpo_live_ref",
              "epochs_with_cache", "epochs_without_cache"):
        res[k].pop("checkpoint", None)  # it lived in a temporary folder
    if _emit(res, out, as_json):
        return
    r = res["ratios"]

    def mem(x):
        return f"{x['rss_mb']:.0f} MiB" if x.get("rss_mb") is not None else "n/a"

    name = (f"random InternVL-shaped, {shape['image_tokens']} image tokens, {shape['decoder_layers']}-layer decoder"
            if shape else both[0].model.backbone)
    t = Table(title=f"training speed · {name} · 2 runs x {steps} steps per side, each after "
                    f"{warmup} warm-up · {examples} examples · ratio = median over the same batches")
    for col in ("comparison", "SAGE", "baseline", "ratio", "target", "peak mem (SAGE / base)"):
        t.add_column(col, justify="left" if col == "comparison" else "right")
    batch = both[0].train.batch_size

    def row(label, sage, base, ratio, target, per_s=False):
        show = (lambda x: f"{batch / x['step_s']:.2f} ex/s") if per_s else (lambda x: f"{x['step_s'] * 1e3:.0f} ms")
        t.add_row(label, show(res[sage]), show(res[base]), f"{r[ratio]:.2f}x", target,
                  f"{mem(res[sage])} / {mem(res[base])}")

    row("SFE examples/s: shared prefix vs each question alone", "sfe", "sfe_alone",
        "sfe_shared_vs_alone_examples_per_s", ">= 2.5", per_s=True)
    row("SFE step vs plain SFT (no facts), both shared", "sfe", "plain_sft", "sfe_vs_plain_step", "<= 1.10")
    row("E-DPO step: shared vs concatenated, cached ref", "edpo_cached_ref", "edpo_concat_ref",
        "edpo_shared_vs_concat_step", "<= 0.60")
    row("E-DPO step: shared + cached vs concat. + live ref", "edpo_cached_ref", "edpo_live_ref",
        "edpo_cached_vs_live_step", "<= 0.45")
    row("E-DPO step, concatenated: cached vs live ref", "edpo_concat_ref", "edpo_live_ref",
        "edpo_concat_cached_vs_live_step", "")
    w, wo = res["epochs_with_cache"], res["epochs_without_cache"]
    t.add_row("2nd epoch: feature cache vs none", f"{w['epoch_s'][-1]:.1f} s", f"{wo['epoch_s'][-1]:.1f} s",
              f"{r['epoch2_cache_vs_none']:.2f}x", "", f"{mem(w)} / {mem(wo)}")
    Console().print(t)
    per = [res[k].get("prompts_per_batch") for k in ("sfe", "edpo_cached_ref")]
    if None not in per:
        console.print(f"prompts per micro-batch (shared path): SFE {per[0]:.2f} (batch {both[0].train.batch_size}), "
                      f"E-DPO {per[1]:.2f} (batch {both[1].train.batch_size}); 1.00 = each prompt once per step")
    console.print(f"1st epoch with the cache (filling it): {w['epoch_s'][0]:.1f} s · E-DPO wall time incl. model "
                  f"load and, when cached, the one reference pass over the examples: cached "
                  f"{res['edpo_cached_ref']['total_s']:.1f} s, live {res['edpo_live_ref']['total_s']:.1f} s · peak memory "
                  "is training's, above the loaded model (on a CPU the process's first run also pays one-time "
                  "allocations; CUDA peaks are exact)")


def group(
    test: Optional[Path] = TEST,
    reference: Optional[Path] = REFERENCE,
    zero_shot: bool = typer.Option(False, "--zero-shot", help="No reference image."),
    backbone: Backbone = None,
    checkpoint: Checkpoint = None,
    questions_file: Optional[Path] = typer.Option(None, "--questions-file", help="The group's questions, one per line (default: five typical ones)."),
    num_facts: int = NUM_FACTS,
    new_tokens: int = typer.Option(32, "--new-tokens", min=1, help="Longest answer per question, on both sides."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed runs per side (medians are reported)."),
    device: Device = "auto",
    dtype: Dtype = "auto",
    out: Optional[Path] = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """A question group as `sage bench` answers it (one encoding and prefill, the questions decoded as one
    batch) against each question answered from scratch (its own encoding, prefill and decoding).

    Both on the same backbone, images and facts in this run. Target: from scratch / grouped >= 2.
    """
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from sage_cli.bench.group_speed import DEFAULT_QUESTIONS, group_speed
    from sage_cli.errors import SageError
    from sage_cli.models.engine import read_questions

    if zero_shot and reference is not None:
        raise SageError("--zero-shot and --reference contradict each other; give one")
    questions = read_questions(questions_file) if questions_file is not None else list(DEFAULT_QUESTIONS)
    engine, test_img, ref_img, facts = _setup(test, reference, zero_shot, backbone, checkpoint, device, dtype,
                                              num_facts)
    with Progress(transient=True, disable=as_json) as bar:
        task = bar.add_task("timing grouped, then from scratch", total=2 * repeats)
        res = group_speed(engine, test_img, ref_img, facts, questions, new_tokens, repeats,
                          progress=lambda: bar.advance(task))
    if _emit(res, out, as_json):
        return
    g, s = res["grouped"], res["scratch"]
    t = Table(title=f"question group: grouped vs from scratch · {res['backbone']} · {res['device']} {res['dtype']} · "
                    f"{res['questions']} questions, <= {new_tokens} new tokens each · median of {repeats}")
    for col in ("", "grouped (sage bench)", "from scratch", "ratio", "target"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row("whole group", f"{g['total_s'] * 1e3:.0f} ms", f"{s['total_s'] * 1e3:.0f} ms",
              f"{res['ratio']:.2f}x faster", ">= 2.00x")
    t.add_row("per question", f"{g['per_question_s'] * 1e3:.0f} ms", f"{s['per_question_s'] * 1e3:.0f} ms", "", "")
    t.add_row("new tokens", str(g["new_tokens"]), str(s["new_tokens"]), "", "")
    Console().print(t)
    Console(stderr=True).print(f"same answers on both sides: {res['same_answers']} of {res['questions']}")
    if out is not None:
        typer.echo(f"figures: {out}")


def serve(
    test: Optional[Path] = TEST,
    reference: Optional[Path] = REFERENCE,
    backbone: Backbone = None,
    checkpoint: Checkpoint = None,
    clients: str = typer.Option("1,8,32", "--clients", help="Concurrency levels, comma-separated."),
    max_tokens: int = typer.Option(16, "--max-tokens", min=1, help="Completion tokens per request."),
    device: Device = "auto",
    dtype: Dtype = "auto",
    out: Optional[Path] = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """N concurrent clients against one `sage serve` on loopback, each with its own image pair, against the
    same requests one at a time on the same server in the same run: requests/s and the ratio, p50/p95
    latency and time to first token, errors, answers identical to one-at-a-time, peak RSS."""
    from rich.console import Console
    from rich.table import Table

    from sage_cli.bench.serve_speed import serve_speed
    from sage_cli.errors import SageError

    try:
        levels = sorted({int(c) for c in clients.split(",") if c.strip()})
    except ValueError:
        raise SageError(f"--clients takes whole numbers separated by commas, not {clients!r}") from None
    if not levels or levels[0] < 1:
        raise SageError(f"--clients needs at least one level of 1 or more clients, not {clients!r}")
    engine, test_img, ref_img, _ = _setup(test, reference, False, backbone, checkpoint, device, dtype, 0)
    err = Console(stderr=True)
    res = serve_speed(engine, test_img, ref_img, levels, max_tokens, log=lambda m: err.print(f"[dim]{m}[/dim]"))
    if _emit(res, out, as_json):
        return
    t = Table(title=f"sage bench speed serve · {res['backbone']} · max_tokens {max_tokens} · peak RSS "
                    f"{res['peak_rss_mb']:.0f} MB")
    for c in ("clients", "requests", "errors", "req/s", "× one at a time", "p50 s", "p95 s", "TTFT p50 s",
              "same answers"):
        t.add_column(c, justify="right")

    def f(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    a = res["one_at_a_time"]
    t.add_row("1 (one at a time)", str(a["requests"]), str(a["errors"]), f(a["requests_per_s"]), "1.00",
              f(a["p50_s"]), f(a["p95_s"]), f(a["ttft_p50_s"]), "-")
    for lv in res["levels"]:
        t.add_row(str(lv["clients"]), str(lv["requests"]), str(lv["errors"]), f(lv["requests_per_s"]),
                  f(lv["ratio_vs_one_at_a_time"]), f(lv["p50_s"]), f(lv["p95_s"]), f(lv["ttft_p50_s"]),
                  f"{lv['same_answers']}/{lv['requests']}")
    Console().print(t)
