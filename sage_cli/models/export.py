"""A sage checkpoint in the layouts the rest of the stack reads: PEFT's adapter folder, or a merged HF LLM.

``peft``::

    OUT/adapter_config.json          PEFT's LoraConfig (peft_type LORA, task CAUSAL_LM)
    OUT/adapter_model.safetensors    the LoRA matrices in PEFT's key layout (base_model.model.<llm key>)
    OUT/sage_layers.safetensors      what PEFT does not hold: adapter, fusion, projection
    OUT/sage.json                    the checkpoint's config.json (backbone, SAGE settings, LoRA) + "export"
    OUT/README.md                    a model card in the Hub's format; facts.txt when the checkpoint has one

``PeftModel.from_pretrained(base_llm, OUT)`` loads the LoRA on the backbone's LLM; `--checkpoint OUT`
loads the whole SAGE model back (`checkpoint.load_into` reads both layouts).

``hf``: the LoRA merged into the LLM, saved with ``save_pretrained`` under OUT/llm/ (with its tokenizer),
beside sage_layers.safetensors, sage.json and README.md. `--checkpoint OUT` loads it back too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from sage_cli.atomic import swap_in_dir
from sage_cli.errors import SageError
from sage_cli.models.export_layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, EXPORT_CONFIG, LLM_DIR, SAGE_LAYERS, peft_key

FORMATS = ("peft", "hf")
SAGE_PREFIXES = ("adapter.", "fusion.", "projector.")

# The LLM each packaged backbone was built from, as the Hub names it (what base_model_name_or_path says).
BASE_LLM = {"sage-smol": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def split_state(state: dict) -> tuple[dict, dict, dict]:
    """(SAGE layers, LoRA matrices, other trained LLM weights) of a checkpoint's tensors."""
    sage = {k: v for k, v in state.items() if k.startswith(SAGE_PREFIXES)}
    lora = {k: v for k, v in state.items() if k.startswith("llm.") and ".lora_" in k}
    other = {k: v for k, v in state.items() if k not in sage and k not in lora}
    return sage, lora, other


def adapter_config(config: dict) -> dict:
    """PEFT's adapter_config.json for the checkpoint's LoRA settings."""
    lora = config["lora"]
    base = BASE_LLM.get(config["backbone"], config["backbone"])
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": lora["r"],
            "lora_alpha": lora["alpha"], "lora_dropout": lora.get("dropout", 0.0),
            "target_modules": list(lora["target_modules"]), "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "modules_to_save": None, "use_rslora": False,
            "use_dora": False}


def export(ckpt_dir: str | Path, out: str | Path, fmt: str = "peft", results: list[Path] | None = None) -> Path:
    """Write `ckpt_dir` (a sage checkpoint) to `out` in `fmt` (module doc); atomic, `out` replaced whole."""
    from sage_cli.models import checkpoint as ckpt

    if fmt not in FORMATS:
        raise SageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    config = ckpt.read_config(ckpt_dir)
    state = ckpt.read_state(ckpt_dir)
    sage, lora, other = split_state(state)
    if fmt == "peft" and (other or not config.get("lora")):
        raise SageError(f"{ckpt_dir}: the LLM was fully fine-tuned, not with LoRA, so there is no PEFT adapter to "
                        "export; use --format hf")
    cards = [_read_results(r) for r in results or []]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write(tmp, ckpt_dir, config, fmt, sage, lora, cards)
        _share(tmp)
        swap_in_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write(tmp: Path, ckpt_dir, config: dict, fmt: str, sage: dict, lora: dict, cards: list[dict]) -> None:
    from safetensors.torch import save_file

    from sage_cli.models import checkpoint as ckpt

    save_file({k: v.contiguous() for k, v in sage.items()}, str(tmp / SAGE_LAYERS), metadata={"format": ckpt.FORMAT})
    exported = {**config, "export": {"format": fmt, "from": str(Path(ckpt_dir).resolve())}}
    if fmt == "peft":
        save_file({peft_key(k): v.contiguous() for k, v in lora.items()}, str(tmp / ADAPTER_WEIGHTS),
                  metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(config), indent=2), encoding="utf-8")
    else:
        _save_merged_llm(ckpt_dir, tmp / LLM_DIR)
        exported["lora"] = None  # merged: loading must not inject LoRA again
    (tmp / EXPORT_CONFIG).write_text(json.dumps(exported, indent=2), encoding="utf-8")
    if (Path(ckpt_dir) / ckpt.FACTS).is_file():
        shutil.copy2(Path(ckpt_dir) / ckpt.FACTS, tmp / ckpt.FACTS)
    (tmp / "README.md").write_text(model_card(config, fmt, cards), encoding="utf-8")


