"""Several normal references: Eq. 1 over the union of their patches (a memory bank of normals).

`sage infer TEST REF1 REF2 ...` and `sage bench ... --shots N`. One reference, in either form, must give
exactly today's result; more references can only lower the map; the prompt shows the first reference.
"""

import json
import os

import pytest
import torch

from conftest import write_image
from sage_cli.bench.items import load_items
from sage_cli.cli import run
from sage_cli.models.comparison import nearest_similarity, reference_bank
from sage_cli.models.engine import Engine
from sage_cli.models.sage import SageModel
from tiny_models import noise_image, save_tiny_internvl, tiny_composed

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FACTS = ["A normal widget is uniformly grey.", "Scratches are thin lines."]


@pytest.fixture(scope="module")
def engine():
    torch.manual_seed(0)
    return Engine(SageModel(tiny_composed(), k_patches=2, fusion_values="test+sim", peak_hint=True), "tiny")


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return save_tiny_internvl(tmp_path_factory.mktemp("internvl"))


def _changed(img, box=(0, 0, 14, 14), value=255):
    """`img` with a bright square pasted in (a defect the references do not have)."""
    out = img.copy()
    out.paste((value, value, value), box)
    return out


def test_reference_bank_is_the_union_of_patches():
    v = torch.randn(2, 3, 5, 4)  # [B, R, P, C]
    bank = reference_bank(v)
    assert bank.shape == (2, 15, 4) and torch.equal(bank[:, 5:10], v[:, 1])
    one = torch.randn(2, 5, 4)
    assert reference_bank(one) is one  # one reference [B, P, C] is already a bank
    t = torch.randn(2, 6, 4)
    s_union, _ = nearest_similarity(t, bank)
    s_each = torch.stack([nearest_similarity(t, v[:, r])[0] for r in range(3)])  # [R, B, P]
    assert torch.allclose(s_union, s_each.max(0).values)  # nearest over the union = best of the nearest per reference


@pytest.mark.parametrize("facts", [FACTS, []])
def test_one_reference_in_a_list_is_exactly_todays_encoding(engine, facts):
    test, ref = noise_image(1), noise_image(2)
    today, listed = engine.encode(test, ref, facts), engine.encode(test, [ref], facts)
    a, b = today.encoding, listed.encoding
    assert torch.equal(a.comparison.s, b.comparison.s) and torch.equal(a.v_r, b.v_r)
    assert (a.comparison.idx is None) == (b.comparison.idx is None)
    if a.comparison.idx is not None:
        assert torch.equal(a.comparison.idx, b.comparison.idx)
        assert all(torch.equal(x, y) for x, y in zip(a.fact_tokens, b.fact_tokens))
    assert torch.equal(today.embeds(), listed.embeds())
    # the model level: [B, 1, 3, H, W] is one reference too, bit for bit
    m, bb = engine.model, engine.model.backbone
    px_t, px_r = bb.preprocess([test]), bb.preprocess([ref])
    with torch.no_grad():
        e1, e2 = m.encode(px_t, px_r, [facts]), m.encode(px_t, px_r[:, None], [facts])
        s_direct, _ = nearest_similarity(e1.v_t, e1.v_r)  # what Eq. 1 was before references could be several
    assert torch.equal(e1.comparison.s, e2.comparison.s) and torch.equal(e1.comparison.s, s_direct)
    assert engine.p_yes(today, "Is there a defect?") == engine.p_yes(listed, "Is there a defect?")


