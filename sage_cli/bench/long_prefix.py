"""A random InternVL-shaped backbone whose image prompt is long, for timing training where the prefix
dominates (InternVL2-8B puts ~1,800 image tokens before a ~50-token answer; sage-smol ~230 before ~30).

Shape only, weights random: a 1-layer InternViT (frozen, its features cached, so its size does not
matter), pixel shuffle 0.5 and an MLP projector, then a Qwen2 decoder as wide as SmolLM2-135M
(576, 9 heads, 3 KV heads) but 2 layers deep, with SmolLM2's tokenizer so answers have realistic
token counts. The image side is chosen so that test + reference make about `image_tokens` tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

PATCH = 14
DOWNSAMPLE = 0.5  # InternVL's pixel shuffle: a 2x2 block of patches -> one token


def image_side(image_tokens: int) -> int:
    """Pixels per side so that two images (test + reference) give ~image_tokens tokens; the patch grid
    stays even (pixel shuffle needs it)."""
    per_image = max(1, image_tokens // 2)
    tokens_side = max(1, round(math.sqrt(per_image)))  # tokens per side after the shuffle
    return tokens_side * 2 * PATCH


def save_long_prefix_vlm(path: Path, image_tokens: int = 1024, layers: int = 2) -> dict:
    """Write the backbone folder (save_pretrained + tokenizer) to `path`; returns its shape."""
    import torch
    from transformers import (AutoTokenizer, InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig,
                              Qwen2Config)

    from sage_cli.models.packaged import build_smollm2

    tok = AutoTokenizer.from_pretrained(build_smollm2())
    tok.add_special_tokens({"additional_special_tokens": ["<IMG_CONTEXT>"]})
    side = image_side(image_tokens)
    vision = InternVLVisionConfig(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                                  image_size=side, patch_size=PATCH)
    text = Qwen2Config(vocab_size=len(tok), hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                       eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    cfg = InternVLConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), downsample_ratio=DOWNSAMPLE,
                         image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    torch.manual_seed(0)
    InternVLForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    per_image = (side // PATCH) ** 2 // round(1 / DOWNSAMPLE) ** 2
    return {"path": str(path), "image_side": side, "image_tokens": 2 * per_image, "decoder_layers": layers,
            "hidden": 576}