def _share(folder: Path) -> None:
    """Readable by everyone, as a folder to hand on should be (mkdtemp and safetensors make them private)."""
    folder.chmod(0o755)
    for p in folder.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)


def _save_merged_llm(ckpt_dir, dest: Path) -> None:
    """Load the SAGE model, fold the LoRA into the LLM's weights, save the LLM as Hugging Face does."""
    import torch

    from sage_cli.models import lora
    from sage_cli.models.engine import Engine

    engine = Engine.load(None, str(ckpt_dir), dtype="float32", device="cpu")
    lora.merge(engine.model)
    llm = engine.model.backbone.language_model
    with torch.no_grad():
        _unload_lora(llm)
    llm.save_pretrained(str(dest), safe_serialization=True)
    tok = getattr(engine.model.backbone, "tokenizer", None)
    if tok is not None and hasattr(tok, "save_pretrained"):
        tok.save_pretrained(str(dest))


def _unload_lora(llm) -> None:
    """Replace each (merged) LoRA layer by its base layer, so the saved LLM has the stock key names."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(llm.named_modules()):
        if isinstance(module, LoraLayer):
            parent = llm.get_submodule(name.rsplit(".", 1)[0]) if "." in name else llm
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())


def _read_results(run: Path) -> dict:
    from sage_cli.bench import rundir

    folder = run.parent if run.is_file() else run
    res = rundir.read_results(folder)
    if res is None or not res.get("metrics"):
        raise SageError(f"{run}: no finished `sage bench` results here")
    return {"name": folder.name, "results": res}


def model_card(config: dict, fmt: str, cards: list[dict]) -> str:
    """README.md with the Hub's YAML header (licence, base model, tags) and the given bench results."""
    from sage_cli.bench.report import COLUMNS, cells

    base = BASE_LLM.get(config["backbone"], config["backbone"])
    head = ["---", "license: apache-2.0", f"base_model: {base}", f"library_name: {'peft' if fmt == 'peft' else 'transformers'}",
            "tags:", "  - sage", "  - anomaly-detection", "  - industrial-inspection", "  - vision-language"]
    if fmt == "peft":
        head.append("  - lora")
    head += ["---", ""]
    s = config.get("sage") or {}
    body = [f"# SAGE checkpoint ({config['backbone']}, {fmt} export)", "",
            f"Exported with `sage models export --format {fmt}` from a `{config.get('stage', 'sage')}` checkpoint. "
            "Base model: " + base + ". SAGE settings: " + ", ".join(f"{k}={v}" for k, v in s.items()) + ".", "",
            "Load the whole SAGE model with `sage infer --checkpoint THIS_FOLDER TEST.png REF.png`."]
    if fmt == "peft":
        body += ["The LLM's LoRA alone: `PeftModel.from_pretrained(base_llm, THIS_FOLDER)` (adapter, fusion and "
                 "projection are in sage_layers.safetensors, which only sage reads).", ""]
    else:
        body += ["The LLM with the LoRA merged in: `AutoModelForCausalLM.from_pretrained(THIS_FOLDER + '/llm')`.", ""]
    if cards:
        body += ["## Results (`sage bench`)", "", "| Run | Format | Protocol | Shots | " + " | ".join(COLUMNS) + " |",
                 "|" + "---|" * (4 + len(COLUMNS))]
        for c in cards:
            r = c["results"]
            body.append(f"| {c['name']} | {r.get('format')} | {r.get('protocol', 'sage')} | "
                        f"{(r.get('config') or {}).get('shots')} | " + " | ".join(cells(r)) + " |")
        body.append("")
    return "\n".join(head + body) + "\n"
