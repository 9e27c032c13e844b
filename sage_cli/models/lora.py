"""LoRA on the backbone's LLM (peft), injected in place so the model keeps its own classes and names.

The checkpoint records the LoRA settings; loading injects the same layers before reading the weights,
so only the small LoRA matrices are ever saved. `merge` folds them into the base weights for inference.
"""

from __future__ import annotations

from dataclasses import asdict


def apply(model, r: int, alpha: int, dropout: float, target_modules: list[str]) -> dict:
    """Inject LoRA into model.backbone.language_model; base LLM weights are frozen, LoRA ones train.

    Returns the settings as saved in a checkpoint's config.
    """
    from peft import LoraConfig, inject_adapter_in_model

    from sage_cli.errors import SageError

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules))
    try:
        inject_adapter_in_model(cfg, model.backbone.language_model)
    except ValueError as e:  # peft: none of the target modules exist in this LLM
        raise SageError(f"LoRA: {e}".splitlines()[0]) from None
    return {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": list(target_modules)}


def apply_from(model, settings: dict | None) -> None:
    if settings:
        apply(model, settings["r"], settings["alpha"], settings.get("dropout", 0.0), settings["target_modules"])


def settings_of(lora_config) -> dict:
    """The recipe's LoraConfig section as the dict `apply` takes."""
    d = asdict(lora_config)
    d.pop("enabled", None)
    return d


def merge(model) -> int:
    """Fold every LoRA layer into its base weights (faster inference); returns how many were merged."""
    from peft.tuners.lora import LoraLayer

    n = 0
    for m in model.backbone.language_model.modules():
        if isinstance(m, LoraLayer) and not m.merged:
            m.merge()
            n += 1
    return n
