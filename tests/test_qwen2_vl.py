"""Qwen2-VL and Qwen2.5-VL behind the Backbone interface (issue #26), on tiny random configs saved to disk.

The checks that matter: the split vision tower + merger gives the model's own image features; SAGE's
M-RoPE positions give the stock model's logits and greedy answers; the Engine's prefix reuse keeps
them; test and reference of different sizes work; one SFE step trains the LoRA.
"""

import copy
import os
from pathlib import Path

import pytest
import torch

from sage_cli.models.engine import Engine
from sage_cli.models.hf_vlm import load_hf_vlm
from sage_cli.models.qwen2_vl import Qwen2VLBackbone
from sage_cli.models.sage import QUESTION, REF, TEST, SageModel
from tiny_models import noise_image, noise_images, save_tiny_qwen2_vl

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = 112  # 8x8 ViT patches -> 4x4 = 16 image tokens; Qwen2.5-VL: 2x2 windows of 2x2 merged tokens


@pytest.fixture(scope="module", params=["2", "2.5"])
def qwen(request, tmp_path_factory):
    return load_hf_vlm(save_tiny_qwen2_vl(tmp_path_factory.mktemp(f"qwen{request.param}"), request.param),
                       image_size=SIZE)


def test_loader_and_parts(qwen):
    assert isinstance(qwen, Qwen2VLBackbone) and qwen.name in ("qwen2_vl", "qwen2_5_vl")
    assert qwen.image_size == SIZE and qwen.patch_grid == (4, 4) and qwen.hidden_size == 64
    parts = qwen.parts()
    assert not any(p.requires_grad for p in parts["vision"].parameters())
    assert all(p.requires_grad for p in parts["adapter"].parameters())
    assert parts["adapter"] is qwen.vlm.model.visual.merger
    covered = [id(p) for m in parts.values() for p in m.parameters()]
    assert len(covered) == len(set(covered)) and set(covered) == {id(p) for p in qwen.vlm.parameters()}
    assert qwen.language_model.model is qwen.vlm.model.language_model and qwen.language_model.lm_head is qwen.vlm.lm_head


def test_vision_and_merger_give_the_models_image_features(qwen):
    x = qwen.preprocess(noise_images(2, 0, (60, 50)))  # not square: resized to the one grid
    assert x.shape == (2, 3, SIZE, SIZE)
    feats = qwen.vision_features(x)
    assert feats.shape == (2, 64, 32)  # 8x8 ViT patches
    out = qwen.adapt(feats)
    assert out.shape == (2, 16, 64)
    with torch.no_grad():
        flat, grid = qwen.patchify(x)
        ref = qwen.vlm.model.get_image_features(flat, grid).pooler_output
    assert torch.allclose(out, torch.stack(list(ref)), atol=1e-5)


def test_patchify_matches_the_image_processor(qwen):
    from transformers import Qwen2VLImageProcessor

    img = noise_image(3, (SIZE, SIZE))  # already on the grid: the processor does not resize it
    proc = Qwen2VLImageProcessor(min_pixels=SIZE * SIZE, max_pixels=SIZE * SIZE)
    theirs = proc(images=[img], return_tensors="pt")
    flat, grid = qwen.patchify(qwen.preprocess([img]))
    assert grid.tolist() == theirs["image_grid_thw"].tolist()
    assert torch.allclose(flat, torch.as_tensor(theirs["pixel_values"]).float(), atol=1e-5)


def _stock_inputs(model, question, image_px, ref_px=None):
    """The prompt SAGE builds (no facts), as input_ids with image tokens for the stock model."""
    bb = model.backbone
    tok = bb.tokenizer
    text = model.prompt(QUESTION, ref_px is not None, []).replace(QUESTION, question)
    n = bb.patch_grid[0] * bb.patch_grid[1]
    parts = text.replace(REF, TEST).split(TEST)  # the reference comes first, as SAGE lays it out
    ids = tok(parts[0], add_special_tokens=False)["input_ids"]
    for part in parts[1:]:
        ids += [bb.vlm.config.image_token_id] * n + tok(part, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ids])
    flat, grid = bb.patchify(image_px if ref_px is None else torch.cat([ref_px, image_px]))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": flat, "image_grid_thw": grid,
            "mm_token_type_ids": (ids == bb.vlm.config.image_token_id).int()}


@pytest.mark.parametrize("shots", [0, 1])
def test_logits_equal_the_stock_forward_without_sages_additions(qwen, shots):
    """Zero-shot: one image; one-shot: reference and test, two images (of different sizes) in one prompt."""
    model = SageModel(qwen, facts_mode="none").eval()
    px = qwen.preprocess([noise_image(1, (70, 40))])
    ref = qwen.preprocess([noise_image(2, (30, 90))]) if shots else None
    with torch.no_grad():
        batch = model.build(px, ref, ["Is there a defect?"])
        assert batch.position_ids is not None and batch.position_ids.shape == (3, 1, batch.inputs_embeds.shape[1])
        ours = model(batch).logits
        inputs = _stock_inputs(model, "Is there a defect?", px, ref)
        theirs = qwen.vlm(**inputs).logits
        qwen.vlm.model.rope_deltas = None
        flat = qwen.language_model(inputs_embeds=batch.inputs_embeds.clone()).logits  # positions counting tokens
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4)
    assert not torch.allclose(flat, theirs, atol=1e-4)  # the M-RoPE positions matter


