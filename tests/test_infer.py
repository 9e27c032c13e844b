"""`sage infer` and the Engine behind it: prefix reuse, P(yes), streaming, heatmaps, facts, bad input.

Fast tests use tiny random models (a composed one in memory, an InternVL saved to disk for the CLI);
the slow ones run the real sage-smol on the real hazelnut photos.
"""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from sage_cli.cli import run
from sage_cli.errors import SageError
from sage_cli.facts.store import FACTS_FORMAT, facts_for_image, sha256_file
from sage_cli.facts.writer import split_sentences
from sage_cli.models import checkpoint
from sage_cli.models.engine import Engine, read_questions
from sage_cli.models.sage import SageModel
from tiny_models import save_tiny_internvl, tiny_composed, noise_image as _img

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FACTS = ["Widgets often show scratches on the rim.", "A normal widget is uniformly grey."]


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return Engine(SageModel(tiny_composed(), k_patches=2), "tiny")


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return save_tiny_internvl(tmp_path_factory.mktemp("internvl"))


def test_prefix_reuse_gives_what_plain_generate_gives(engine):
    """One encoding + cached prefix per pair answers exactly like HF generate on the whole prompt."""
    test, ref = _img(1), _img(2)
    prefix = engine.encode(test, ref, FACTS)
    model, bb = engine.model, engine.model.backbone
    for q in ["Is there a defect?", "Where is the scratch?"]:  # the second reuses the same prefix
        got = engine.answer(prefix, q, max_new_tokens=12)
        batch = model.build(bb.preprocess([test]), bb.preprocess([ref]), [q], [FACTS], padding_side="left")
        ids = bb.language_model.generate(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                                         max_new_tokens=12, do_sample=False, pad_token_id=bb.tokenizer.pad_token_id,
                                         eos_token_id=sorted(engine.stop_ids))
        assert got.text == bb.tokenizer.decode(ids[0], skip_special_tokens=True).strip()
        assert got.prompt_tokens == batch.inputs_embeds.shape[1]


def test_p_yes_is_the_yes_share_of_the_first_token(engine):
    test, ref = _img(3), _img(4)
    a = engine.answer(engine.encode(test, ref, []), "Is it broken?", max_new_tokens=1)
    bb = engine.model.backbone
    batch = engine.model.build(bb.preprocess([test]), bb.preprocess([ref]), ["Is it broken?"])
    with torch.no_grad():
        p = torch.softmax(engine.model(batch).logits[0, -1].float(), -1)
    yes, no = p[engine.yes_ids].sum(), p[engine.no_ids].sum()
    assert a.p_yes == pytest.approx(float(yes / (yes + no)), abs=1e-5)
    assert engine.yes_ids and engine.no_ids and not set(engine.yes_ids) & set(engine.no_ids)


def test_streamed_chunks_make_the_answer(engine):
    chunks = []
    a = engine.answer(engine.encode(_img(5), _img(6), FACTS), "Describe it.", max_new_tokens=20,
                      on_text=chunks.append)
    assert "".join(chunks).strip() == a.text and len(chunks) > 1


def test_zero_shot_has_no_anomaly_map_one_shot_has_one(engine):
    assert engine.anomaly(engine.encode(_img(7), None, FACTS)) is None
    info = engine.anomaly(engine.encode(_img(7), _img(8), FACTS))
    h, w = engine.model.backbone.patch_grid
    assert info.map.shape == (h, w) and info.grid == (h, w) and len(info.selected) == 2
    assert info.max == pytest.approx(float(info.map.max()))
    assert info.summary() == {"peak": list(info.peak), "max": info.max, "mean": info.mean, "grid": [h, w],
                              "selected": info.selected}


def test_the_map_peaks_where_the_test_image_was_changed(engine):
    ref = _img(9, (112, 112))
    test = ref.copy()
    test.paste((255, 0, 255), (84, 84, 112, 112))  # repaint the lower right corner
    big = Engine(SageModel(tiny_composed(image_size=112), k_patches=1), "tiny")
    info = big.anomaly(big.encode(test, ref, []))
    assert info.peak == (3, 3)  # 112 px / 14 = 8 patches, 2x2 shuffle -> 4x4 grid


