"""The small interface SAGE needs from any VLM, and the composed backbone (encoder + adapter + LM).

SAGE needs four things from a backbone: patch embeddings of an image in the LLM's hidden size C
(frozen encoder, then trainable adapter), the LLM's input embedding table (the text encoder F_t),
the LLM itself run on `inputs_embeds`, and its tokenizer with a chat template. The encoder output is
kept separate from the adapter so that training can cache it (the encoder is frozen).
"""

from __future__ import annotations

import torch
from torch import nn


class Backbone(nn.Module):
    """Base class: subclasses set the attributes below and implement the three image methods."""

    name: str = "backbone"
    hidden_size: int  # C
    tokenizer: object  # a transformers tokenizer with a chat template
    language_model: nn.Module  # a causal LM accepting inputs_embeds / attention_mask / past_key_values

    def preprocess(self, images: list) -> torch.Tensor:
        """PIL images -> pixel values [B, 3, H, W] as the encoder expects them."""
        raise NotImplementedError

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen encoder: [B, 3, H, W] -> [B, N, D] patch features (cacheable)."""
        raise NotImplementedError

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        """The trainable adapter: [B, N, D] -> [B, P, C] patch embeddings in the LLM's space."""
        raise NotImplementedError

    @property
    def patch_grid(self) -> tuple[int, int]:
        """(h, w) of the P adapted patches, for anomaly maps."""
        raise NotImplementedError

    def parts(self) -> dict[str, nn.Module]:
        """The named parts training freezes or trains: vision (frozen), adapter, llm."""
        raise NotImplementedError

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, P, C]."""
        with torch.no_grad():
            feats = self.vision_features(pixel_values)
        return self.adapt(feats)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, T] -> [B, T, C] with the LLM's own input embedding table."""
        return self.language_model.get_input_embeddings()(input_ids)


def resize_normalise(images: list, size: tuple[int, int], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """PIL images -> [B, 3, H, W]: stretched to `size` (h, w) with bicubic resampling, then (x - mean) / std.

    Stretched, not letterboxed, so that the patch grid (and the anomaly map) covers the whole image.
    mean / std: [1, 3, 1, 1].
    """
    import numpy as np
    from PIL import Image

    h, w = size
    arrs = [np.asarray(im.convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0 for im in images]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)  # [B, 3, H, W]
    return (x - mean.cpu()) / std.cpu()


class PixelShuffleAdapter(nn.Module):
    """Merge each f×f block of patches into one token, then an MLP into the LLM's space.

    f=2 cuts the image tokens 4× (as InternVL and nanoVLM do), which is what makes a CPU affordable.
    """

    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int], factor: int = 2):
        super().__init__()
        h, w = grid
        if h % factor or w % factor:
            raise ValueError(f"patch grid {h}x{w} is not divisible by the shuffle factor {factor}")
        self.grid, self.factor = grid, factor
        self.mlp = nn.Sequential(
            nn.LayerNorm(in_dim * factor * factor),
            nn.Linear(in_dim * factor * factor, out_dim),
            nn.GELU(),
            nn.Linear(out_dim, out_dim),
        )

    @property
    def out_grid(self) -> tuple[int, int]:
        return self.grid[0] // self.factor, self.grid[1] // self.factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # [B, h*w, D]
        (h, w), f = self.grid, self.factor
        x = x.view(b, h // f, f, w // f, f, d).permute(0, 1, 3, 2, 4, 5)  # [B, h/f, w/f, f, f, D]
        x = x.reshape(b, (h // f) * (w // f), f * f * d)  # [B, P, f*f*D]
        return self.mlp(x)  # [B, P, C]


class ComposedBackbone(Backbone):
    """A ViT encoder (transformers Dinov2Model or alike) + PixelShuffleAdapter + any causal LM."""

    def __init__(self, vision: nn.Module, language_model: nn.Module, tokenizer, image_size: int,
                 patch_size: int, mean: tuple[float, ...], std: tuple[float, ...], name: str = "composed",
                 shuffle: int = 2, feature_layer: int | None = None):
        super().__init__()
        self.name = name
        if feature_layer is not None:
            # Mid-depth ViT features localise defects far better than the last layer's (PatchCore reads
            # mid layers too); the layers above are never run, so they are dropped.
            vision.encoder.layer = vision.encoder.layer[:feature_layer]
        self.feature_layer = feature_layer
        self.vision = vision.eval().requires_grad_(False)
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.hidden_size = language_model.config.hidden_size
        self.image_size, self.patch_size = image_size, patch_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        grid = (image_size // patch_size, image_size // patch_size)
        vision_dim = vision.config.hidden_size
        self.adapter = PixelShuffleAdapter(vision_dim, self.hidden_size, grid, shuffle)

    @property
    def patch_grid(self) -> tuple[int, int]:
        return self.adapter.out_grid

    def parts(self) -> dict[str, nn.Module]:
        return {"vision": self.vision, "adapter": self.adapter, "llm": self.language_model}

    def preprocess(self, images: list) -> torch.Tensor:
        return resize_normalise(images, (self.image_size, self.image_size), self.mean, self.std)

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(self.mean.device, self.vision.dtype)
        if self.feature_layer is None:
            return self.vision(pixel_values=x).last_hidden_state[:, 1:]  # drop CLS: [B, N, D]
        out = self.vision(pixel_values=x, output_hidden_states=True)
        return out.hidden_states[-1][:, 1:]  # the kept last layer, before the final LayerNorm: [B, N, D]

    def adapt(self, features: torch.Tensor) -> torch.Tensor:
        return self.adapter(features.to(self.adapter.mlp[1].weight.dtype))  # [B, N, D] -> [B, P, C]


def ready_tokenizer(tok):
    """The tokenizer with a pad token (its EOS when it has none): SageModel pads fact sentences and batches."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