def test_a_second_reference_can_only_lower_the_map(engine):
    ref1, ref2 = noise_image(3), noise_image(4)
    test = _changed(ref2)  # the second reference is the test image but for the pasted square
    one = engine.anomaly(engine.encode(test, ref1, FACTS))
    two = engine.anomaly(engine.encode(test, [ref1, ref2], FACTS))
    swapped = engine.anomaly(engine.encode(test, [ref2, ref1], FACTS))
    assert torch.all(two.map <= one.map + 1e-6)  # the union's nearest patch is at least as similar
    assert torch.allclose(two.map, swapped.map, atol=1e-6)  # the union does not depend on the order
    only2 = engine.anomaly(engine.encode(test, ref2, FACTS))
    assert torch.allclose(two.map, torch.minimum(one.map, only2.map), atol=1e-6)
    # on the normal region (away from the square) the test's own normal twin brings the map to ~0
    gh, gw = two.grid
    normal = torch.ones(gh, gw, dtype=torch.bool)
    normal[: max(1, gh // 3), : max(1, gw // 3)] = False
    assert float(two.map[normal].mean()) < float(one.map[normal].mean())
    assert float(two.map[normal].max()) < 1e-3


def test_the_prompt_shows_the_first_reference_only(engine):
    test, ref1, ref2 = noise_image(5), noise_image(6), noise_image(7)
    one, two = engine.encode(test, ref1, FACTS), engine.encode(test, [ref1, ref2, noise_image(8)], FACTS)
    assert two.prefix_tokens == one.prefix_tokens  # no more image tokens for more references
    # the shown reference is the first (the vision encoder runs 2 images or 4 in a batch, and CPU kernels
    # may round a batch of another size in the last bit: 2e-7 apart on one machine)
    assert torch.allclose(two.encoding.v_r, one.encoding.v_r, rtol=0, atol=1e-5)
    assert two.encoding.v_r.shape == one.encoding.v_r.shape
    a = engine.answer(two, "Is there a defect?", max_new_tokens=3)
    assert 0.0 <= a.p_yes <= 1.0


def test_zero_shot_by_an_empty_list(engine):
    p = engine.encode(noise_image(1), [], FACTS)
    assert not p.has_reference and engine.anomaly(p) is None


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_infer_with_two_references(tiny_vlm, tmp_path, capsys):
    test, r1, r2 = tmp_path / "t.png", tmp_path / "r1.png", tmp_path / "r2.png"
    noise_image(1).save(test)
    noise_image(2).save(r1)
    noise_image(3).save(r2)
    args = ["infer", str(test), str(r1), str(r2), "--backbone", str(tiny_vlm), "--max-new-tokens", "2"]
    assert run(args + ["--json", "--heatmap", str(tmp_path / "h.png")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["references"] == [str(r1), str(r2)] and out["reference"] == str(r1)
    assert out["anomaly"] is not None and (tmp_path / "h.png").is_file()
    assert run(["infer", str(test), str(r1), "--backbone", str(tiny_vlm), "--max-new-tokens", "2", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)
    assert single["references"] == [str(r1)]
    flat = lambda o: [v for row in o["anomaly"]["map"] for v in row]  # noqa: E731
    assert all(a <= b + 1e-4 for a, b in zip(flat(out), flat(single)))
    assert run(args) == 0
    assert "references: 2 (the map compares with the union" in capsys.readouterr().out
    noise_image(4, (40, 40)).save(r2)  # a second reference of another size: one line, before any model
    assert run(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "r2.png: the reference is 40x40" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- bench


def _mvtec(root, n_train=6):
    cat = root / "widget"
    for i in range(n_train):
        write_image(cat / "train" / "good" / f"{i:03d}.png", (56, 56), (10 * i, 100, 100))
    write_image(cat / "test" / "good" / "000.png", (56, 56), (100, 30, 100))
    write_image(cat / "test" / "scratch" / "000.png", (56, 56), (100, 100, 30))
    write_image(cat / "ground_truth" / "scratch" / "000_mask.png", (56, 56), (255, 255, 255))
    return root


def test_shots_draw_n_distinct_normal_references_deterministically(tmp_path):
    root = _mvtec(tmp_path / "mv")
    one = load_items("mvtec", root, 1, seed=0).items
    three = load_items("mvtec", root, 3, seed=0).items
    again = load_items("mvtec", root, 3, seed=0).items
    assert all(it.more_references == [] and len(it.references) == 1 for it in one)  # today's items
    for a, b, c in zip(one, three, again):
        assert b.reference_image == a.reference_image  # the item's own reference stays first
        assert len(b.references) == 3 and len(set(b.references)) == 3 and b.test_image not in b.references
        assert all("/train/good/" in r for r in b.references)
        assert c.references == b.references  # the same draw every time
    many = load_items("mvtec", root, 9, seed=0)
    assert many.short_references == len(many.items)  # only 6 normals: each item keeps what there is
    assert all(len(it.references) == 6 for it in many.items)


def test_bench_runs_with_several_shots(tiny_vlm, tmp_path, capsys):
    root = _mvtec(tmp_path / "mv", n_train=4)
    rc = run(["bench", "mvtec", "--root", str(root), "--backbone", str(tiny_vlm), "--shots", "3", "--no-sbert",
              "--no-plots", "--max-new-tokens", "2", "--out", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["config"]["shots"] == 3 and res["metrics"]["auroc_map_groups"] == 2
