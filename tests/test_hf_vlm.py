"""transformers' own VLM classes (InternVL, LLaVA) behind the Backbone interface, on tiny random configs.

Each tiny model is saved with save_pretrained and loaded back through load_hf_vlm (offline code path).
"""

import os

import pytest
import torch

from sage_cli.errors import SageError
from sage_cli.models.hf_vlm import InternVLBackbone, LlavaBackbone, load_hf_vlm
from sage_cli.models.sage import IGNORE, SageModel
from tiny_models import save_tiny_internvl as _save_internvl, save_tiny_llava as _save_llava, noise_images

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _images(n, seed, size=(60, 50)):  # not square: the backbones must resize
    return noise_images(n, seed, size)


@pytest.fixture(scope="module")
def internvl(tmp_path_factory):
    return load_hf_vlm(_save_internvl(tmp_path_factory.mktemp("internvl"), processor=False))


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return load_hf_vlm(_save_llava(tmp_path_factory.mktemp("llava")))


@pytest.fixture(scope="module", params=["internvl", "llava"])
def backbone(request):
    return request.getfixturevalue(request.param)


def test_loader_picks_the_wrapper(internvl, llava):
    assert isinstance(internvl, InternVLBackbone) and isinstance(llava, LlavaBackbone)
    assert internvl.image_processor is None and llava.image_processor is None  # none saved: fallback
    assert internvl.hidden_size == llava.hidden_size == 64


def test_internvl_split_matches_get_image_features(internvl):
    x = internvl.preprocess(_images(2, 0))
    assert x.shape == (2, 3, 56, 56)
    feats = internvl.vision_features(x)
    assert feats.shape == (2, 16, 32)  # 4x4 InternViT patches, CLS dropped
    out = internvl.adapt(feats)
    assert internvl.patch_grid == (2, 2) and out.shape == (2, 4, 64)  # pixel shuffle 0.5 -> 2x2
    with torch.no_grad():
        ref = internvl.vlm.model.get_image_features(pixel_values=x, vision_feature_layer=-1,
                                                    vision_feature_select_strategy="default").pooler_output
    assert torch.allclose(internvl.encode_images(x), ref, atol=1e-5)


def test_llava_split_matches_get_image_features(llava):
    x = llava.preprocess(_images(2, 0))
    assert x.shape == (2, 3, 56, 56)
    assert llava.vision_features(x).shape == (2, 16, 32)  # layer -2, CLS dropped
    assert llava.patch_grid == (4, 4) and llava.encode_images(x).shape == (2, 16, 64)
    with torch.no_grad():
        ref = llava.vlm.model.get_image_features(pixel_values=x, vision_feature_layer=-2,
                                                 vision_feature_select_strategy="default").pooler_output
    assert torch.allclose(llava.encode_images(x), torch.stack(list(ref)), atol=1e-5)


def test_language_model_is_the_vlms_own_decoder_and_head(backbone):
    lm, vlm = backbone.language_model, backbone.vlm
    assert lm.model is vlm.model.language_model and lm.lm_head is vlm.lm_head
    assert lm.config.hidden_size == backbone.hidden_size
    e = torch.randn(1, 5, backbone.hidden_size)
    with torch.no_grad():
        assert torch.allclose(lm(inputs_embeds=e).logits, vlm(inputs_embeds=e).logits, atol=1e-5)


def test_vision_is_frozen_and_parts_cover_the_model(backbone):
    parts = backbone.parts()
    assert set(parts) == {"vision", "adapter", "llm"}
    assert not any(p.requires_grad for p in parts["vision"].parameters())
    assert all(p.requires_grad for p in parts["adapter"].parameters())
    covered = {id(p) for m in parts.values() for p in m.parameters()}
    assert covered == {id(p) for p in backbone.vlm.parameters()}
    backbone.train()
    assert not parts["vision"].training and parts["adapter"].training
    backbone.eval()


def test_sage_one_and_zero_shot_loss_and_generate(backbone):
    model = SageModel(backbone, k_patches=2, fusion_heads=4)
    t, r = backbone.preprocess(_images(2, 0)), backbone.preprocess(_images(2, 1))
    p = backbone.patch_grid[0] * backbone.patch_grid[1]
    answers = ["Yes, a crack.", "No."]
    one = model.build(t, r, ["Is there a defect?"] * 2, [["hazelnuts crack."], ["one.", "two."]], answers=answers)
    zero = model.build(t, None, ["Is there a defect?"] * 2, [["hazelnuts crack."], ["one.", "two."]],
                       answers=answers)
    assert one.comparison.s.shape == (2, p) and zero.comparison.s is None
    assert (one.attention_mask.sum(1) - zero.attention_mask.sum(1)).tolist() == [p + len("Reference image (normal): \n")] * 2
    for i, a in enumerate(answers):
        assert backbone.tokenizer.decode(one.labels[i][one.labels[i] != IGNORE]) == a + "<|im_end|>"
    for batch in (one, zero):
        loss = model(batch).loss
        assert torch.isfinite(loss)
    loss.backward()  # gradients reach the adapter, never the frozen tower
    assert backbone.adapter.parameters().__next__().grad is not None
    assert all(q.grad is None for q in backbone.vision.parameters())
    model.zero_grad(set_to_none=True)
    gen = model.build(t, r, ["Q?", "Another?"], [["f."], []], padding_side="left")
    out = model.generate(gen, max_new_tokens=3)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


def test_saved_image_processor_is_used_without_tiling(tmp_path):
    bb = load_hf_vlm(_save_internvl(tmp_path / "ivl", processor=True), dtype="bfloat16")
    assert bb.image_processor is not None
    x = bb.preprocess(_images(2, 0, size=(120, 40)))  # a wide image would be tiled with crop_to_patches
    assert x.shape == (2, 3, 56, 56)
    out = bb.encode_images(x)
    assert out.shape == (2, 4, 64) and out.dtype == torch.bfloat16


def test_missing_model_is_a_sage_error(tmp_path):
    with pytest.raises(SageError, match="does not exist"):
        load_hf_vlm(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SageError, match="not available locally"):
        load_hf_vlm(tmp_path / "empty")
    with pytest.raises(SageError, match="not available locally"):
        load_hf_vlm("sage-test-nobody/no-such-vlm")


def test_unsupported_model_type_is_a_sage_error(tmp_path):
    from transformers import Dinov2Config

    Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(SageError, match=r"'dinov2'.*supported: internvl, llava"):
        load_hf_vlm(tmp_path)
