"""Hugging Face VLMs (InternVL, LLaVA) behind the SAGE `Backbone` interface.

Each transformers VLM is split into the three parts SAGE trains differently:

* vision  (frozen, cacheable): the vision tower, read at the layer the model's own
  `get_image_features` reads (`vision_feature_layer`), CLS dropped as `vision_feature_select_strategy`
  says -> `vision_features` [B, N, D];
* adapter (trainable): InternVL: pixel shuffle (`downsample_ratio`) + `multi_modal_projector`;
  LLaVA: `multi_modal_projector` -> `adapt` [B, P, C];
* llm: the text decoder + lm_head, exposed as a plain `*ForCausalLM` whose modules *are* the VLM's
  (no copy), so `inputs_embeds` / `labels` / `generate(inputs_embeds=...)` work as for any causal LM.

The VLM's own image-token expansion is not used: SageModel splices the adapted patches into the
prompt itself. Qwen2-VL and Qwen2.5-VL live in qwen2_vl.py: their decoder needs 3-D M-RoPE positions,
which that module computes for SAGE's sequence (the other backbones' positions count tokens).

Everything loads offline (`local_files_only=True`); a model missing locally is a SageError.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from sage_cli.errors import SageError
from sage_cli.models.backbone import Backbone, ready_tokenizer, resize_normalise

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _pair(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


def causal_lm_view(decoder: nn.Module, lm_head: nn.Module, generation_config=None) -> nn.Module:
    """A `*ForCausalLM` for `decoder.config` whose decoder and head are the given (shared) modules.

    The shell is built on the meta device (nothing allocated), then its `model` / `lm_head` are
    replaced by the VLM's own modules, so parameters are shared and training either trains both.
    """
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(decoder.config)
    lm.model = decoder
    lm.lm_head = lm_head
    if generation_config is not None:
        lm.generation_config = generation_config
    return lm


class HFVLMBackbone(Backbone):
    """Common part of the wrappers: loading-independent plumbing around a `*ForConditionalGeneration`."""

    model_type = ""

    def __init__(self, vlm: nn.Module, tokenizer, image_processor=None, name: str | None = None):
        super().__init__()
        cfg = vlm.config
        self.name = name or cfg.model_type
        self.__dict__["vlm"] = vlm  # not registered: its parameters are registered through the parts below
        self.vision = vlm.model.vision_tower.eval().requires_grad_(False)
        self.adapter = vlm.model.multi_modal_projector
        self.language_model = causal_lm_view(vlm.model.language_model, vlm.lm_head,
                                             getattr(vlm, "generation_config", None))
        self.tokenizer = ready_tokenizer(tokenizer)
        self.hidden_size = cfg.text_config.hidden_size
        self.image_processor = image_processor
        self.image_size = _pair(cfg.vision_config.image_size)
        self.patch_size = _pair(cfg.vision_config.patch_size)
        self.vision_feature_layer = cfg.vision_feature_layer
        self.select_strategy = cfg.vision_feature_select_strategy
        mean, std = self.default_mean_std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    default_mean_std = (IMAGENET_MEAN, IMAGENET_STD)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vision.eval()  # frozen: no dropout / drop-path even while the rest trains
        return self

    def parts(self) -> dict[str, nn.Module]:
        return {"vision": self.vision, "adapter": self.adapter, "llm": self.language_model}

    @property
    def encoder_grid(self) -> tuple[int, int]:
        """(h, w) of the vision tower's patches (CLS excluded)."""
        return self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1]

    # ---- images ----------------------------------------------------------------------------

    def processor_kwargs(self) -> dict:
        return {}

    def preprocess(self, images: list) -> torch.Tensor:
        h, w = self.image_size
        if self.image_processor is not None:
            out = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt",
                                       **self.processor_kwargs())
            x = torch.as_tensor(out["pixel_values"])
            if x.shape[0] != len(images) or tuple(x.shape[-2:]) != (h, w):
                raise SageError(f"the image processor of {self.name} gave pixel values {tuple(x.shape)}, "
                                f"expected one {h}x{w} image per input")
            return x.float()
        return resize_normalise(images, (h, w), self.mean, self.std)

    def _layer_output(self, pixel_values: torch.Tensor, layer: int) -> torch.Tensor:
        p = next(self.vision.parameters())
        x = pixel_values.to(p.device, p.dtype)
        if layer == -1:
            return self.vision(pixel_values=x, return_dict=True).last_hidden_state
        return self.vision(pixel_values=x, output_hidden_states=True, return_dict=True).hidden_states[layer]

    def _drop_cls(self, feats: torch.Tensor) -> torch.Tensor:
        gh, gw = self.encoder_grid
        if self.select_strategy == "default" or feats.shape[1] == gh * gw + 1:
            # "full" with a CLS token would put one token off the patch grid; SAGE needs the grid
            return feats[:, 1:]
        return feats

    def _adapter_dtype(self) -> torch.dtype:
        return next(self.adapter.parameters()).dtype


