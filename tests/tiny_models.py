"""Tiny random models for fast tests: a byte-level tokenizer with a ChatML template, a 2-layer DINOv2
and a 2-layer Llama. No weights, no network."""

from __future__ import annotations

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}  # 256 byte tokens
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|pad|>",
                             "additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHATML
    return fast


def tiny_composed(image_size: int = 56, seed: int = 0):
    import torch
    from transformers import Dinov2Config, Dinov2Model, LlamaConfig, LlamaForCausalLM

    from sage_cli.models.backbone import ComposedBackbone

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    vision = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      mlp_ratio=2, image_size=image_size, patch_size=14))
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                                      eos_token_id=tok.eos_token_id))
    return ComposedBackbone(vision, lm, tok, image_size=image_size, patch_size=14,
                            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), name="tiny")


def _tok():
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<IMG_CONTEXT>"]})
    return tok


def _text(cls, tok):
    return cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
               eos_token_id=tok.eos_token_id).to_dict()


def save_tiny_internvl(path, processor: bool = False):
    """A 2-layer random InternVL (Qwen2 decoder) saved with save_pretrained; returns `path`."""
    import torch
    from transformers import (GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLVisionConfig, Qwen2Config)

    tok = _tok()
    vision = InternVLVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                  image_size=56, patch_size=14)
    cfg = InternVLConfig(vision_config=vision.to_dict(), text_config=_text(Qwen2Config, tok),
                         image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))
    torch.manual_seed(0)
    InternVLForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    if processor:  # crop_to_patches=True as the real InternVL processors: the backbone must turn it off
        GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True).save_pretrained(path)
    return path


def save_tiny_llava(path):
    """A 2-layer random LLaVA (CLIP + Llama) saved with save_pretrained; returns `path`."""
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tok = _tok()
    vision = CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                              image_size=56, patch_size=14)
    cfg = LlavaConfig(vision_config=vision.to_dict(), text_config=_text(LlamaConfig, tok),
                      image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"))  # layer -2, strategy "default"
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path  # no image processor saved: the config's fixed-size fallback is used


def noise_images(n: int, seed: int, size=(56, 56)) -> list:
    """n seeded RGB noise images (PIL) of `size` (w, h), drawn from one generator."""
    import torch
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    return [Image.fromarray((torch.rand(size[1], size[0], 3, generator=g) * 255).byte().numpy()) for _ in range(n)]


def noise_image(seed: int, size=(56, 56)):
    """One seeded RGB noise image (PIL) of `size` (w, h)."""
    return noise_images(1, seed, size)[0]


def save_tiny_qwen2_vl(path, version: str = "2", image_processor: bool = False):
    """A 2-layer random Qwen2-VL (version "2") or Qwen2.5-VL ("2.5") saved with save_pretrained; returns `path`.

    head_dim 16 -> M-RoPE sections [2, 3, 3]. Qwen2.5-VL gets a window of 2x2 merged tokens and one
    full-attention block, so its window-attention reordering is exercised on grids above 56 pixels.
    """
    import torch
    import transformers

    tok = _tok()
    text = _text(transformers.Qwen2Config, tok)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    vision = {"depth": 2, "num_heads": 2, "hidden_size": 64, "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    image_token = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    if version == "2":
        cfg = transformers.Qwen2VLConfig(vision_config={**vision, "embed_dim": 32, "mlp_ratio": 2},
                                         text_config=text, image_token_id=image_token)
        cls = transformers.Qwen2VLForConditionalGeneration
    else:
        cfg = transformers.Qwen2_5_VLConfig(
            vision_config={**vision, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64,
                           "window_size": 56, "fullatt_block_indexes": [1]},
            text_config=text, image_token_id=image_token)
        cls = transformers.Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    cls(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    if image_processor:
        transformers.Qwen2VLImageProcessor().save_pretrained(path)
    return path
