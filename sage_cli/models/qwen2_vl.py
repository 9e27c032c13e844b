"""Qwen2-VL and Qwen2.5-VL behind the SAGE `Backbone` interface, with M-RoPE positions (issue #26).

Parts, as for the other transformers VLMs (hf_vlm.py):

* vision  (frozen, cacheable): the model's own ViT (`model.visual` without its merger) at the image's
  native patch grid: `vision_features` [B, N, D], N = gh*gw patches in the merger's order (each 2x2
  window contiguous, windows row-major; Qwen2.5-VL's window-attention order is undone);
* adapter (trainable): the model's own `PatchMerger` (2x2 patches -> one token in the LLM's space)
  -> `adapt` [B, P, C], P = (gh/2)*(gw/2) tokens row-major on the merged grid;
* llm: the text decoder + lm_head as a `Qwen2ForCausalLM` shell sharing the VLM's modules.

Grid. Every image, test and reference alike and whatever its size, is resized to one grid
(`image_size`, default 448x448 -> 32x32 patches -> 16x16 = 256 tokens; rounded to a multiple of 28).
The ViT itself runs at any grid (2-D rotary positions), so `image_size` picks the resolution; one grid
for both images keeps the backbone interface (pixel batches [B, 3, H, W], one `patch_grid` for the
anomaly map, cacheable features of one shape). Eq. 1's nearest-neighbour rule would also take patch
sets of different sizes, but the anomaly map and the training cache want one grid.

Positions. The decoder rotates by 3-D M-RoPE positions (temporal, height, width). For SAGE's
sequence they are computed as `get_rope_index` does for text + images: a text token (system prompt,
fused fact tokens, auxiliary sentence, question, answer) gets (p, p, p) and the next one p + 1; an
image of h x w merged tokens starting at p gets (p, p + row, p + col), and the text after it starts at
p + max(h, w). `rope_positions` returns them for a list of pieces; SageModel attaches them to the
sequence's `inputs_embeds` (`sage.with_positions`).

A forward pre-hook on the decoder turns whatever positions a caller passes into 3-D ones:
* 3-D `position_ids`, or positions attached to `inputs_embeds`: used as they are; the cache then
  records per row how far M-RoPE runs behind the token count (`rope delta`, as transformers keeps
  `rope_deltas` on the model; here on the cache, so a copied or cropped prefix cache keeps it);
* 1-D positions (or none: the cache length) count tokens; the cache's delta is added and the three
  axes are equal (text). So the Engine's KV-cache prefix reuse, grouped answers and the token loop
  work unchanged after an image prefix.
"""

from __future__ import annotations

import torch
from torch import nn

from sage_cli.errors import SageError
from sage_cli.models.backbone import Backbone, ready_tokenizer, resize_normalise
from sage_cli.models.sage import POSITIONS

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
DEFAULT_IMAGE_SIZE = 448
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_DELTA = "sage_rope_delta"  # attribute of a KV cache: [B] M-RoPE position minus token count