def test_chat_runs_the_llm_alone(engine):
    a = engine.chat([{"role": "user", "content": "Name a defect."}], max_new_tokens=5)
    assert a.new_tokens <= 5 and a.prompt_tokens > 5


def test_empty_question_is_refused(engine):
    with pytest.raises(SageError, match="empty"):
        engine.answer(engine.encode(_img(1), None, []), "  ")


def test_heatmap_outlines_the_selected_patches(tmp_path):
    from sage_cli import heatmap

    img = Image.new("RGB", (80, 40), (100, 100, 100))
    amap = np.zeros((2, 4), dtype=np.float32)
    amap[1, 3] = 1.0
    out = heatmap.render(img, amap, selected=[7], grid=(2, 4))
    assert out.size == (80, 40)
    px = np.asarray(out)
    assert tuple(px[20, 60]) == (0, 255, 255)  # the outline of patch (1, 3) starts at x=60, y=20
    assert tuple(px[5, 5]) == (100, 100, 100)  # a cold patch keeps the photo
    assert heatmap.save(out, tmp_path / "h.png").exists()
    with pytest.raises(SageError, match="must be"):
        heatmap.save(out, tmp_path / "h.gif")


def test_sentences_from_a_reply():
    text = "1. Hazelnuts crack when dried too fast. 2) Mould\n- Stains come from moisture in storage"
    assert split_sentences(text) == ["Hazelnuts crack when dried too fast.", "Stains come from moisture in storage."]


def test_facts_from_jsonl_by_hash_or_from_text(tmp_path):
    img = tmp_path / "a.png"
    _img(1).save(img)
    copy = tmp_path / "renamed.png"
    copy.write_bytes(img.read_bytes())
    facts = tmp_path / "facts.jsonl"
    rec = {"format": FACTS_FORMAT, "image": "a.png", "image_sha256": sha256_file(img), "model": "m",
           "prompt_id": "p", "facts": FACTS}
    facts.write_text(json.dumps(rec) + "\n{torn", encoding="utf-8")
    assert facts_for_image(facts, copy) == FACTS  # matched by content, not by name
    other = tmp_path / "b.png"
    _img(2).save(other)
    with pytest.raises(SageError, match="no facts for"):
        facts_for_image(facts, other)
    plain = tmp_path / "facts.txt"
    plain.write_text("# facts\nOne fact here.\n\nAnother fact.\n", encoding="utf-8")
    assert facts_for_image(plain, other) == ["One fact here.", "Another fact."]


def test_questions_file(tmp_path):
    f = tmp_path / "q.txt"
    f.write_text("# group 1\nIs there a defect?\n\nWhere is it?\n", encoding="utf-8")
    assert read_questions(f) == ["Is there a defect?", "Where is it?"]
    f.write_text("# nothing\n", encoding="utf-8")
    with pytest.raises(SageError, match="no questions"):
        read_questions(f)


# ---- the command, on a tiny InternVL saved to disk --------------------------------------------


def _pair(tmp_path, size=(56, 56)):
    test, ref = tmp_path / "test.png", tmp_path / "ref.png"
    _img(1, size).save(test)
    _img(2, size).save(ref)
    return test, ref


def test_cli_json_answers_a_group_over_one_encoding(tiny_vlm, tmp_path, capsys):
    test, ref = _pair(tmp_path)
    qfile = tmp_path / "q.txt"
    qfile.write_text("Where is it?\nWhy does it matter?\n", encoding="utf-8")
    rc = run(["infer", str(test), str(ref), "--backbone", str(tiny_vlm), "-q", "Is there a defect?",
              "--questions-file", str(qfile), "--json", "--max-new-tokens", "4", "--heatmap", str(tmp_path / "h.png")])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [a["question"] for a in out["answers"]] == ["Is there a defect?", "Where is it?", "Why does it matter?"]
    assert all(0.0 <= a["p_yes"] <= 1.0 for a in out["answers"])
    assert out["anomaly"]["grid"] == [len(out["anomaly"]["map"]), len(out["anomaly"]["map"][0])]
    assert set(out["timings"]) == {"load_s", "encode_s", "prefill_s"}
    assert Image.open(tmp_path / "h.png").size == (56, 56)