def test_greedy_answers_equal_the_stock_generate(qwen):
    model = SageModel(qwen, facts_mode="none").eval()
    engine = Engine(model, "tiny")
    img = noise_image(2, (50, 80))
    prefix = engine.encode(img)
    ours = engine.answer(prefix, "Is there a defect?", max_new_tokens=6)
    inputs = _stock_inputs(model, "Is there a defect?", qwen.preprocess([img]))
    with torch.no_grad():
        out = qwen.vlm.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=sorted(engine.stop_ids),
                                pad_token_id=qwen.tokenizer.pad_token_id)
    qwen.vlm.model.rope_deltas = None
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    new = new[:next((i for i, t in enumerate(new) if t in engine.stop_ids), len(new))]
    assert ours.new_tokens == len(new)
    assert ours.text == qwen.tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def one_shot(qwen):
    torch.manual_seed(0)
    return SageModel(qwen, k_patches=4, fusion_heads=4).eval()


def test_prefix_reuse_answers_equal_answers_from_scratch(one_shot):
    engine = Engine(one_shot, "tiny")
    test, ref = noise_image(4, (60, 50)), noise_image(5, (90, 130))  # different sizes
    facts = ["A crack along the rim.", "The surface is scratched."]
    questions = ["Is there a defect?", "Where is it?"]
    prefix = engine.encode(test, ref, facts)
    assert prefix.positions is not None and prefix.positions.shape == (3, prefix.prefix_tokens)
    assert int(prefix.positions.max()) + 1 < prefix.prefix_tokens  # two images: positions run behind the count
    reused = [engine.answer(prefix, q, max_new_tokens=6) for q in questions]  # the second reads the cached prefix
    scratch = [engine.answer(engine.encode(test, ref, facts), q, max_new_tokens=6) for q in questions]
    assert [a.text for a in reused] == [a.text for a in scratch]
    assert [a.new_tokens for a in reused] == [a.new_tokens for a in scratch]
    group = engine.answer_group(engine.encode(test, ref, facts), questions, max_new_tokens=6)
    assert [a.text for a in group] == [a.text for a in scratch]
    for q, a in zip(questions, scratch):
        assert engine.p_yes(prefix, q) == pytest.approx(a.p_yes, abs=1e-5)
    # the whole prompt built at once and decoded left-padded (SageModel.generate) agrees too
    t, r = one_shot.backbone.preprocess([test] * 2), one_shot.backbone.preprocess([ref] * 2)
    with torch.no_grad():
        batch = one_shot.build(t, r, questions, [facts, facts], padding_side="left")
    assert one_shot.generate(batch, max_new_tokens=6) == [a.text for a in scratch]
    amap = engine.anomaly(prefix)
    assert amap.grid == (4, 4) and amap.map.shape == (4, 4)


def test_positions_continue_after_the_cached_prefix(one_shot):
    """The question's logits after the cached prefix equal the last logits of the whole prompt at once;
    without the cache's M-RoPE delta (positions counting tokens) they do not."""
    engine = Engine(one_shot, "tiny")
    test, ref = noise_image(8, (60, 50)), noise_image(9, (90, 130))
    prefix = engine.encode(test, ref, ["A crack."])
    with torch.no_grad():
        engine._prefill(prefix)
        rest = engine._question_rest(prefix, "Is there a defect?")[None]
        cached = engine.lm(copy.deepcopy(prefix.cache), inputs_embeds=rest)[0]
        bb = one_shot.backbone
        batch = one_shot.build(bb.preprocess([test]), bb.preprocess([ref]), ["Is there a defect?"], [["A crack."]])
        whole = one_shot(batch).logits[0, -1].float()
        plain = copy.deepcopy(prefix.cache)
        del plain.sage_rope_delta
        wrong = engine.lm(plain, inputs_embeds=rest)[0]
    assert batch.inputs_embeds.shape[1] == prefix.prefix_tokens + rest.shape[1]
    good, bad = (cached - whole).abs().max().item(), (wrong - whole).abs().max().item()
    assert good < 1e-5 and bad > 1e-4 and bad > 50 * good, (good, bad)  # random tiny weights: small but clear


def test_sfe_step_trains_the_lora_with_m_rope_positions(one_shot):
    from sage_cli.models import lora
    from sage_cli.train.examples import SFEExample
    from sage_cli.train.objective import Batch, SFEObjective

    model = copy.deepcopy(one_shot)
    lora.apply(model, r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    bb = model.backbone
    px_t = bb.preprocess(noise_images(2, 6, (60, 50)))
    px_r = bb.preprocess(noise_images(2, 7, (40, 90)))
    with torch.no_grad():
        f_t, f_r = bb.vision_features(px_t), bb.vision_features(px_r)
    facts = [["A crack."], ["A scratch.", "A dent."]]
    examples = [SFEExample(f"k{i}", Path("t.png"), Path("r.png"), q, a, f) for i, (q, a, f) in
                enumerate(zip(["Is it broken?", "Where?"], ["Yes, a crack.", "Top left."], facts))]
    objective = SFEObjective(model)
    with torch.no_grad():  # the objective's decoder call reads the positions attached to the batch
        built = model.assemble(model.encode_features(f_t, f_r, facts), ["Is it broken?", "Where?"],
                               ["Yes, a crack.", "Top left."])
        theirs = model(built).loss
        ours, _ = objective(Batch(examples, f_t, f_r))
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    for p in model.parameters():
        p.requires_grad_(False)
    trained = [p for n, p in model.named_parameters() if "lora_" in n]
    assert trained
    for p in trained:
        p.requires_grad_(True)
    before = [p.detach().clone() for p in trained]
    opt = torch.optim.AdamW(trained, lr=1e-2)
    model.train()
    loss, _ = objective(Batch(examples, f_t, f_r))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, trained))
