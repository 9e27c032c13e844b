"""SageModel on a tiny random backbone: layout, masking, labels, zero/one-shot, generation."""

import pytest
import torch

from sage_cli.models.sage import IGNORE, SageModel
from tiny_models import tiny_composed, noise_images as _images


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return SageModel(tiny_composed(), k_patches=2, fusion_heads=4).eval()


def test_adapter_grid_and_patch_embeddings(model):
    bb = model.backbone
    x = bb.preprocess(_images(2, 0))
    assert x.shape == (2, 3, 56, 56)
    assert bb.vision_features(x).shape == (2, 16, 32)  # 4x4 DINOv2 patches, CLS dropped
    assert bb.encode_images(x).shape == (2, 4, 64) and bb.patch_grid == (2, 2)  # 2x2 shuffle


def test_one_shot_sequence_holds_both_images_and_the_facts(model):
    bb = model.backbone
    t, r = bb.preprocess(_images(2, 0)), bb.preprocess(_images(2, 1))
    facts = [["hazelnuts crack.", "shells are brown."], ["one fact."]]
    one = model.build(t, r, ["Is there a defect?"] * 2, facts)
    zero = model.build(t, None, ["Is there a defect?"] * 2, facts)
    none = SageModel(bb, facts_mode="none", k_patches=2).build(t, r, ["Is there a defect?"] * 2, facts)
    lens = one.attention_mask.sum(1)
    # sample 0 has one more fact token than sample 1 (sentence lengths do not matter: one token each)
    assert lens[0] - lens[1] == 1
    assert (one.attention_mask.sum(1) - zero.attention_mask.sum(1)).tolist() == [4 + len("Reference image (normal): \n")] * 2
    assert (one.attention_mask.sum(1) - none.attention_mask.sum(1)).min() > 0
    assert one.comparison.s.shape == (2, 4) and one.comparison.idx.shape == (2, 2)
    assert zero.comparison.s is None


def test_labels_cover_exactly_the_answer(model):
    bb = model.backbone
    t, r = bb.preprocess(_images(2, 0)), bb.preprocess(_images(2, 1))
    answers = ["Yes, a crack.", "No."]
    batch = model.build(t, r, ["Q?", "Q?"], [["f."], ["g."]], answers=answers)
    for i, a in enumerate(answers):
        lab = batch.labels[i][batch.labels[i] != IGNORE]
        assert bb.tokenizer.decode(lab) == a + "<|im_end|>"
    out = model(batch)
    assert torch.isfinite(out.loss)


def test_left_padding_gives_the_same_last_logits_as_alone(model):
    bb = model.backbone
    t, r = bb.preprocess(_images(2, 0)), bb.preprocess(_images(2, 1))
    facts = [["a much longer fact sentence.", "b."], ["c."]]
    both = model.build(t, r, ["Is it bad?", "Q?"], facts, padding_side="left")
    alone = model.build(t[1:], r[1:], ["Q?"], facts[1:], padding_side="left")
    with torch.no_grad():
        lb = model(both).logits[1, -1]
        la = model(alone).logits[0, -1]
    assert torch.allclose(lb, la, atol=1e-4)


def test_fused_tokens_change_with_the_reference_not_with_padding(model):
    bb = model.backbone
    t = bb.preprocess(_images(1, 0))
    a = model.build(t, bb.preprocess(_images(1, 1)), ["Q?"], [["fact one."]])
    b = model.build(t, bb.preprocess(_images(1, 2)), ["Q?"], [["fact one."]])
    assert a.inputs_embeds.shape == b.inputs_embeds.shape
    assert not torch.allclose(a.inputs_embeds, b.inputs_embeds)


def test_hard_facts_are_text(model):
    hard = SageModel(model.backbone, facts_mode="hard")
    text = hard.prompt("Q?", True, ["hazelnuts crack."])
    assert "Facts: hazelnuts crack." in text and "<sage:facts>" not in text


def test_generate_returns_text(model):
    bb = model.backbone
    batch = model.build(bb.preprocess(_images(2, 0)), bb.preprocess(_images(2, 1)), ["Q?", "Another?"],
                        [["f."], []], padding_side="left")
    out = model.generate(batch, max_new_tokens=4)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


def test_generate_on_a_left_padded_batch_is_plain_greedy_generate(model):
    """The Engine's token loop (decoding.py) on rows of different lengths: positions count real tokens only."""
    from sage_cli.models.decoding import stop_ids

    bb = model.backbone
    batch = model.build(bb.preprocess(_images(2, 0)), bb.preprocess(_images(2, 1)), ["Q?", "A longer question?"],
                        [["one fact.", "two facts."], []], padding_side="left")
    assert batch.attention_mask[1].sum() != batch.attention_mask[0].sum()  # really padded
    ids = bb.language_model.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                     max_new_tokens=8, do_sample=False, pad_token_id=bb.tokenizer.pad_token_id,
                                     eos_token_id=sorted(stop_ids(bb)))
    assert model.generate(batch, max_new_tokens=8) == [t.strip() for t in
                                                       bb.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def test_peak_hint_adds_the_anomaly_peak_to_the_question_tokens_only(tmp_path):
    from sage_cli.models import checkpoint

    torch.manual_seed(0)
    bb = tiny_composed()
    model = SageModel(bb, k_patches=2, fusion_heads=4, peak_hint=True).eval()
    t, r = bb.preprocess(_images(1, 0)), bb.preprocess(_images(1, 1))
    with torch.no_grad():
        model.projector.hint.weight.fill_(1.0)
        enc = model.encode(t, r, [["a fact."]])
        q = model.question_piece(enc, 0, "Is there a defect?")
        plain = model.embed_text("Is there a defect?")
        peak = (1 - enc.comparison.s[0]).max()
        assert torch.allclose(q - plain, (torch.log(peak / 0.05) + 0 * q[:1]).expand_as(q), atol=1e-5)
        pieces, at = model.prompt_pieces(enc, 0, "Is there a defect?")
        assert torch.equal(pieces[at], q)  # the rest of the prompt is untouched
        zero = model.encode(t, None, [["a fact."]])
        assert torch.equal(model.question_piece(zero, 0, "Is there a defect?"), plain)  # no reference, no peak
    # a checkpoint remembers the setting; the paper's model has no hint at all
    checkpoint.save(model, tmp_path / "ck", "tiny")
    assert checkpoint.read_config(tmp_path / "ck")["sage"]["peak_hint"] is True
    assert SageModel(bb, k_patches=2).projector.hint is None