class InternVLBackbone(HFVLMBackbone):
    """`InternVLForConditionalGeneration`: InternViT (frozen) -> pixel shuffle + MLP projector (adapter)."""

    model_type = "internvl"
    default_mean_std = (IMAGENET_MEAN, IMAGENET_STD)

    def __init__(self, vlm: nn.Module, tokenizer, image_processor=None, name: str | None = None):
        super().__init__(vlm, tokenizer, image_processor, name)
        self.downsample_ratio = float(vlm.config.downsample_ratio)
        f = round(1 / self.downsample_ratio)
        gh, gw = self.encoder_grid
        if gh != gw or gh % f:
            raise SageError(f"InternVL needs a square patch grid divisible by {f}, got {gh}x{gw}")

    def processor_kwargs(self) -> dict:
        return {"crop_to_patches": False}  # one 448x448 tile per image, no dynamic tiling

    @property
    def patch_grid(self) -> tuple[int, int]:
        f = round(1 / self.downsample_ratio)
        gh, gw = self.encoder_grid
        return gh // f, gw // f

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        layer = self.vision_feature_layer
        if not isinstance(layer, int):
            raise SageError("InternVL with several vision_feature_layer values is not supported")
        return self._drop_cls(self._layer_output(pixel_values, layer))  # [B, N, D]

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        b, n, d = features.shape
        s = math.isqrt(n)
        x = features.to(self._adapter_dtype()).reshape(b, s, s, d)
        x = self.vlm.model.pixel_shuffle(x, scale_factor=self.downsample_ratio)  # [B, s/f, s/f, f*f*D]
        return self.adapter(x.reshape(b, -1, x.shape[-1]))  # [B, P, C]


class LlavaBackbone(HFVLMBackbone):
    """`LlavaForConditionalGeneration`: CLIP/SigLIP tower (frozen) -> MLP projector (adapter)."""

    model_type = "llava"
    default_mean_std = (CLIP_MEAN, CLIP_STD)

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.encoder_grid

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        layers = self.vision_feature_layer
        if isinstance(layers, int):
            return self._drop_cls(self._layer_output(pixel_values, layers))
        p = next(self.vision.parameters())
        hs = self.vision(pixel_values=pixel_values.to(p.device, p.dtype), output_hidden_states=True,
                         return_dict=True).hidden_states
        return torch.cat([self._drop_cls(hs[i]) for i in layers], dim=-1)  # [B, N, D * layers]

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        return self.adapter(features.to(self._adapter_dtype()))  # [B, N, D] -> [B, N, C]


BACKBONES: dict[str, type[HFVLMBackbone]] = {"internvl": InternVLBackbone, "llava": LlavaBackbone}


def _dtype(dtype):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[str(dtype).lower()]
    except KeyError:
        raise SageError(f"unknown dtype {dtype!r} (use float32, float16 or bfloat16)") from None


def load_hf_vlm(name_or_path: str, dtype=None, image_size: int | None = None) -> Backbone:
    """Load a local (or already cached) transformers VLM as a SAGE backbone, never touching the network.

    `image_size`: the square grid every image is resized to, for the dynamic-resolution Qwen2-VL family
    (default qwen2_vl.DEFAULT_IMAGE_SIZE); the other backbones read their size from the config.
    """
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from sage_cli.models import qwen2_vl

    name_or_path = str(Path(name_or_path).expanduser()) if isinstance(name_or_path, Path) else str(name_or_path)
    supported = ", ".join(sorted([*BACKBONES, *qwen2_vl.MODEL_TYPES]))
    local = Path(name_or_path).expanduser()
    if (local.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1) \
            and not local.exists():
        raise SageError(f"VLM path {name_or_path!r} does not exist")
    _refuse_remote_code_layout(local)
    try:
        cfg = AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise SageError(f"VLM {name_or_path!r} is not available locally (offline; download it first): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    cls = qwen2_vl.Qwen2VLBackbone if cfg.model_type in qwen2_vl.MODEL_TYPES else BACKBONES.get(cfg.model_type)
    if cls is None:
        raise SageError(f"VLM {name_or_path!r} has model type {cfg.model_type!r}, which SAGE does not support "
                        f"(supported: {supported})")
    model_cls = {"internvl": transformers.InternVLForConditionalGeneration,
                 "llava": transformers.LlavaForConditionalGeneration}.get(cfg.model_type) \
        or qwen2_vl.model_class(cfg.model_type)
    kwargs = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = _dtype(dtype)
    try:
        vlm = model_cls.from_pretrained(name_or_path, **kwargs)
        tok = AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except OSError as e:
        raise SageError(f"could not load VLM {name_or_path!r} offline: {str(e).splitlines()[0]}") from None
    if not getattr(tok, "chat_template", None):
        tok.chat_template = _processor_chat_template(name_or_path)
        if not tok.chat_template:
            raise SageError(f"VLM {name_or_path!r} has no chat template (tokenizer or processor)")
    vlm.eval()
    if cls is qwen2_vl.Qwen2VLBackbone:
        return cls(vlm, tok, _image_processor(name_or_path), name=cfg.model_type, image_size=image_size)
    return cls(vlm, tok, _image_processor(name_or_path), name=cfg.model_type)


def _image_processor(path: str):
    """The model's own image processor, or None (then a fixed-size resize + normalise from the config)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None


def _processor_chat_template(path: str) -> str | None:
    try:
        from transformers import AutoProcessor

        return getattr(AutoProcessor.from_pretrained(path, local_files_only=True), "chat_template", None)
    except Exception:  # noqa: BLE001 - no processor saved: nothing to take a template from
        return None


def _refuse_remote_code_layout(folder: Path) -> None:
    """The published InternVL2 folders are remote code (model type internvl_chat), which sage never runs:
    say how to convert them instead of transformers' "does not recognize this architecture"."""
    import json

    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    if model_type == "internvl_chat":
        raise SageError(f"{folder}: the remote-code internvl_chat layout (the published InternVL2); convert it once "
                        f"with `sage models convert {folder} --out DIR` and use DIR")
