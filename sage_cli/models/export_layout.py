"""The folder `sage models export` writes, as far as loading it back needs: file names, PEFT's key names,
and reading its tensors in a checkpoint's own key layout (`checkpoint.read_state`). Writing is export.py."""

from __future__ import annotations

from pathlib import Path

EXPORT_CONFIG, SAGE_LAYERS = "sage.json", "sage_layers.safetensors"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
LLM_DIR = "llm"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps the CausalLM: base_model (LoraModel) . model (the LLM)


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / EXPORT_CONFIG).is_file()


def peft_key(key: str) -> str:
    """ "llm.model.layers.0.self_attn.q_proj.lora_A.default.weight" -> PEFT's saved name (no adapter name)."""
    return PEFT_PREFIX + key[len("llm."):].replace(".default.", ".")


def sage_key(key: str) -> str:
    """The inverse of `peft_key`."""
    rest = key[len(PEFT_PREFIX):]
    for part in (".lora_A.", ".lora_B."):
        rest = rest.replace(part, f"{part}default.")
    return "llm." + rest


def read_export_state(folder: str | Path) -> dict:
    """An exported folder's tensors in the checkpoint's own key layout (what `checkpoint.load_into` reads)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    state = dict(load_file(str(folder / SAGE_LAYERS)))
    if (folder / ADAPTER_WEIGHTS).is_file():
        state.update({sage_key(k): v for k, v in load_file(str(folder / ADAPTER_WEIGHTS)).items()})
    llm_dir = folder / LLM_DIR
    if llm_dir.is_dir():  # a merged LLM: every weight, as save_pretrained named them
        for f in sorted(llm_dir.glob("*.safetensors")):
            state.update({f"llm.{k}": v for k, v in load_file(str(f)).items()})
    return state