def model_class(model_type: str):
    import transformers

    return {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
            "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration}[model_type]


class _Tower(nn.Module):
    """The ViT of `visual` without its merger: registers the frozen modules only (the merger is the
    adapter), runs the whole `visual` forward and returns its pre-merger hidden states."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.__dict__["visual"] = visual
        for name, child in visual.named_children():
            if name != "merger":
                self.add_module(name, child)

    def forward(self, flat: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        return self.visual(flat, grid_thw=grid_thw).last_hidden_state  # [sum N, D]


def text_positions(start: int, n: int, device=None) -> torch.Tensor:
    """[3, n]: n text tokens from position `start`."""
    return (torch.arange(n, device=device) + start).expand(3, n)


class Qwen2VLBackbone(Backbone):
    """`Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration`."""

    def __init__(self, vlm: nn.Module, tokenizer, image_processor=None, name: str | None = None,
                 image_size: int | None = None):
        super().__init__()
        cfg, vc = vlm.config, vlm.config.vision_config
        self.name = name or cfg.model_type
        self.model_type = cfg.model_type
        self.__dict__["vlm"] = vlm  # its parameters are registered through the parts below
        visual = vlm.model.visual
        self.vision = _Tower(visual).eval().requires_grad_(False)
        self.adapter = visual.merger
        self.language_model = _causal_lm(vlm)
        self.tokenizer = ready_tokenizer(tokenizer)
        self.hidden_size = cfg.text_config.hidden_size
        self.image_processor = image_processor
        self.patch = int(vc.patch_size)
        self.merge = int(vc.spatial_merge_size)
        self.temporal = int(vc.temporal_patch_size)
        unit = self.patch * self.merge
        # one square grid for every image (an int, so that a checkpoint records it)
        self.image_size = max(unit, round((image_size or DEFAULT_IMAGE_SIZE) / unit) * unit)
        mean = tuple(getattr(image_processor, "image_mean", None) or CLIP_MEAN)
        std = tuple(getattr(image_processor, "image_std", None) or CLIP_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        decoder = vlm.model.language_model
        if not getattr(decoder, "_sage_positions", False):
            decoder.register_forward_pre_hook(_resolve_positions, with_kwargs=True)
            decoder._sage_positions = True

    def train(self, mode: bool = True):
        super().train(mode)
        self.vision.eval()
        return self

    def parts(self) -> dict[str, nn.Module]:
        return {"vision": self.vision, "adapter": self.adapter, "llm": self.language_model}

    @property
    def encoder_grid(self) -> tuple[int, int]:
        return self.image_size // self.patch, self.image_size // self.patch

    @property
    def patch_grid(self) -> tuple[int, int]:
        gh, gw = self.encoder_grid
        return gh // self.merge, gw // self.merge

    # ---- images ----------------------------------------------------------------------------

    def preprocess(self, images: list) -> torch.Tensor:
        """PIL images of any sizes -> [B, 3, H, W] at `image_size` (bicubic, as the processor resizes)."""
        return resize_normalise(images, (self.image_size, self.image_size), self.mean, self.std)

    def patchify(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, H, W] -> the flat patches the ViT reads [B*N, 3*T*p*p] and grid_thw [B, 3], laid out
        as Qwen2VLImageProcessor lays out one image (repeated over the temporal patch)."""
        b, c, hh, ww = pixel_values.shape
        p, m, t = self.patch, self.merge, self.temporal
        gh, gw = hh // p, ww // p
        if hh % (p * m) or ww % (p * m):
            raise SageError(f"{self.name}: image {hh}x{ww} is not a multiple of {p * m} pixels per side")
        x = pixel_values.unsqueeze(1).expand(b, t, c, hh, ww)  # [B, T, C, H, W]
        x = x.reshape(b, 1, t, c, gh // m, m, p, gw // m, m, p)
        x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)  # [B, 1, gh/m, gw/m, m, m, C, T, p, p]
        flat = x.reshape(b * gh * gw, c * t * p * p)
        grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=pixel_values.device)
        return flat, grid

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        visual = self.vision.visual
        p = next(self.vision.parameters())
        flat, grid = self.patchify(pixel_values.to(p.device, torch.float32))
        hidden = self.vision(flat.to(p.dtype), grid)  # [B*N, D]
        if self.model_type == "qwen2_5_vl":  # blocks ran in window order: back to the merger's order
            try:
                from transformers.vision_utils import get_vision_window_index

                index, _ = get_vision_window_index(grid, spatial_merge_size=self.merge,
                                                   window_size=visual.window_size, patch_size=self.patch)
            except ImportError:  # transformers 4.x: a method of the tower
                index, _ = visual.get_window_index(grid)
            unit = self.merge * self.merge
            hidden = hidden.view(-1, unit, hidden.shape[-1])[torch.argsort(index.to(hidden.device))]
        b = pixel_values.shape[0]
        return hidden.reshape(b, -1, hidden.shape[-1])  # [B, N, D]

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        b, n, d = features.shape
        dtype = next(self.adapter.parameters()).dtype
        out = self.adapter(features.to(dtype).reshape(b * n, d))  # [B*P, C]
        return out.view(b, n // (self.merge * self.merge), -1)  # [B, P, C]

    # ---- positions ---------------------------------------------------------------------------

    def rope_positions(self, lengths: list[int], images: list[bool], start: int = 0,
                       device=None) -> tuple[torch.Tensor, int]:
        """M-RoPE positions [3, sum(lengths)] of pieces (image or text) from `start`, and the next
        text position."""
        gh, gw = self.patch_grid
        out, at = [], start
        for n, image in zip(lengths, images):
            if image:
                if n != gh * gw:
                    raise SageError(f"{self.name}: an image piece of {n} tokens, expected {gh}x{gw}")
                rows = torch.arange(gh, device=device).repeat_interleave(gw)
                cols = torch.arange(gw, device=device).repeat(gh)
                out.append(torch.stack([torch.zeros_like(rows), rows, cols]) + at)
                at += max(gh, gw)
            else:
                out.append(text_positions(at, n, device))
                at += n
        pos = torch.cat(out, dim=1) if out else torch.zeros(3, 0, dtype=torch.long, device=device)
        return pos, at


def _causal_lm(vlm: nn.Module) -> nn.Module:
    """A `Qwen2ForCausalLM` whose decoder and head are the VLM's own (shared) modules."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    text = vlm.config.text_config
    with torch.device("meta"):
        shell = {k: v for k, v in text.to_dict().items() if k not in ("model_type", "rope_parameters")}
        lm = Qwen2ForCausalLM(Qwen2Config(**shell))  # a shell: its decoder and head are replaced below
    lm.model = vlm.model.language_model
    lm.lm_head = vlm.lm_head
    lm.config = text
    lm._no_split_modules = [type(lm.model.layers[0]).__name__]  # FSDP shards these (Qwen2VLDecoderLayer)
    if getattr(vlm, "generation_config", None) is not None:
        lm.generation_config = vlm.generation_config
    return lm


def _rows(t: torch.Tensor, b: int) -> torch.Tensor:
    return t.repeat_interleave(b // t.shape[0]) if t.shape[0] != b else t


def _resolve_positions(module, args, kwargs):
    """Forward pre-hook of the decoder: 3-D M-RoPE positions from whatever the caller passed."""
    emb = kwargs.get("inputs_embeds")
    ids = kwargs.get("input_ids")
    x = emb if emb is not None else ids
    if x is None:
        return None
    b, t = x.shape[:2]
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    pos = kwargs.get("position_ids")
    attached = getattr(emb, POSITIONS, None) if emb is not None else None
    if pos is not None and pos.ndim == 3:
        full = pos
    elif attached is not None and tuple(attached.shape[-2:]) == (b, t):
        full = attached.to(x.device)
    else:  # token counts (given, or from the cache) + the cache's delta; text: three equal axes
        if pos is None:
            past = cache.get_seq_length() if cache is not None else 0
            pos = (torch.arange(t, device=x.device) + past).expand(b, t)
        delta = getattr(cache, _DELTA, None)
        if delta is not None:
            pos = pos + _rows(delta.to(pos.device), b)[:, None]
        kwargs["position_ids"] = pos[None].expand(3, b, t)
        return args, kwargs
    if cache is not None:
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            real, count = mask[:, -t:].bool(), mask.long().sum(-1)
        else:
            real = torch.ones(b, t, dtype=torch.bool, device=x.device)
            count = torch.full((b,), cache.get_seq_length() + t, device=x.device)
        top = full.masked_fill(~real[None], -1).amax(dim=(0, 2))  # [B]
        setattr(cache, _DELTA, top + 1 - count)
    kwargs["position_ids"] = full
    return args, kwargs