def test_cli_zero_shot_and_facts_file(tiny_vlm, tmp_path, capsys):
    test, _ = _pair(tmp_path)
    facts = tmp_path / "facts.txt"
    facts.write_text("\n".join(FACTS), encoding="utf-8")
    rc = run(["infer", str(test), "--backbone", str(tiny_vlm), "--facts", str(facts), "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("Q: Is there any defect on the test object?\nA: ")
    assert "anomaly map" not in out and "untrained SAGE layers" in out


def test_a_checkpoints_default_facts_are_read_when_none_are_given(tiny_vlm, tmp_path, capsys):
    test, ref = _pair(tmp_path)
    ckpt = checkpoint.save(Engine.load(str(tiny_vlm)).model, tmp_path / "ckpt", backbone=str(tiny_vlm))
    (ckpt / checkpoint.FACTS).write_text("# generic facts\n" + "\n".join(FACTS) + "\n\n", encoding="utf-8")
    args = ["infer", str(test), str(ref), "--checkpoint", str(ckpt), "--max-new-tokens", "2"]
    assert run(args + ["--json"]) == 0
    assert json.loads(capsys.readouterr().out)["facts"] == FACTS  # what the model read: no comment, no blank
    assert run(args) == 0
    assert "facts: the checkpoint's 2 generic sentences (facts.txt)" in capsys.readouterr().out
    own = tmp_path / "own.txt"
    own.write_text("My own fact.\n", encoding="utf-8")
    assert run(args + ["--json", "--facts", str(own)]) == 0
    assert json.loads(capsys.readouterr().out)["facts"] == ["My own fact."]  # given facts win
    eng = Engine.load(None, str(ckpt))
    assert eng.encode(_img(0), _img(1)).encoding.fact_tokens[0].shape[0] == 2  # defaults become fact tokens
    eng.model.facts_mode = "none"
    assert Engine(eng.model, "x", str(ckpt)).default_facts == []  # a model without fact tokens needs none
    (ckpt / checkpoint.FACTS).write_text('{"format": "sage-facts/1"}\n', encoding="utf-8")
    capsys.readouterr()
    assert run(args) == 1  # not a list of sentences: one error line (after the weights' loading bar), no traceback
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "facts.txt" in last and "Traceback" not in err and err.count("error: ") == 1


@pytest.mark.parametrize("case, match", [
    ("unreadable", "unreadable or truncated image"),
    ("missing", "image not found"),
    ("size", "the reference is 40x40 but the test image is 56x56"),
    ("empty", "a question is empty"),
    ("heatmap0", "--heatmap needs a reference"),
    ("nockpt", "checkpoint directory not found"),
])
def test_cli_bad_input_is_one_line(case, match, tiny_vlm, tmp_path, capsys):
    test, ref = _pair(tmp_path)
    args = ["infer", str(test), str(ref), "--backbone", str(tiny_vlm), "--max-new-tokens", "2"]
    if case == "unreadable":
        test.write_bytes(b"not an image")
    elif case == "missing":
        args[1] = str(tmp_path / "nope.png")
    elif case == "size":
        _img(2, (40, 40)).save(ref)
    elif case == "empty":
        args += ["-q", " "]
    elif case == "heatmap0":
        args = ["infer", str(test), "--backbone", str(tiny_vlm), "--heatmap", str(tmp_path / "h.png")]
    elif case == "nockpt":
        args += ["--checkpoint", str(tmp_path / "none")]
    assert run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1


def test_cli_checkpoint_for_another_backbone(tiny_vlm, tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = checkpoint.save(SageModel(tiny_composed()), tmp_path / "ckpt", backbone="tiny-composed")
    test, ref = _pair(tmp_path)
    assert run(["infer", str(test), str(ref), "--checkpoint", str(ckpt), "--backbone", str(tiny_vlm)]) == 1
    assert "checkpoint is for backbone 'tiny-composed'" in capsys.readouterr().err


def test_cli_checkpoint_answers_like_the_saved_model(tiny_vlm, tmp_path, capsys):
    """A checkpoint of the tiny InternVL (with changed SAGE weights) loads back into the same answers."""
    from sage_cli.models.hf_vlm import load_hf_vlm

    torch.manual_seed(1)
    model = SageModel(load_hf_vlm(str(tiny_vlm)))
    with torch.no_grad():
        model.projector.proj.weight.mul_(3.0)
    ckpt = checkpoint.save(model, tmp_path / "ckpt", backbone=str(tiny_vlm))
    test, ref = _pair(tmp_path)
    want = Engine(model, str(tiny_vlm)).answer(Engine(model, str(tiny_vlm)).encode(Image.open(test), Image.open(ref)),
                                               "Is there a defect?", max_new_tokens=6)
    assert run(["infer", str(test), str(ref), "--checkpoint", str(ckpt), "-q", "Is there a defect?", "--json",
                "--max-new-tokens", "6"]) == 0
    got = json.loads(capsys.readouterr().out)["answers"][0]
    assert got["answer"] == want.text and got["p_yes"] == pytest.approx(want.p_yes, abs=1e-5)


# ---- the real sage-smol on the real hazelnut photos ----------------------------------------------


@pytest.mark.slow
def test_sage_smol_map_peaks_inside_the_real_defects(hazelnut_root):
    """On every real hazelnut defect (crack, colour) the Eq. 1 map's peak patch lies inside the mask."""
    from sage_cli.data.formats import open_dataset
    from sage_cli.data.images import load_mask, load_rgb

    eng = Engine.load("sage-smol")
    recs = [r for r in open_dataset(hazelnut_root).records if r.split == "test" and r.is_anomaly]
    assert len(recs) >= 10
    inside = 0
    for r in recs:
        info = eng.anomaly(eng.encode(load_rgb(r.path()), load_rgb(r.path(r.reference)), []))
        gh, gw = info.grid
        mask = Image.fromarray(load_mask(r.path(r.defect.mask)).astype(np.uint8) * 255)
        cells = np.asarray(mask.resize((gw, gh), Image.BOX)) > 0  # [gh, gw]: patches touching the defect
        inside += bool(cells[info.peak])
    assert inside == len(recs), f"peak inside the mask for {inside}/{len(recs)} defects"


@pytest.mark.slow
def test_sage_smol_answers_on_a_real_pair(hazelnut_root, tmp_path, capsys):
    h = hazelnut_root / "hazelnut"
    test = sorted((h / "test" / "crack").iterdir())[0]
    ref = sorted((h / "train" / "good").iterdir())[0]
    rc = run(["infer", str(test), str(ref), "--json", "--max-new-tokens", "24", "--heatmap", str(tmp_path / "h.png")])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["backbone"] == "sage-smol"
    a = out["answers"][0]
    assert len(a["answer"].split()) >= 3 and 0.0 <= a["p_yes"] <= 1.0 and a["tokens_per_s"] > 0
    assert out["anomaly"]["grid"] == [8, 8] and len(out["anomaly"]["selected"]) == 16
    assert Image.open(tmp_path / "h.png").size == Image.open(test).size


def test_a_group_decoded_as_one_batch_matches_one_by_one(engine):
    prefix = engine.encode(_img(11), _img(12), FACTS)
    qs = ["Is there a defect?", "Where exactly is the scratch on the rim of this widget?", "Why?"]
    together = engine.answer_group(prefix, qs, max_new_tokens=10)
    for q, a in zip(qs, together):
        alone = engine.answer(prefix, q, max_new_tokens=10)
        assert a.text == alone.text and a.new_tokens == alone.new_tokens
        assert a.p_yes == pytest.approx(alone.p_yes, abs=1e-4) and a.prompt_tokens == alone.prompt_tokens


def test_p_yes_without_decoding_is_the_first_answer_tokens_yes_odds(engine):
    fresh = engine.encode(_img(15), _img(16), FACTS)
    first = engine.p_yes(fresh, "Is there a defect?")  # before any question: prefills the prefix itself
    assert first == pytest.approx(engine.answer(fresh, "Is there a defect?", max_new_tokens=1).p_yes, abs=1e-4)
    other = engine.p_yes(fresh, "Is the test object free of defects?")  # the cached prefix is reused untouched
    assert other == pytest.approx(engine.answer(fresh, "Is the test object free of defects?", max_new_tokens=1).p_yes,
                                  abs=1e-4)
    assert other != pytest.approx(first, abs=1e-6)


def test_16_bit_images_keep_their_contrast_and_bombs_are_refused(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from sage_cli.data.images import load_rgb

    ramp = (np.linspace(0, 65535, 56 * 56).reshape(56, 56)).astype(np.uint16)
    PILImage.fromarray(ramp).save(tmp_path / "i16.png")
    px = np.asarray(load_rgb(tmp_path / "i16.png"))
    assert px.shape == (56, 56, 3) and px.min() == 0 and px.max() == 255 and 120 < px.mean() < 135
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)  # 56 x 56 > 2 x 100: PIL calls it a bomb
    with pytest.raises(SageError, match="too many pixels"):
        load_rgb(tmp_path / "i16.png")


def test_repetition_penalty_changes_a_looping_answer_only_after_the_first_token(engine):
    prefix = engine.encode(_img(13), _img(14), FACTS)
    plain = engine.answer(prefix, "Describe it.", max_new_tokens=24)
    engine.repetition_penalty = 3.0
    try:
        penalised = engine.answer(prefix, "Describe it.", max_new_tokens=24)
        grouped = engine.answer_group(prefix, ["Describe it."], max_new_tokens=24)[0]
    finally:
        engine.repetition_penalty = 1.0
    assert penalised.p_yes == pytest.approx(plain.p_yes, abs=1e-6)  # read before any penalty (float rounding aside)
    assert penalised.text == grouped.text
    ids = engine.model.backbone.tokenizer(penalised.text)["input_ids"]
    assert len(set(ids)) / len(ids) >= len(set(engine.model.backbone.tokenizer(plain.text)["input_ids"])) / max(
        1, len(engine.model.backbone.tokenizer(plain.text)["input_ids"]))


def test_loading_keeps_the_process_random_state_and_seeds_the_new_layers(tiny_vlm):
    torch.manual_seed(123)
    want = torch.rand(4)
    torch.manual_seed(123)
    a = Engine.load(str(tiny_vlm), seed=0)
    assert torch.equal(torch.rand(4), want)  # loading drew its weights from its own seed, not the caller's stream
    b, c = Engine.load(str(tiny_vlm), seed=0), Engine.load(str(tiny_vlm), seed=1)
    w = lambda e: e.model.projector.proj.weight  # noqa: E731  (untrained: drawn from the seed)
    assert torch.equal(w(a), w(b)) and not torch.equal(w(a), w(c))


def test_groups_over_several_prefixes_decode_as_each_alone(engine):
    prefixes = [engine.encode(_img(i), None, []) for i in (21, 22)]  # zero-shot, no facts: one length
    qs = [["Describe it.", "Is it broken?"], ["What is it?", "Is it whole?"]]
    together = engine.answer_groups(prefixes, qs, max_new_tokens=8)
    for p, q, got in zip(prefixes, qs, together):
        alone = engine.answer_group(p, q, max_new_tokens=8)
        assert [a.text for a in got] == [a.text for a in alone]
        assert [a.p_yes for a in got] == pytest.approx([a.p_yes for a in alone], abs=1e-4)
    mixed = engine.answer_groups([prefixes[0], engine.encode(_img(23), _img(24), FACTS)], qs, max_new_tokens=8)
    assert [a.text for a in mixed[0]] == [a.text for a in together[0]]  # other lengths: one batch per prefix


def test_facts_are_written_without_default_facts_or_the_engines_penalty(engine):
    from sage_cli.facts.writer import ask

    prompts = ["Describe it.", "What is it made of?"]
    plain = ask(engine, [_img(25)], [prompts], max_new_tokens=12)
    engine.default_facts, engine.repetition_penalty = list(FACTS), 3.0
    try:
        assert ask(engine, [_img(25)], [prompts], max_new_tokens=12) == plain
        sampled = ask(engine, [_img(25)], [prompts], max_new_tokens=12, temperature=1.0, seed=5)
        assert ask(engine, [_img(25)], [prompts], max_new_tokens=12, temperature=1.0, seed=5) == sampled
    finally:
        engine.default_facts, engine.repetition_penalty = [], 1.0
