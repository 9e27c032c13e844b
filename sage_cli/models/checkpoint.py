"""SAGE checkpoints: `config.json` (format version, base backbone, SAGE settings) + `model.safetensors`
holding only what SAGE trains (adapter, fusion, projection, and any trained LLM weights).

Weights are read only with safetensors: nothing in a checkpoint can execute code. Loading checks
that the checkpoint belongs to the backbone and that every tensor's shape matches, and says which
one does not.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from sage_cli.atomic import swap_in_dir
from sage_cli.errors import SageError

FORMAT = "sage-checkpoint/1"
CONFIG, WEIGHTS = "config.json", "model.safetensors"
FACTS = "facts.txt"  # optional: fact sentences (one per line) used when a request brings none
SHIPPED = "sage-smol"  # the checkpoint that ships inside the package (see its MODEL_CARD.md)


def shipped_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "assets" / SHIPPED


def resolve(checkpoint: str | Path | None, backbone: str | None) -> str | None:
    """The checkpoint directory a command should load.

    A directory is itself; the name ``sage-smol`` is the shipped checkpoint; no checkpoint and no
    backbone means the shipped checkpoint when this install has it; a backbone alone means untrained
    SAGE layers on it (None)."""
    ship = shipped_dir()
    if checkpoint is None:
        return str(ship) if backbone is None and (ship / CONFIG).is_file() else None
    if Path(checkpoint).is_dir():
        return str(checkpoint)
    if str(checkpoint) == SHIPPED:
        if not (ship / CONFIG).is_file():
            raise SageError(f"this install has no shipped {SHIPPED} checkpoint ({ship})")
        return str(ship)
    raise SageError(f"{checkpoint}: checkpoint directory not found")


def pack(src: str | Path, dst: str | Path, dtype: str = "float16") -> Path:
    """Copy a checkpoint with its floating-point weights cast to `dtype` (half the bytes of float32).

    Loading casts them back to the model's dtype, so a packed checkpoint loads anywhere."""
    import torch
    from safetensors.torch import load_file, save_file

    config = read_config(src)
    to = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(dtype)
    if to is None:
        raise SageError(f"--dtype must be float16, bfloat16 or float32, not {dtype!r}")
    state = {k: v.to(to) if v.is_floating_point() else v for k, v in load_file(str(Path(src) / WEIGHTS)).items()}
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        keep = [p for p in out.iterdir() if p.name not in (CONFIG, WEIGHTS)] if out.is_dir() else []
        for p in keep:  # a model card or licence beside the weights stays
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps({**config, "dtype": dtype}, indent=2), encoding="utf-8")
        swap_in_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def trained_state(model) -> dict:
    """Adapter, fusion and projection always; LLM weights only where training touched them."""
    state = {f"adapter.{k}": v for k, v in model.backbone.parts()["adapter"].state_dict().items()}
    state.update({f"fusion.{k}": v for k, v in model.fusion.state_dict().items()})
    state.update({f"projector.{k}": v for k, v in model.projector.state_dict().items()})
    llm = model.backbone.parts()["llm"]
    state.update({f"llm.{n}": p.detach() for n, p in llm.named_parameters() if p.requires_grad})
    return state


def save(model, out_dir: str | Path, backbone: str, extra: dict | None = None, lora: dict | None = None,
         state: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (a temp dir renamed into place).

    `state` is `trained_state(model)` when given already gathered (a model sharded with FSDP holds only
    slices of its tensors); by default it is read from `model`."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "backbone": backbone,
        "sage": model.settings(),
        "lora": lora,  # LoRA settings when the LLM was trained with LoRA (loading injects it first)
        # a composed backbone's adapter grid depends on its input size (HF VLMs fix theirs in their config)
        "image_size": size if isinstance(size := getattr(model.backbone, "image_size", None), int) else None,
        **(extra or {}),
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        state = {k: v.contiguous().cpu() for k, v in (trained_state(model) if state is None else state).items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        swap_in_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_config(ckpt_dir: str | Path) -> dict:
    """config.json of a checkpoint, or sage.json of a folder written by `sage models export`."""
    from sage_cli.models.export_layout import EXPORT_CONFIG, is_export

    path = Path(ckpt_dir) / (EXPORT_CONFIG if is_export(ckpt_dir) else CONFIG)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SageError(f"{ckpt_dir}: not a sage checkpoint (no {CONFIG})") from None
    except (OSError, json.JSONDecodeError) as e:
        raise SageError(f"{path}: unreadable checkpoint config ({e})") from None
    if config.get("format") != FORMAT:
        raise SageError(f"{path}: checkpoint format {config.get('format')!r} is not {FORMAT!r}")
    return config


CALIBRATION = "calibration"  # config key: `sage calibrate`'s fit (models/calibration.py); absent = uncalibrated
CALIBRATION_ZERO_SHOT = "calibration_zero_shot"  # `sage calibrate --shots 0`: P(yes) alone, for pairs without a reference


def read_calibration(ckpt_dir: str | Path, zero_shot: bool = False) -> dict | None:
    """The calibration stored in the checkpoint's config (`zero_shot`: the one for requests without a
    reference), or None."""
    return read_config(ckpt_dir).get(CALIBRATION_ZERO_SHOT if zero_shot else CALIBRATION)


def _config_path(ckpt_dir: str | Path) -> Path:
    from sage_cli.models.export_layout import EXPORT_CONFIG, is_export

    return Path(ckpt_dir) / (EXPORT_CONFIG if is_export(ckpt_dir) else CONFIG)


def check_calibration_out(src: str | Path, out: str | Path) -> None:
    """`sage calibrate --out`: a new folder, or an existing checkpoint to replace; never the source's
    parent nor a folder holding other things."""
    out = Path(out)
    if out.exists() and out.resolve() == Path(src).resolve():
        return  # the same folder: calibrated in place
    if Path(src).resolve() in out.resolve().parents:
        raise SageError(f"{out}: is inside the checkpoint {src}; give a folder outside it")
    if out.exists() and not out.is_dir():
        raise SageError(f"{out}: is a file; --out needs a folder for the calibrated checkpoint")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG).is_file() and not _config_path(out).is_file():
        raise SageError(f"{out}: exists and is not a checkpoint; give a new folder for the calibrated copy")


def write_calibration(ckpt_dir: str | Path, calibration: dict, out: str | Path | None = None,
                      zero_shot: bool = False) -> Path:
    """Store `calibration` under the config's CALIBRATION key (`zero_shot`: CALIBRATION_ZERO_SHOT),
    atomically: in place (the config file is replaced whole), or into a copy of the checkpoint at `out`
    (built beside it, then renamed into place). Returns the calibrated checkpoint's folder."""
    from sage_cli.atomic import write_text

    src = Path(ckpt_dir)
    config = {**read_config(src), (CALIBRATION_ZERO_SHOT if zero_shot else CALIBRATION): calibration}
    text = json.dumps(config, indent=2)
    if out is None or (Path(out).exists() and Path(out).resolve() == src.resolve()):
        try:
            write_text(_config_path(src), text)
        except OSError as e:
            raise SageError(f"{src}: cannot write the calibration there ({e.strerror or e})") from None
        return src
    dst = Path(out)
    check_calibration_out(src, dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        for p in src.iterdir():
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        (tmp / _config_path(src).name).write_text(text, encoding="utf-8")
        swap_in_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def default_facts(ckpt_dir: str | Path) -> list[str]:
    """The checkpoint's own fact sentences (facts.txt), or none.

    A model trained with fact tokens has always seen some. With none its prompt is one it never trained
    on (a sage-smol SFE run then ranked real hazelnut defects below normal pairs: P(yes) AUROC 0.0),
    while facts written for another kind of part, or generic ones, barely changed its answers. So a
    checkpoint may carry generic facts for requests that bring none.
    """
    from sage_cli.facts.store import FactsFile

    path = Path(ckpt_dir) / FACTS
    if not path.is_file():
        return []
    facts = FactsFile(path).same  # read like any `--facts` text file: one per line, # comments
    if facts is None:
        raise SageError(f"{path}: one fact sentence per line, not facts JSON Lines")
    return facts


def read_state(ckpt_dir: str | Path) -> dict:
    """The checkpoint's tensors by their keys (adapter., fusion., projector., llm.), from either layout."""
    from safetensors.torch import load_file

    from sage_cli.models.export_layout import is_export, read_export_state

    try:
        if is_export(ckpt_dir):
            return read_export_state(ckpt_dir)
        return load_file(str(Path(ckpt_dir) / WEIGHTS))
    except SageError:
        raise
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise SageError(f"{ckpt_dir}: unreadable weights ({e})") from None


def load_into(model, ckpt_dir: str | Path, backbone: str) -> dict:
    """Load a checkpoint's tensors into `model` (a SageModel on `backbone`); returns its config."""

    config = read_config(ckpt_dir)
    if config["backbone"] != backbone:
        raise SageError(f"{ckpt_dir}: checkpoint is for backbone {config['backbone']!r}, not {backbone!r}")
    if config.get("lora"):
        from sage_cli.models import lora

        lora.apply_from(model, config["lora"])
    state = read_state(ckpt_dir)
    targets = {
        "adapter.": model.backbone.parts()["adapter"],
        "fusion.": model.fusion,
        "projector.": model.projector,
        "llm.": model.backbone.parts()["llm"],
    }
    own = {}
    for prefix, module in targets.items():
        params = dict(module.state_dict())
        own.update({prefix + k: v for k, v in params.items()})
    for key, tensor in state.items():
        if key not in own:
            raise SageError(f"{ckpt_dir}: tensor {key} has no place in this model (another architecture?)")
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise SageError(f"{ckpt_dir}: {key} has shape {tuple(tensor.shape)}, the model expects "
                            f"{tuple(own[key].shape)}")
    for prefix, module in targets.items():
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if part:
            module.load_state_dict(part, strict=prefix != "llm.")
    return config
